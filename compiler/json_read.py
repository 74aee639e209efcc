"""JSON sources, read in bounded memory: JSON Lines line by line, a JSON array element by element.

Both go through one pipeline (``_spilled``): objects in batches of ``size`` (``readers.ROWS``),
each batch made a table the way one table of all the file's rows is made (``_from_rows``),
spilled to a temporary Arrow file until the file is parsed, then cast to the schema Arrow's permissive promotion
unifies the batches' schemas to, which is what inference over the whole file gives (a key
first seen late, an int column that turns float). Where that cast is not possible the file is
read whole, as it always was.

A JSON array is split into its elements by Python's own decoder (``JSONDecoder.raw_decode``,
element after element in a sliding window of decoded text); only the array's punctuation
(``[``, ``,``, ``]`` and whitespace) is looked at here. Anything the element-wise reading
cannot promise to give exactly as ``json.loads`` of the whole document does (a syntax error,
an element that is not an object, an empty array, a top-level object such as ``{"data":
[...]}``, types that disagree inside a batch) makes it read the file whole, which yields
today's rows or raises today's error, word for word.
"""

from __future__ import annotations

import json
import tempfile
from typing import Callable, Iterator

import pyarrow as pa

from ftc.errors import FtcError

_WS = " \t\n\r"  # JSON's whitespace, as json.loads skips it
_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", type(None): "null"}


class _Whole(Exception):
    """The element-wise reading cannot vouch for this file: read it whole."""


def read_json(text: Callable[[], Iterator[str]], file: str, source: str, size: int) -> Iterator[pa.Table]:
    """A JSON array of objects (Alpaca, ShareGPT files) in batches of ``size`` objects. ``text`` gives
    the decoded text in pieces, afresh at each call."""
    try:
        yield from _spilled(lambda: _checked_objects(text()), file, "json", source, size, strict=True,
                            whole=lambda: _json_whole(text, file, source))
    except _Whole:
        yield from _json_whole(text, file, source)


def _json_whole(text: Callable[[], Iterator[str]], file: str, source: str, size: int = 0) -> Iterator[pa.Table]:
    """The document parsed whole, as one table: the one place JSON array errors are worded
    (``size`` is not used: the signature is ``read_json``'s, so either can read a file)."""
    try:
        rows = json.loads("".join(text()))
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


def _checked_objects(pieces: Iterator[str]) -> Iterator[dict]:
    n = 0
    for value in array_elements(pieces):
        if not isinstance(value, dict):
            raise _Whole()
        n += 1
        yield value
    if not n:
        raise _Whole()


def array_elements(pieces: Iterator[str]) -> Iterator[object]:
    """The elements of a top-level JSON array, each parsed by ``json``'s own decoder, holding only
    a window of the text (the current element and one piece); ``_Whole`` where the text is not
    a valid array, or an element is cut where only the whole text could tell."""
    decode = json.JSONDecoder().raw_decode
    buf, at, eof = "", 0, False

    def more() -> bool:
        nonlocal buf, at, eof
        piece = next(pieces, None)
        if piece is None:
            eof = True
            return False
        buf, at = buf[at:] + piece, 0
        return True

    def skip() -> str:  # the next character that is not whitespace ("" at the end)
        nonlocal at
        while True:
            while at < len(buf) and buf[at] in _WS:
                at += 1
            if at < len(buf):
                return buf[at]
            if not more():
                return ""

    if skip() != "[":
        raise _Whole()
    at += 1
    if skip() == "]":
        raise _Whole()  # an empty array: the whole reading words it
    while True:
        try:
            value, end = decode(buf, at)
        except json.JSONDecodeError:
            end = -1
        if end < 0 or (end >= len(buf) and not eof):  # cut by the window (a number may go on): read on
            if eof or not more():
                raise _Whole()
            continue
        at = end
        yield value
        c = skip()
        if c == "]":
            break
        if c != ",":
            raise _Whole()
        at += 1
        skip()
    at += 1
    if skip() != "":
        raise _Whole()  # extra data after the array


