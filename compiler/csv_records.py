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

import csv
import io
import sys
from typing import Iterator

from ftc.compiler.blob import Blob
from ftc.errors import FtcError

csv.field_size_limit(min(sys.maxsize, 2**62))  # a 50 MB cell is valid; the limit is the parser's, not ours


def physical_lines(data: Blob, bom: int) -> int:
    """Lines of the file as an editor counts them (a last line without a newline counts)."""
    if data.size <= bom:
        return 0
    return data.count(b"\n", bom) + (0 if data.endswith(b"\n") else 1)


def _text_lines(data: Blob, codec: str, bom: int) -> Iterator[str]:
    """The decoded lines csv.reader sees (split at \\n, \\r and \\r\\n, kept; not str.splitlines: U+2028
    is text), decoded block by block: one line at a time is held, never the file."""
    text = io.TextIOWrapper(data.stream(bom), encoding=codec, errors="replace", newline="")
    try:
        yield from text
    finally:
        text.detach()  # the Blob's file stays open: the Blob closes it


def account(data: Blob, codec: str, bom: int, delimiter: str, ncols: int, records: int, file: str, source: str,
            policy: str) -> dict:
    """File facts {physical_lines, records[, multiline_records, suspect_records]}; FTC215 on a suspect
    record when ``policy`` is "error". ``records`` counts the header and the rows the parser skipped.

    One pass over the text: each record's own lines are kept until the next record begins, so
    the lines a multi-line record swallows can be looked at without holding the file."""
    if "\n".encode(codec) != b"\n":  # not ASCII-compatible (UTF-16...): lines cannot be counted as bytes
        return {}
    lines = physical_lines(data, bom)
    facts = {"physical_lines": lines, "records": records}
    if lines == records:
        return facts
    held: list[str] = []

    def kept(source_lines: Iterator[str]) -> Iterator[str]:
        for ln in source_lines:
            held.append(ln)
            yield ln

    reader = csv.reader(kept(_text_lines(data, codec, bom)), delimiter=delimiter, strict=False)
    spans, prev = [], 0  # (first line, last line, lines that parse as a whole record, lines swallowed)
    for rec in reader:
        if rec and reader.line_num - prev > 1:
            inner = held[1:]  # the lines after the record's first, up to its last
            rowlike = sum(1 for ln in inner
                          if ncols > 1 and len(next(csv.reader([ln.rstrip("\r\n")], delimiter=delimiter), [])) == ncols)
            spans.append((prev + 1, reader.line_num, rowlike, len(inner)))
        prev = reader.line_num
        held.clear()
    facts["multiline_records"] = len(spans)
    suspect = []
    for start, end, rowlike, swallowed in spans:
        if rowlike >= 2 and 2 * rowlike >= swallowed:
            why = f"{rowlike} of the {swallowed} lines it swallows look like rows of this file"
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
