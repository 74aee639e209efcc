"""Sources: find the files, read them, take path captures, map columns onto fields.

Each file becomes batches of canonical fields plus bookkeeping columns (``_source``,
``_file``, ``_row``), appended to the source's DuckDB table one batch at a time (issue 15:
memory does not grow with the input), and a ``FileFacts`` record that goes into the lock:
what was read, how it was decoded, which column fed which field.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

import pyarrow as pa

from ftc.compiler import blob, discovery, readers
from ftc.compiler.blob import Blob
from ftc.compiler.inputs import source_sha256
from ftc.compiler.lock import relpath
from ftc.compiler.progress import MIN_BYTES, Progress
from ftc.compiler.columns import _map, describe, map_columns, merge
from ftc.compiler.recipe import Recipe
from ftc.errors import FtcError


@dataclass
class FileFacts:
    path: str  # relative to the recipe folder, posix
    bytes: int
    sha256: str
    format: str
    encoding: str | None
    columns: dict[str, str]  # field -> column used (or "const", or "path capture")
    captured: dict[str, str]
    rows: int
    malformed_rows: int = 0
    encoding_evidence: dict = field(default_factory=dict)  # why this encoding (compiler/decoding.py)
    replaced_bytes: int = 0  # undecodable bytes read as U+FFFD under encoding_errors "replace"
    lines: dict = field(default_factory=dict)  # CSV physical lines against records (compiler/csv_records.py)
    compression: str | None = None  # bytes and sha256 are the file's on disk, as compressed

    def to_lock(self) -> dict:
        d = dict(self.__dict__)
        return d


@dataclass
class SourceData:
    name: str
    table: str  # the source's view in the Normalizer's DuckDB (``row_id`` and every column)
    rows: int
    files: list[FileFacts] = field(default_factory=list)
    hf: dict | None = None  # facts for a Hugging Face dataset source
    unread: list[dict] = field(default_factory=list)  # files the folder or glob matched and did not read, with why


class Sink(Protocol):
    """Where a file's tables go: all of one file's, or none (``file()`` undoes a failed reading)."""

    def file(self) -> ContextManager[None]: ...

    def add(self, table: pa.Table) -> None: ...


class _Tables:
    """A Sink that keeps the tables (``ftc validate``'s heads, which are small)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    @contextmanager
    def file(self) -> Iterator[None]:
        n = len(self.tables)
        try:
            yield
        except BaseException:
            del self.tables[n:]
            raise

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)


class _Schema:
    """A Sink that notes a file's schema from its first table and stops the reading there."""

    class Enough(Exception):
        pass

    def __init__(self) -> None:
        self.schema: pa.Schema | None = None

    @contextmanager
    def file(self) -> Iterator[None]:
        yield

    def add(self, table: pa.Table) -> None:
        self.schema = table.schema
        raise _Schema.Enough()


def capture_pattern(recipe: Recipe, name: str, spec: dict) -> re.Pattern | None:
    """The source's ``captures`` regex, compiled; refused when it does not compile or names no group."""
    if "captures" not in spec:
        return None
    where = f"sources.{name}.captures"
    try:
        pattern = re.compile(spec["captures"])
    except re.error as e:
        raise FtcError("FTC303", file=str(recipe.path), path=where, where=where, reason=str(e)) from None
    if not pattern.groupindex:
        raise FtcError("FTC309", file=str(recipe.path), path=where, source=name, pattern=spec["captures"])
    return pattern


