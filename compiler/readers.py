"""Format readers: the bytes of one file -> Arrow tables, batch by batch, plus the encoding used.

One small function per format family. Text formats are decoded strictly: ``auto``
tries UTF-8 (with or without BOM) before GB18030, because decoding UTF-8 bytes as
GB18030 "succeeds" and garbles them. DuckDB cannot decode GB18030 offline, so
decoding happens here (pyarrow's transcoding stream / Python codecs) and DuckDB only
ever sees Arrow.

Nothing holds a file whole (issue 15): CSV/TSV go through pyarrow's streaming reader,
JSON Lines are decoded and parsed in line batches, Parquet is read by batches. A JSON
array is the exception: it is parsed whole (one document). A reading is a generator of
tables whose facts (malformed rows, line accounting) are final once it is exhausted.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from ftc.compiler import csv_records, decoding
from ftc.compiler.blob import Blob
from ftc.errors import FtcError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
AUTO = ("utf-8", "gb18030")
# Batch sizes (the environment may shrink them, to show that no result depends on them):
# pyarrow's CSV block (a record must fit in one, else the file is read again with a larger one),
# and rows per batch of JSON Lines and Parquet.
CSV_BLOCK = int(os.environ.get("FTC_CSV_BLOCK", 1 << 22))
ROWS = int(os.environ.get("FTC_READ_ROWS", 1 << 16))


@dataclass
class ReadResult:
    encoding: str | None  # None for binary formats
    batches: Iterator[pa.Table] = iter(())  # the rows in file order, one schema per file
    malformed: int = 0  # rows skipped by the parser (counted, never silent)
    evidence: dict = field(default_factory=dict)  # why this encoding (compiler/decoding.py)
    replaced: int = 0  # undecodable bytes read as U+FFFD (encoding_errors "replace")
    lines: dict = field(default_factory=dict)  # CSV physical lines against records (compiler/csv_records.py)


class Restart(Exception):
    """A CSV record longer than the parser's block: read the file again from its start with ``block``."""

    def __init__(self, block: int):
        super().__init__(block)
        self.block = block


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


def _bom(data: Blob, enc: str) -> int:
    return 3 if enc == "utf-8" and data.startswith(codecs.BOM_UTF8) else 0


def undecodable_offset(data: Blob, enc: str) -> int | None:
    """Byte offset of the first byte ``enc`` cannot decode strictly, or None."""
    bom = _bom(data, enc)
    bad = decoding.first_invalid(data, enc, bom)
    return None if bad is None else bad.start + bom


def _codec(enc: str) -> str:
    return "utf-8" if enc == "utf-8-sig" else enc


def _text(data: Blob, enc: str, bom: int) -> Iterator[str]:
    """The text after the BOM, decoded strictly block by block."""
    dec = codecs.getincrementaldecoder(_codec(enc))("strict")
    for at, chunk in data.blocks(bom):
        yield dec.decode(chunk, final=at + len(chunk) >= data.size)


def read_delimited(data: Blob, enc: str, bom: int, delimiter: str, file: str, source: str, on_malformed: str,
                   res: ReadResult, block: int | None) -> Iterator[pa.Table]:
    """CSV/TSV with every column read as text (no type guessing: '007' stays '007')."""
    import pyarrow.csv as pcsv

    head = codecs.getincrementaldecoder(_codec(enc))().decode(data.read(bom, 65536), final=False)
    try:
        header = next(csv.reader(io.StringIO(head), delimiter=delimiter))
    except StopIteration:
        raise FtcError("FTC220", file=file, path=f"sources.{source}.path", what="the file is empty") from None
    for i, col in enumerate(header):
        if col in header[:i]:
            raise FtcError("FTC217", file=file, path=f"sources.{source}.path", column=col, first=header.index(col) + 1,
                           second=i + 1)
    bad: list[int] = []

    def on_invalid(row) -> str:
        bad.append(1)
        return "skip"

    transcode = enc not in ("utf-8", "utf-8-sig")
    size = block or CSV_BLOCK
    rows = 0
    try:
        reader = pcsv.open_csv(
            data.stream(bom),
            read_options=pcsv.ReadOptions(encoding=enc if transcode else "utf8", use_threads=True, block_size=size),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header}, strings_can_be_null=False),
        )
        try:
            for batch in reader:
                rows += batch.num_rows
                yield pa.Table.from_batches([batch])
        finally:
            reader.close()  # stop its read-ahead thread (up to 32 blocks) when the rows are not all wanted
    except pa.ArrowInvalid as e:
        if "straddling" in str(e) and size < 2 * data.size + 1:  # one record longer than a block: valid CSV
            raise Restart(min(max(4 * size, 1 << 20), 2 * data.size + 1, 2**31 - 1)) from None  # transcoded may grow
        raise FtcError("FTC202", file=file, format="csv", reason=str(e).splitlines()[0][:300], source=source) from None
    if rows == 0 and not bad:
        raise FtcError("FTC220", file=file, path=f"sources.{source}.path", what="a header and no rows")
    if rows == 0:  # every row skipped: the file's columns still say its schema
        yield pa.table({h: pa.array([], pa.string()) for h in header})
    res.malformed = len(bad)
    res.lines = csv_records.account(data, _codec(enc), bom, delimiter, len(header), rows + 1 + len(bad), file,
                                    source, on_malformed)


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", type(None): "null"}


