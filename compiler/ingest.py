"""Where a source's rows enter DuckDB: appended file by file, batch by batch, into one table.

Python never holds a source whole (issue 15): each batch a reader gives is appended to the
source's DuckDB table (which spills to disk past the Normalizer's memory limit) and let go.
A file whose reading fails or must start over (a CSV record longer than the parser's block)
leaves no rows behind. The table is what registering the
concatenation of all files' tables gave before: the same columns, types and rows, with
``_ord`` numbering the rows in source order from ``ord_base``; files whose columns disagree are
read again, each cast to the schema Arrow's permissive promotion unifies them to.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pyarrow as pa


class SchemaChange(Exception):
    """A file's columns differ from the first file's: the source is read again under one unified schema."""


def _shape(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in schema]  # nullability is Arrow's bookkeeping, not DuckDB's


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` under ``schema``, as ``pa.concat_tables(promote_options="permissive")`` makes it:
    a missing column is all nulls, every other column is cast."""
    n = table.num_rows
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class SourceTable:
    """One source's rows in a table of ``norm``'s DuckDB connection."""

    def __init__(self, norm, ord_base: int, target: pa.Schema | None = None):
        self.norm = norm
        self.name = norm._tmp()
        self.target = target  # every file is cast to it (set when the files disagree)
        self.schema: pa.Schema | None = None
        self.rows = 0
        self.ord = ord_base

    @contextmanager
    def file(self) -> Iterator[None]:
        """One file's batches, all or none of them. Not a DuckDB transaction: until it commits,
        DuckDB keeps every Arrow batch inserted in it alive (measured: the whole file), so a
        failed file's rows are deleted instead, by their ``_ord``."""
        before = self.rows, self.ord, self.schema
        try:
            yield
        except BaseException:
            if before[2] is None:
                self.norm.x(f"DROP TABLE IF EXISTS {self.name}")
            elif self.rows > before[0]:
                self.norm.x(f"DELETE FROM {self.name} WHERE _ord >= {int(before[1])}")
            self.rows, self.ord, self.schema = before
            raise

    def add(self, table: pa.Table) -> None:
        """Append one batch (fields and the bookkeeping columns ``_source``, ``_file``, ``_row``)."""
        if self.target is not None:
            table = conform(table, self.target)
        if self.schema is not None and _shape(table.schema) != _shape(self.schema):
            raise SchemaChange()
        n, schema = table.num_rows, table.schema
        table = table.append_column("_ord", pa.array(np.arange(self.ord, self.ord + n, dtype=np.int64)))
        con = self.norm.con
        con.register("_ftc_batch", table)
        try:
            if self.schema is None:
                self.norm.x(f"CREATE TABLE {self.name} AS SELECT * FROM _ftc_batch")
                self.schema = schema
            else:
                self.norm.x(f"INSERT INTO {self.name} SELECT * FROM _ftc_batch")
        finally:
            con.unregister("_ftc_batch")
        self.rows += n
        self.ord += n

    def drop(self) -> None:
        self.norm.x(f"DROP TABLE IF EXISTS {self.name}")
        self.schema, self.rows = None, 0

    def view(self) -> str:
        """The source as the steps see it: every row with its stable ``row_id``."""
        name = self.norm._tmp()
        self.norm.x(f"CREATE VIEW {name} AS SELECT _source || ':' || _file || ':' || _row::VARCHAR AS row_id, * "
                    f"FROM {self.name}")
        self.norm._counts[name] = self.rows
        return name