def load_source(recipe: Recipe, name: str, spec: dict, norm, ord_base: int, progress: bool = False) -> SourceData:
    """A source's rows into a table of ``norm`` (numbered by ``_ord`` from ``ord_base``), file by
    file and batch by batch: Python holds one batch at a time, never a file or the source."""
    from ftc.compiler.ingest import SchemaChange, SourceTable

    if "hf" in spec:
        return _load_hf(recipe, name, spec, SourceTable(norm, ord_base))
    found = discovery.discover(recipe, name, spec)
    files, root = found.files, found.root
    pattern = capture_pattern(recipe, name, spec)
    total = sum(f.stat().st_size for f in files)

    def read_all(sink: SourceTable) -> list[FileFacts]:
        bar = Progress(f"read {name}", total, "bytes", enabled=progress and total >= MIN_BYTES)
        facts = []
        for i, f in enumerate(files):
            moved = [0]  # this file's bytes already on the bar (a file read again does not move it back)

            def step(done: int, note: str = f"file {i + 1}/{len(files)}") -> None:
                if done > moved[0]:
                    bar.update(done - moved[0], note=note)
                    moved[0] = done
            facts.append(read_path_file(recipe, name, spec, f, root, pattern, sink, progress=step))
            step(facts[-1].bytes)
        bar.close()
        return facts

    sink = SourceTable(norm, ord_base)
    try:
        facts = read_all(sink)
    except SchemaChange:  # the files disagree on columns: read them again, each cast to the unified schema
        sink.drop()
        schemas = []
        for f in files:
            probe = _Schema()
            try:
                read_path_file(recipe, name, spec, f, root, pattern, probe)
            except _Schema.Enough:
                pass
            schemas.append(probe.schema)
        try:
            target = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise FtcError("FTC202", file=relpath(files[0], recipe.dir), format="table", source=name,
                           reason=f"files of source {name!r} disagree on column types: {e}") from None
        sink = SourceTable(norm, ord_base, target)
        facts = read_all(sink)
    return SourceData(name, sink.view(), sink.rows, facts, unread=found.unread)


def file_table(recipe: Recipe, name: str, spec: dict, f: Path, root: Path, pattern: re.Pattern | None,
               data: bytes, compressed: bool = True) -> tuple[pa.Table, FileFacts]:
    """One file's given bytes (``ftc validate`` hands a file's head, already decompressed, with
    ``compressed=False``) as one table, read by the very code compile streams files with."""
    sink = _Tables()
    fact = read_path_file(recipe, name, spec, f, root, pattern, sink, data=data, compressed=compressed)
    return pa.concat_tables(sink.tables), fact


def read_path_file(recipe: Recipe, name: str, spec: dict, f: Path, root: Path, pattern: re.Pattern | None,
                   sink: Sink, *, data: bytes | None = None, compressed: bool = True,
                   progress: Callable[[int], None] | None = None) -> FileFacts:
    """One file of a path source, as tables of fields plus the bookkeeping columns into ``sink``,
    and its facts. The one place a file's bytes become rows: read from disk block by block, or
    from ``data`` when given. A CSV record longer than the parser's block undoes the file's rows
    (``sink.file()``) and reads it again with a block that holds it. ``progress`` is told, after
    each batch, how far into the file (its bytes on disk) the reading has come."""
    rel_recipe = relpath(f, recipe.dir)
    rel_root = relpath(f, root)
    suffix, compression = discovery.data_suffix(f)
    fmt = spec.get("format") or readers.FORMATS.get(suffix)
    if fmt is None:
        raise FtcError("FTC207", file=rel_recipe, format=f.suffix, source=name)
    captured: dict[str, str] = {}
    if pattern is not None:
        m = pattern.search(rel_root)
        if not m:
            raise FtcError("FTC204", file=rel_recipe, source=name, pattern=spec["captures"])
        captured = {k: v for k, v in m.groupdict().items() if v is not None}
    raw = Blob.of_bytes(data) if data is not None else Blob.open(f)
    with raw:
        size, sha = raw.size, (raw.sha256() if data is not None else source_sha256(f))
        block = None
        while True:
            body = blob.decompressed(raw, compression, rel_recipe, name) if compressed else raw
            try:
                with sink.file():
                    res, rows, chosen = _read_rows(spec, fmt, body, captured, rel_recipe, rel_root, name, sink, block,
                                                   _bytes_read(body, size, progress))
                break
            except readers.Restart as r:
                block = r.block
            finally:
                if body is not raw:
                    body.close()
    return FileFacts(rel_recipe, size, sha, fmt, res.encoding, chosen, captured, rows, res.malformed, res.evidence,
                     res.replaced, res.lines, compression)


