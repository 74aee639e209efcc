"""Format readers: the bytes of one file -> Arrow tables, batch by batch, plus the encoding used.

One small function per format family. Text formats are decoded strictly: ``auto``
tries UTF-8 (with or without BOM) before GB18030, because decoding UTF-8 bytes as
GB18030 "succeeds" and garbles them. DuckDB cannot decode GB18030 offline, so
decoding happens here (pyarrow's transcoding stream / Python codecs) and DuckDB only
ever sees Arrow.

Nothing holds a file whole (issue 15): CSV/TSV go through pyarrow's streaming reader,
JSON Lines and JSON arrays are decoded and parsed in batches of objects (``json_read.py``),
Parquet is read by batches. A reading is a generator of
tables whose facts (malformed rows, line accounting) are final once it is exhausted.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyarrow as pa

from ftc.compiler import csv_records, decoding
from ftc.compiler.blob import Blob
from ftc.compiler.json_read import read_json, read_jsonl
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
    tick: Callable[[], None] | None = None  # called as a JSON reader's parse moves on (the caller's progress bar)


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


def _ticking(pieces: Iterator[str], res: ReadResult) -> Iterator[str]:
    """The pieces, telling ``res.tick`` after each one: a JSON file is parsed whole before its
    first batch comes out, so its progress is the text's, not the batches'."""
    for piece in pieces:
        yield piece
        if res.tick is not None:
            res.tick()


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
                yield from read_json(lambda: _ticking(_text(body, label, bom), res), file, source, ROWS)
            else:
                yield from read_jsonl(lambda: _ticking(_text(body, label, bom), res), body.size, bom, file, source, ROWS)
        except UnicodeDecodeError:
            raise refuse() from None
        finally:
            if dec.utf8 is not None:
                dec.utf8.close()

    res.batches = rows()
    return res