def read_json(data: Blob, enc: str, bom: int, file: str, source: str) -> Iterator[pa.Table]:
    """A JSON array of objects (Alpaca, ShareGPT files): one document, parsed whole."""
    try:
        rows = json.loads("".join(_text(data, enc, bom)))
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
    yield _from_rows(rows, file, "json", source)


def _jsonl_rows(data: Blob, enc: str, bom: int, file: str, source: str) -> Iterator[dict]:
    """The objects of a JSON Lines file, one line at a time."""
    n, tail = 0, ""
    # lines end at \n only: str.splitlines would also split at U+2028, U+0085..., which JSON strings may hold raw
    for piece in [*_text(data, enc, bom), None]:
        if piece is None:
            lines, tail = [tail], ""
        else:
            lines = (tail + piece).split("\n")
            tail = lines.pop()
        for line in lines:
            n += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FtcError("FTC202", file=file, format="jsonl", reason=f"line {n}: {e.msg} (column {e.colno})", source=source) from None
            if not isinstance(row, dict):
                raise FtcError("FTC202", file=file, format="jsonl", reason=f"line {n}: expected a JSON object", source=source)
            yield row


def read_jsonl(data: Blob, enc: str, bom: int, file: str, source: str) -> Iterator[pa.Table]:
    """JSON Lines in batches of ``ROWS`` objects, spilled to a temporary Arrow file until the file
    is parsed: its batches must share one schema, as one table of all its rows would have (a key
    first seen late, an int column that turns float). Batches are cast to the schema Arrow's
    permissive promotion unifies theirs to, which is what whole-file inference gives; where that
    cast is not possible, the file is read whole as before."""
    import tempfile

    from ftc.compiler.ingest import conform

    with tempfile.TemporaryDirectory(prefix="ftc-jsonl-") as tmp:
        pieces: list[tuple[pa.Schema, str]] = []  # runs of batches of one schema, each an IPC stream
        writer = None

        def spill(rows: list[dict]) -> None:
            nonlocal writer
            t = _from_rows(rows, file, "jsonl", source)
            if writer is None or not t.schema.equals(pieces[-1][0]):
                if writer is not None:
                    writer.close()
                pieces.append((t.schema, f"{tmp}/{len(pieces)}.arrow"))
                writer = pa.ipc.new_stream(pieces[-1][1], t.schema)
            writer.write_table(t)

        batch: list[dict] = []
        try:
            for row in _jsonl_rows(data, enc, bom, file, source):
                batch.append(row)
                if len(batch) == ROWS:
                    spill(batch)
                    batch = []
            if batch:
                spill(batch)
        finally:
            if writer is not None:
                writer.close()
        if not pieces:
            raise FtcError("FTC220", file=file, path=f"sources.{source}.path",
                           what="the file is empty" if data.size <= bom else "only blank lines")
        target = pieces[0][0]
        try:
            if len(pieces) > 1:
                target = pa.unify_schemas([sch for sch, _ in pieces], promote_options="permissive")
                for sch, _ in pieces:  # a cast Arrow cannot make shows on an empty table of the piece's schema
                    conform(sch.empty_table(), target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            table = _from_rows(list(_jsonl_rows(data, enc, bom, file, source)), file, "jsonl", source)
            for b in table.to_batches(ROWS):
                yield pa.Table.from_batches([b], table.schema)
            return
        for sch, path in pieces:
            with pa.OSFile(path) as f:
                for b in pa.ipc.open_stream(f):
                    t = pa.Table.from_batches([b], sch)
                    yield t if sch.equals(target) else conform(t, target)


def _from_rows(rows: list[dict], file: str, fmt: str, source: str) -> pa.Table:
    # Every key of every row, in order of first appearance (from_pylist would take the
    # first row's keys only and silently drop a key that first appears later).
    keys = dict.fromkeys(k for r in rows for k in r)
    try:
        return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FtcError("FTC202", file=file, format=fmt, reason=f"inconsistent value types across rows: {e}", source=source) from None


def read_parquet(data: Blob, file: str, source: str) -> Iterator[pa.Table]:
    """Row groups as batches of ``ROWS`` rows; a file of no rows still gives its schema."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(data.stream(0))
        schema = pf.schema_arrow
        empty = True
        for b in pf.iter_batches(ROWS):
            empty = False
            yield pa.Table.from_batches([b], schema)
        if empty:
            yield schema.empty_table()
    except pa.ArrowException as e:
        raise FtcError("FTC202", file=file, format="parquet", reason=str(e), source=source) from None


def read_file(data: Blob, fmt: str, encoding, delimiter: str | None, file: str, source: str,
              errors: str, on_malformed: str, block: int | None = None) -> ReadResult:
    """Decode by ``encoding`` (see compiler/decoding.py for ``auto``) and parse by ``fmt``.

    A declared codec or list is tried in order, strictly; the first that decodes the whole
    file wins. UTF-8 is checked up front (a C-speed scan); another codec is checked by a
    strict decode pass only where a later codec or ``replace`` could still take the file,
    else by the strict transcoding read itself, so a large GB18030 file is decoded once.
    Under ``errors="replace"`` a file no declared codec decodes is read with the first one,
    its undecodable bytes as U+FFFD, counted. The codec is decided here, before any row is
    read; the rows come from ``batches``."""
    if delimiter is not None and fmt not in ("csv", "tsv"):
        raise FtcError("FTC223", file=file, path=f"sources.{source}.delimiter", format=fmt, source=source)
    if delimiter is not None and (len(delimiter.encode("utf-8")) != 1 or delimiter in "\r\n\""):
        why = "a line break" if delimiter in "\r\n" else "the quote character" if delimiter == '"' else \
            f"{len(delimiter.encode('utf-8'))} bytes in UTF-8"
        raise FtcError("FTC218", file=file, path=f"sources.{source}.delimiter", delimiter=delimiter, why=why)
    if fmt == "parquet":
        return ReadResult(None, read_parquet(data, file, source))
    if encoding == "auto":
        dec = decoding.auto(data, errors, file, source)

        def refuse() -> FtcError:  # GB18030 plausible on its sample, and not past it
            at = undecodable_offset(data, "gb18030") or 0
            return FtcError("FTC201", file=file, source=source,
                            detail=f"gb18030: invalid byte at offset {at} (line {decoding.line_of(data, at)})")
        return _reading(data, fmt, dec, delimiter, file, source, on_malformed, block, refuse)
    tried = candidates(encoding, file, source)
    rule = "declared" if len(tried) == 1 else "declared list: the first that decodes strictly"

    def refuse_all() -> FtcError:
        detail = "; ".join(f"{e}: invalid byte at offset {undecodable_offset(data, e)}" for e in tried)
        return FtcError("FTC201", file=file, detail=detail, source=source)
    for i, enc in enumerate(tried):
        if enc == "utf-8" and undecodable_offset(data, enc) is not None:
            if enc != tried[-1]:  # a later codec would "decode" UTF-8 with a defect and garble it: refuse or replace
                dec, _ = decoding.utf8_first(data, errors, file, source)
                if dec is not None:
                    return _reading(data, fmt, dec, delimiter, file, source, on_malformed, block, refuse_all)
            continue
        bom = _bom(data, enc)
        fallback = i < len(tried) - 1 or errors == "replace"
        if enc != "utf-8" and fallback and decoding.first_invalid(data, enc, bom) is not None:
            continue
        return _reading(data, fmt, decoding.Decoded("utf-8-sig" if bom else enc, bom, {"rule": rule}),
                        delimiter, file, source, on_malformed, block, refuse_all)
    if errors == "replace":
        enc, bom = tried[0], _bom(data, tried[0])
        count = _count_undecodable(data, enc, bom)
        dec = decoding.Decoded("utf-8-sig" if bom else enc, bom, {"rule": f"declared; encoding_errors replace ({count} bytes)"},
                               count, decoding.replaced(data, enc, bom))
        return _reading(data, fmt, dec, delimiter, file, source, on_malformed, block, refuse_all)
    raise refuse_all()


def _count_undecodable(data: Blob, enc: str, bom: int) -> int:
    """Bytes ``enc`` cannot decode (each is one lone surrogate under surrogateescape)."""
    dec = codecs.getincrementaldecoder(enc)("surrogateescape")
    count = 0
    for at, chunk in data.blocks(bom):
        text = dec.decode(chunk, final=at + len(chunk) >= data.size)
        count += (len(text.encode("utf-8", "surrogatepass")) - len(text.encode("utf-8", "surrogateescape"))) // 2
    return count


def _reading(data: Blob, fmt: str, dec: "decoding.Decoded", delimiter: str | None, file: str, source: str,
             on_malformed: str, block: int | None, refuse) -> ReadResult:
    """One text file through its format's reader; replaced text is read as the UTF-8 it became.
    A strict decode that fails past what was checked up front is ``refuse()``'s FTC201."""
    res = ReadResult(dec.encoding, evidence=dec.evidence, replaced=dec.replaced)

    def rows() -> Iterator[pa.Table]:
        body, label, bom = (dec.utf8, "utf-8", 0) if dec.utf8 is not None else (data, dec.encoding, dec.bom)
        try:
            if fmt in ("csv", "tsv"):
                yield from read_delimited(body, label, bom, delimiter or ("\t" if fmt == "tsv" else ","), file, source,
                                          on_malformed, res, block)
            elif fmt == "json":
                yield from read_json(body, label, bom, file, source)
            else:
                yield from read_jsonl(body, label, bom, file, source)
        except UnicodeDecodeError:
            raise refuse() from None
        finally:
            if dec.utf8 is not None:
                dec.utf8.close()

    res.batches = rows()
    return res