def _bytes_read(body: Blob, size: int, progress: Callable[[int], None] | None) -> Callable[[], None] | None:
    """A call that tells ``progress`` how far the reader is into ``body``, in the file's own bytes
    (a decompressed copy's position scaled to the compressed file's size)."""
    if progress is None:
        return None
    return lambda: progress(min(size, body.position() * size // max(body.size, 1)))


def _read_rows(spec: dict, fmt: str, body: Blob, captured: dict, file: str, rel_root: str, name: str, sink: Sink,
               block: int | None, moved: Callable[[], None] | None = None) -> tuple[readers.ReadResult, int, dict]:
    """The file's batches through the column mapping into ``sink``: (the reading, rows, columns chosen)."""
    res = readers.read_file(body, fmt, spec.get("encoding", "auto"), spec.get("delimiter"), file, name,
                            spec["encoding_errors"], spec["on_malformed"], block)
    res.tick = moved
    n, fed = 0, {}
    for raw in res.batches:
        table, chosen = _map(raw, spec.get("columns"), captured, file, name, n)
        if not n:
            _check_not_internal(table, spec, file, name)
        fed = {k: merge(fed.get(k), v) for k, v in chosen.items()}
        k = table.num_rows
        table = table.append_column("_source", pa.array([name] * k, pa.string()))
        table = table.append_column("_file", pa.array([rel_root] * k, pa.string()))
        table = table.append_column("_row", pa.array(range(n + 1, n + k + 1), pa.int64()))
        sink.add(table)
        n += k
        if moved is not None:
            moved()
    return res, n, {k: describe(v) for k, v in fed.items()}


def _check_not_internal(table: pa.Table, spec: dict, file: str, source: str) -> None:
    """A field named like a bookkeeping column (``row_id``, ``_source``...) would be shadowed or clash in DuckDB."""
    from ftc.compiler.normalize import INTERNAL

    for col in table.column_names:
        if col in INTERNAL:
            path = f"sources.{source}.columns.{col}" if spec.get("columns") and col in spec["columns"] else f"sources.{source}"
            raise FtcError("FTC222", file=file, path=path, column=col, internal=", ".join(INTERNAL), source=source)


def _load_hf(recipe: Recipe, name: str, spec: dict, sink) -> SourceData:
    hf = spec["hf"]
    try:
        import datasets
    except ImportError:
        raise FtcError("FTC205", name=hf["name"], reason="the `datasets` package is not installed", source=name) from None
    kwargs = {k: hf[k] for k in ("split", "revision") if hf.get(k)}
    if hf.get("data_files"):
        df = hf["data_files"]
        kwargs["data_files"] = [str(recipe.resolve_path(p)) for p in ([df] if isinstance(df, str) else df)]
    try:
        ds = datasets.load_dataset(hf["name"], hf.get("config"), **kwargs)
    except Exception as e:  # the hub, the builder or the files: all the user's to fix
        raise FtcError("FTC205", name=hf["name"], reason=str(e).splitlines()[0][:300], source=name) from None
    table = ds.data.table if hasattr(ds.data, "table") else ds.with_format("arrow")[:]
    table, chosen = map_columns(table, spec.get("columns"), {}, f"hf:{hf['name']}", name)
    n = table.num_rows
    table = table.append_column("_source", pa.array([name] * n, pa.string()))
    table = table.append_column("_file", pa.array([f"{hf['name']}:{hf.get('split', 'train')}"] * n, pa.string()))
    table = table.append_column("_row", pa.array(range(1, n + 1), pa.int64()))
    with sink.file():
        for b in table.to_batches(readers.ROWS) or [table.schema.empty_table()]:
            sink.add(pa.Table.from_batches([b], table.schema) if isinstance(b, pa.RecordBatch) else b)
    facts = {**{k: hf.get(k) for k in ("name", "config", "split", "revision")}, "fingerprint": ds._fingerprint,
             "rows": n, "columns": chosen}
    if hf.get("data_files"):
        facts["data_files"] = [
            {"path": relpath(Path(p), recipe.dir), "sha256": source_sha256(Path(p))}  # in blocks, not read whole
            for p in kwargs["data_files"]
        ]
        facts["fingerprint"] = None  # the datasets cache fingerprint is path-dependent; the file hashes say it all
    return SourceData(name, sink.view(), n, [], facts)
