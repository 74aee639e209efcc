"""Format readers: bytes of one file -> an Arrow table, plus the encoding used.

One small function per format family. Text formats are decoded strictly: ``auto``
tries UTF-8 (with or without BOM) before GB18030, because decoding UTF-8 bytes as
GB18030 "succeeds" and garbles them. DuckDB cannot decode GB18030 offline, so
decoding happens here (pyarrow's transcoding stream / Python codecs) and DuckDB only
ever sees Arrow.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field

import pyarrow as pa

from ftc.compiler import csv_records, decoding
from ftc.errors import FtcError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
AUTO = ("utf-8", "gb18030")


@dataclass
class ReadResult:
    table: pa.Table
    encoding: str | None  # None for binary formats
    malformed: int = 0  # rows skipped by the parser (counted, never silent)
    malformed_example: str = ""
    evidence: dict = field(default_factory=dict)  # why this encoding (compiler/decoding.py)
    replaced: int = 0  # undecodable bytes read as U+FFFD (encoding_errors "replace")
    lines: dict = field(default_factory=dict)  # CSV physical lines against records (compiler/csv_records.py)


def candidates(encoding: str | list[str], file: str, source: str) -> list[str]:
    """The codecs to try, in order, by their canonical names (``file`` and ``source`` name an unknown one)."""
    if encoding == "auto":
        return list(AUTO)
    names = [encoding] if isinstance(encoding, str) else list(encoding)
    out = []
    for n in names:
        try:
            info = codecs.lookup(n)
        except LookupError:
            raise FtcError("FTC208", file=file, path=f"sources.{source}.encoding", encoding=n, source=source) from None
        if not getattr(info, "_is_text_encoding", True):  # base64, rot13, zlib: bytes<->bytes or str<->str codecs
            raise FtcError("FTC219", file=file, path=f"sources.{source}.encoding", encoding=n, source=source)
        out.append(info.name.replace("_", "-"))
    return out


def _bom(data: bytes, enc: str) -> int:
    return 3 if enc == "utf-8" and data.startswith(codecs.BOM_UTF8) else 0


def undecodable_offset(data: bytes, enc: str) -> int | None:
    """Byte offset of the first byte ``enc`` cannot decode strictly, or None."""
    bom = _bom(data, enc)
    if enc == "utf-8":
        bad = decoding.first_invalid_utf8(data, bom)  # C fast path
        return None if bad is None else bad.start + bom
    try:
        _check_decodes(data, enc)
    except UnicodeDecodeError as e:
        return e.start + bom
    return None


def _check_decodes(data: bytes, enc: str) -> None:
    # Decode in blocks so a 1 GB file is never held twice as str.
    dec = codecs.getincrementaldecoder(enc)("strict")
    step = 1 << 24
    for i in range(0, len(data), step):
        try:
            dec.decode(data[i : i + step], final=i + step >= len(data))
        except UnicodeDecodeError as e:
            raise UnicodeDecodeError(e.encoding, e.object, i + e.start, i + e.end, e.reason) from None


def decode(data: bytes, enc: str, bom: int) -> str:
    return codecs.decode(memoryview(data)[bom:], "utf-8" if enc == "utf-8-sig" else enc)


def read_delimited(data: bytes, enc: str, bom: int, delimiter: str, file: str, source: str,
                   on_malformed: str) -> ReadResult:
    """CSV/TSV with every column read as text (no type guessing: '007' stays '007')."""
    import pyarrow.csv as pcsv

    head = codecs.getincrementaldecoder("utf-8" if enc == "utf-8-sig" else enc)().decode(data[bom : bom + 65536], final=False)
    try:
        header = next(csv.reader(io.StringIO(head), delimiter=delimiter))
    except StopIteration:
        raise FtcError("FTC220", file=file, path=f"sources.{source}.path", what="the file is empty") from None
    for i, col in enumerate(header):
        if col in header[:i]:
            raise FtcError("FTC217", file=file, path=f"sources.{source}.path", column=col, first=header.index(col) + 1,
                           second=i + 1)
    bad: list[str] = []

    def on_invalid(row) -> str:
        bad.append(f"row near line {row.number}: {row.text[:80]!r} ({row.actual_columns} fields, expected {row.expected_columns})")
        return "skip"

    transcode = enc not in ("utf-8", "utf-8-sig")

    def parse(block_size: int | None) -> pa.Table:
        bad.clear()
        return pcsv.read_csv(
            io.BytesIO(memoryview(data)[bom:]),
            read_options=pcsv.ReadOptions(encoding=enc if transcode else "utf8", use_threads=True,
                                          **({"block_size": block_size} if block_size else {})),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header}, strings_can_be_null=False),
        )

    try:
        try:
            table = parse(None)
        except pa.ArrowInvalid as e:  # one value longer than a block (1 MiB): valid CSV, read in one block
            if "straddling" not in str(e):
                raise
            table = parse(min(2 * len(data) + 1, 2**31 - 1))  # transcoded UTF-8 may be longer than the bytes
    except pa.ArrowInvalid as e:
        raise FtcError("FTC202", file=file, format="csv", reason=str(e).splitlines()[0][:300], source=source) from None
    if table.num_rows == 0 and not bad:
        raise FtcError("FTC220", file=file, path=f"sources.{source}.path", what="a header and no rows")
    lines = csv_records.account(data, "utf-8" if enc == "utf-8-sig" else enc, bom, delimiter, len(header),
                                table.num_rows + 1 + len(bad), file, source, on_malformed)
    return ReadResult(table, enc, len(bad), bad[0] if bad else "", lines=lines)


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", type(None): "null"}


def read_json(data: bytes, enc: str, bom: int, file: str, source: str) -> ReadResult:
    """A JSON array of objects (Alpaca, ShareGPT files)."""
    try:
        rows = json.loads(decode(data, enc, bom))
    except json.JSONDecodeError as e:
        raise FtcError("FTC202", file=file, format="json", reason=f"{e.msg} at line {e.lineno}, column {e.colno}", source=source) from None
    if isinstance(rows, dict):  # {"data": [...]} is common; take the single list inside
        lists = [v for v in rows.values() if isinstance(v, list)]
        if len(lists) == 1:
            rows = lists[0]
    if not isinstance(rows, list):
        raise FtcError("FTC202", file=file, format="json", reason="expected an array of objects", source=source)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise FtcError("FTC221", file=file, path=f"sources.{source}.path", index=i, type=_JSON_TYPES.get(type(r), "value"),
                           value=json.dumps(r, ensure_ascii=False)[:60])
    if not rows:
        raise FtcError("FTC220", file=file, path=f"sources.{source}.path", what="an empty array")
    return ReadResult(_from_rows(rows, file, "json", source), enc)


def read_jsonl(data: bytes, enc: str, bom: int, file: str, source: str) -> ReadResult:
    rows = []
    # lines end at \n only: str.splitlines would also split at U+2028, U+0085..., which JSON strings may hold raw
    for n, line in enumerate(decode(data, enc, bom).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FtcError("FTC202", file=file, format="jsonl", reason=f"line {n}: {e.msg} (column {e.colno})", source=source) from None
        if not isinstance(row, dict):
            raise FtcError("FTC202", file=file, format="jsonl", reason=f"line {n}: expected a JSON object", source=source)
        rows.append(row)
    if not rows:
        raise FtcError("FTC220", file=file, path=f"sources.{source}.path",
                       what="the file is empty" if not data[bom:] else "only blank lines")
    return ReadResult(_from_rows(rows, file, "jsonl", source), enc)


def _from_rows(rows: list[dict], file: str, fmt: str, source: str) -> pa.Table:
    # Every key of every row, in order of first appearance (from_pylist would take the
    # first row's keys only and silently drop a key that first appears later).
    keys = dict.fromkeys(k for r in rows for k in r)
    try:
        return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FtcError("FTC202", file=file, format=fmt, reason=f"inconsistent value types across rows: {e}", source=source) from None


def read_parquet(data: bytes, file: str, source: str) -> ReadResult:
    import pyarrow.parquet as pq

    try:
        return ReadResult(pq.read_table(pa.BufferReader(data)), None)
    except pa.ArrowException as e:
        raise FtcError("FTC202", file=file, format="parquet", reason=str(e), source=source) from None


def read_file(data: bytes, fmt: str, encoding, delimiter: str | None, file: str, source: str,
              errors: str, on_malformed: str) -> ReadResult:
    """Decode by ``encoding`` (see compiler/decoding.py for ``auto``) and parse by ``fmt``.

    A declared codec or list is tried in order, strictly; the first that decodes the whole
    file wins. UTF-8 is checked up front (a C-speed scan); other codecs are checked by the
    strict transcoding read itself, so a large GB18030 file is decoded once, not twice.
    Under ``errors="replace"`` a file no declared codec decodes is read with the first one,
    its undecodable bytes as U+FFFD, counted."""
    if delimiter is not None and fmt not in ("csv", "tsv"):
        raise FtcError("FTC223", file=file, path=f"sources.{source}.delimiter", format=fmt, source=source)
    if delimiter is not None and (len(delimiter.encode("utf-8")) != 1 or delimiter in "\r\n\""):
        why = "a line break" if delimiter in "\r\n" else "the quote character" if delimiter == '"' else \
            f"{len(delimiter.encode('utf-8'))} bytes in UTF-8"
        raise FtcError("FTC218", file=file, path=f"sources.{source}.delimiter", delimiter=delimiter, why=why)
    if fmt == "parquet":
        return read_parquet(data, file, source)
    if encoding == "auto":
        dec = decoding.auto(data, errors, file, source)
        try:
            return _read_text(data, fmt, dec, delimiter, file, source, on_malformed)
        except UnicodeDecodeError:  # GB18030 plausible on its sample, and not past it
            at = undecodable_offset(data, "gb18030") or 0
            raise FtcError("FTC201", file=file, source=source,
                           detail=f"gb18030: invalid byte at offset {at} (line {decoding.line_of(data, at)})") from None
    tried = candidates(encoding, file, source)
    rule = "declared" if len(tried) == 1 else "declared list: the first that decodes strictly"
    for enc in tried:
        if enc == "utf-8" and undecodable_offset(data, enc) is not None:
            if enc != tried[-1]:  # a later codec would "decode" UTF-8 with a defect and garble it: refuse or replace
                dec, _ = decoding.utf8_first(data, errors, file, source)
                if dec is not None:
                    return _read_text(data, fmt, dec, delimiter, file, source, on_malformed)
            continue
        bom = _bom(data, enc)
        try:
            return _read_text(data, fmt, decoding.Decoded("utf-8-sig" if bom else enc, bom, {"rule": rule}),
                              delimiter, file, source, on_malformed)
        except UnicodeDecodeError:
            continue
    if errors == "replace":
        enc, bom = tried[0], _bom(data, tried[0])
        count = _count_undecodable(data, enc, bom)
        dec = decoding.Decoded("utf-8-sig" if bom else enc, bom, {"rule": f"declared; encoding_errors replace ({count} bytes)"},
                               count, decoding.replaced(data, enc, bom))
        return _read_text(data, fmt, dec, delimiter, file, source, on_malformed)
    detail = "; ".join(f"{e}: invalid byte at offset {undecodable_offset(data, e)}" for e in tried)
    raise FtcError("FTC201", file=file, detail=detail, source=source)


def _count_undecodable(data: bytes, enc: str, bom: int) -> int:
    """Bytes ``enc`` cannot decode (each is one lone surrogate under surrogateescape)."""
    text = codecs.decode(memoryview(data)[bom:], enc, "surrogateescape")
    return (len(text.encode("utf-8", "surrogatepass")) - len(text.encode("utf-8", "surrogateescape"))) // 2


def _read_text(data: bytes, fmt: str, dec: "decoding.Decoded", delimiter: str | None, file: str, source: str,
               on_malformed: str) -> ReadResult:
    """One text file through its format's reader; replaced text is read as the UTF-8 it became."""
    if dec.utf8 is not None:
        body, label, bom = dec.utf8, "utf-8", 0
    else:
        body, label, bom = data, dec.encoding, dec.bom
    if fmt in ("csv", "tsv"):
        res = read_delimited(body, label, bom, delimiter or ("\t" if fmt == "tsv" else ","), file, source, on_malformed)
    elif fmt == "json":
        res = read_json(body, label, bom, file, source)
    else:
        res = read_jsonl(body, label, bom, file, source)
    res.encoding, res.evidence, res.replaced = dec.encoding, dec.evidence, dec.replaced
    return res
