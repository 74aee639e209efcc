"""Content-addressed Parquet artifacts: the one writer of the data and token files a lock names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from ftc.compiler.cache import store
from ftc.compiler.inputs import sha256_file
from ftc.compiler.lock import relpath

WRITE_BATCH = 2048  # rows per batch handed to DuckDB's Parquet writer; divides ROW_GROUP_SIZE
WRITE_THREADS = 1  # one: the row groups' cut (so the bytes) and the memory do not depend on timing (see write_parquet)


def write_parquet(table: pa.Table | Iterable[pa.Table], cache: Path, split: str, recipe_dir: Path, write: bool,
                   schema: pa.Schema | None = None) -> dict:
    """Content-addressed Parquet: the file name carries its own sha256.

    DuckDB writes it from its own connection, which only ever sees this Arrow table,
    never a recipe's SQL. The bytes are the same on every run (tests/test_determinism.py)
    because everything they depend on is fixed here: the row order, since the query is a
    bare scan of one Arrow table and ``preserve_insertion_order`` (set, not left to a
    default) makes COPY write a scan's batches in their order (an ORDER BY would pin the
    same order at twice the cost); and the row groups, which DuckDB cuts at batch
    boundaries, so the table is handed over in batches of 2,048 rows whatever chunks it
    arrived in (DuckDB's result chunks vary from run to run), by ONE writer thread
    (WRITE_THREADS). With two, the cut raced: of three concurrent writes of the same
    1.2M token rows, one cut row group 13 of 19 a batch short (63,488 rows), so other
    bytes and another sha256 for the same rows; and the two threads read the stream far
    ahead of the encoder, 2.5 GiB peak against 0.8 GiB with one (the compile's peak at
    0.6M-2.4M rows was this write). One thread costs about 10 s per 470M ids encoded.
    ``table`` may also be an iterable of tables (of ``schema``), written as they come:
    the same 2,048-row batches, so the same bytes, in bounded memory.
    """
    import duckdb

    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{split}-{os.getpid()}.parquet.tmp"
    con = duckdb.connect(":memory:", config={"threads": WRITE_THREADS, "preserve_insertion_order": True})
    con.execute("SET enable_progress_bar = false")  # compile draws its own; DuckDB's went to stdout
    try:
        if isinstance(table, pa.Table):
            schema, rows = table.schema, table.num_rows
            con.register("artifact", pa.Table.from_batches(list(rebatch([table], WRITE_BATCH)), schema))
        else:
            counted = [0]

            def stream():
                for b in rebatch(table, WRITE_BATCH):
                    counted[0] += b.num_rows
                    yield b

            con.register("artifact", pa.RecordBatchReader.from_batches(schema, stream()))
        con.execute(f"COPY (SELECT * FROM artifact) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' "
                    "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 65536)").fetchall()
    finally:
        con.close()
    if not isinstance(table, pa.Table):
        rows = counted[0]
    digest = sha256_file(tmp)
    path = cache / f"{split}-{digest[:16]}.parquet"
    if write:
        store(tmp, path, digest)  # an existing file of that name is kept only when its bytes match
    else:
        tmp.unlink()
    return {
        "path": relpath(path, recipe_dir),  # the lock's one rule: relative to the recipe's folder
        "sha256": digest,
        "rows": rows,
        "schema": {f.name: str(f.type) for f in schema},
    }


def rebatch(tables: Iterable[pa.Table], size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly ``size`` rows (the last one shorter), whatever sizes the tables come in."""
    held: list[pa.Table] = []
    n = 0
    for t in tables:
        held.append(t)
        n += t.num_rows
        while n >= size:
            whole = pa.concat_tables(held)
            yield from whole.slice(0, size).combine_chunks().to_batches()
            rest = whole.slice(size)
            held, n = [rest], rest.num_rows
    if n:
        yield from pa.concat_tables(held).combine_chunks().to_batches()


class Spill:
    """Rows kept on disk between two stages (an Arrow IPC file), read back a batch at a time.

    A rendered split goes through here on its way to the data artifact and to the tokenizer,
    so neither holds the whole split in memory. The file is read with plain reads, not a
    memory map: mapped pages would count as the compile's memory while they are touched.
    """

    def __init__(self, path: Path):
        self.path = path
        self.num_rows = 0
        self.schema: pa.Schema | None = None
        self.head: pa.Table | None = None  # the first rows, for the lock's samples
        self._writer = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.schema = table.schema
            self._writer = pa.ipc.new_file(str(self.path), table.schema)
            self.head = table.slice(0, 0)
        self._writer.write_table(table)
        self.num_rows += table.num_rows
        if self.head.num_rows < 2:
            self.head = pa.concat_tables([self.head, table.slice(0, 2 - self.head.num_rows)]).combine_chunks()

    def close(self, empty: pa.Schema) -> "Spill":
        """Finish the file; ``empty`` is the schema of a spill that got no batch at all."""
        if self._writer is None:
            self.write(empty.empty_table())
        self._writer.close()
        return self

    def tables(self, size: int | None = None) -> Iterator[pa.Table]:
        """The rows in order, as they were written or (``size``) re-cut into tables of ``size`` rows."""
        def written() -> Iterator[pa.Table]:
            with pa.OSFile(str(self.path)) as f:
                reader = pa.ipc.open_file(f)
                for k in range(reader.num_record_batches):
                    yield pa.Table.from_batches([reader.get_batch(k)])

        if size is None:
            yield from written()
        else:
            for b in rebatch(written(), size):
                yield pa.Table.from_batches([b])

    def read_all(self) -> pa.Table:
        parts = list(self.tables())
        return pa.concat_tables(parts) if parts else self.schema.empty_table()

    def null_count(self, column: str) -> int:
        return sum(t.column(column).null_count for t in self.tables())
