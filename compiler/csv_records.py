"""Physical lines against CSV records, per file: an unbalanced quote merges rows, and says so here.

A quote opened and never closed makes the parser read the following lines as one value:
rows disappear into it, with no parse error (or one "malformed row" for many). So each CSV
file's records are counted against its physical lines. When they differ, some values hold
line breaks; each record that spans lines is then looked at, and is suspect when

- at least two of the lines it swallows, and at least half of them, would each parse as a
  whole record of this file (the header's number of fields): rows eaten by an open quote; or
- it is the only record of the file with a line break inside a value ("none elsewhere").

Legitimate multi-line values (the real medical CSV has 7 records of 2 to 35 lines, lists in
an answer) are neither. The source's ``on_malformed`` says what a suspect record does:
``error`` (the default) refuses it with its line, ``warn`` reads it as parsed and reports it.
"""

from __future__ import annotations

import codecs
import csv
import io
import sys

from ftc.errors import FtcError

csv.field_size_limit(min(sys.maxsize, 2**62))  # a 50 MB cell is valid; the limit is the parser's, not ours


def physical_lines(data: bytes, bom: int) -> int:
    """Lines of the file as an editor counts them (a last line without a newline counts)."""
    if len(data) <= bom:
        return 0
    return data.count(b"\n", bom) + (0 if data.endswith(b"\n") else 1)


def account(data: bytes, codec: str, bom: int, delimiter: str, ncols: int, records: int, file: str, source: str,
            policy: str) -> dict:
    """File facts {physical_lines, records[, multiline_records, suspect_records]}; FTC215 on a suspect
    record when ``policy`` is "error". ``records`` counts the header and the rows the parser skipped."""
    if "\n".encode(codec) != b"\n":  # not ASCII-compatible (UTF-16...): lines cannot be counted as bytes
        return {}
    lines = physical_lines(data, bom)
    facts = {"physical_lines": lines, "records": records}
    if lines == records:
        return facts
    text = codecs.decode(memoryview(data)[bom:], codec, "replace")
    raw = io.StringIO(text, newline="").readlines()  # the lines csv.reader sees (not str.splitlines: U+2028 is text)
    reader = csv.reader(raw, delimiter=delimiter, strict=False)
    spans, prev = [], 0
    for rec in reader:
        if rec and reader.line_num - prev > 1:
            spans.append((prev + 1, reader.line_num))
        prev = reader.line_num
    facts["multiline_records"] = len(spans)
    suspect = []
    for start, end in spans:
        inner = raw[start:end]  # the lines after the record's first, up to its last
        rowlike = sum(1 for ln in inner if ncols > 1 and len(next(csv.reader([ln.rstrip("\r\n")], delimiter=delimiter), [])) == ncols)
        if rowlike >= 2 and 2 * rowlike >= len(inner):
            why = f"{rowlike} of the {len(inner)} lines it swallows look like rows of this file"
        elif len(spans) == 1 and records > 2:
            why = "it is the only line break inside a value in this file"
        else:
            continue
        if policy == "error":
            raise FtcError("FTC215", file=file, path=f"sources.{source}.on_malformed", line=start, lines=end - start + 1,
                           end=end, why=why, source=source)
        suspect.append({"line": start, "lines": end - start + 1, "why": why})
    if suspect:
        facts["suspect_records"] = suspect
    return facts