def head_objects(text: str) -> list[dict]:
    """The objects a JSON array's text begins with, as many as are complete in it (``ftc validate``
    samples a large file's head): ``array_elements`` over the one piece, stopping where the text is
    cut. [] where it does not begin as an array of objects."""
    out: list[dict] = []
    try:
        for value in array_elements(iter([text])):
            if not isinstance(value, dict):
                return []
            out.append(value)
    except _Whole:  # the element the head's end cuts (or a defect compile will name)
        pass
    return out


def read_jsonl(text: Callable[[], Iterator[str]], nbytes: int, bom: int, file: str, source: str,
               size: int) -> Iterator[pa.Table]:
    """JSON Lines in batches of ``size`` objects (``nbytes`` and ``bom`` word an empty file)."""
    def whole() -> Iterator[pa.Table]:
        table = _from_rows(list(_jsonl_rows(text(), file, source)), file, "jsonl", source)
        for b in table.to_batches(size):
            yield pa.Table.from_batches([b], table.schema)

    def empty() -> FtcError:
        return FtcError("FTC220", file=file, path=f"sources.{source}.path",
                        what="the file is empty" if nbytes <= bom else "only blank lines")
    yield from _spilled(lambda: _jsonl_rows(text(), file, source), file, "jsonl", source, size, whole=whole, empty=empty)


def _jsonl_rows(pieces: Iterator[str], file: str, source: str) -> Iterator[dict]:
    """The objects of a JSON Lines file, one line at a time."""
    n, tail = 0, ""
    # lines end at \n only: str.splitlines would also split at U+2028, U+0085..., which JSON strings may hold raw
    for piece in _with_end(pieces):  # the pieces as they come (a list of them held the whole text)
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


def _with_end(pieces: Iterator[str]) -> Iterator[str | None]:
    yield from pieces
    yield None


def _spilled(rows: Callable[[], Iterator[dict]], file: str, fmt: str, source: str, size: int, *,
             whole: Callable[[], Iterator[pa.Table]], empty: Callable[[], FtcError] | None = None,
             strict: bool = False) -> Iterator[pa.Table]:
    """The objects of ``rows()`` as tables of one schema, in bounded memory (see the module's text).
    ``strict``: a batch whose types disagree is ``_Whole`` (the whole reading words the error),
    not this batch's error."""
    from ftc.compiler.ingest import conform

    with tempfile.TemporaryDirectory(prefix=f"ftc-{fmt}-") as tmp:
        pieces: list[tuple[pa.Schema, str]] = []  # runs of batches of one schema, each an IPC stream
        writer = None

        def spill(batch: list[dict]) -> None:
            nonlocal writer
            try:
                t = _from_rows(batch, file, fmt, source)
            except FtcError:
                if strict:
                    raise _Whole() from None
                raise
            if writer is None or not t.schema.equals(pieces[-1][0]):
                if writer is not None:
                    writer.close()
                pieces.append((t.schema, f"{tmp}/{len(pieces)}.arrow"))
                writer = pa.ipc.new_stream(pieces[-1][1], t.schema)
            writer.write_table(t)

        batch: list[dict] = []
        try:
            for row in rows():
                batch.append(row)
                if len(batch) == size:
                    spill(batch)
                    batch = []
            if batch:
                spill(batch)
        finally:
            if writer is not None:
                writer.close()
        if not pieces:
            raise empty() if empty is not None else _Whole()
        target = pieces[0][0]
        try:
            if len(pieces) > 1:
                target = pa.unify_schemas([sch for sch, _ in pieces], promote_options="permissive")
                for sch, _ in pieces:  # a cast Arrow cannot make shows on an empty table of the piece's schema
                    conform(sch.empty_table(), target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            yield from whole()
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
