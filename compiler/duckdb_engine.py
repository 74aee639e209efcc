"""The DuckDB under normalization: one locked-down connection and the accounting of every stage.

It holds what any step needs and no step's own meaning: the bookkeeping columns, quoting,
counting rows in and out (each drop under a reason, so nothing disappears silently), the
errors a recipe expression raises (with the first failing row), and the one way rows leave
DuckDB, in source order. The steps themselves (what `filter` or `dedup` means in SQL) are
``compiler/normalize.py``'s, built on this.

Between steps rows are a set: DuckDB reorders freely (a constant IN-list becomes a hash
join, scans run in parallel over Arrow batches), so no step may rely on the order it
reads. Order is decided where it is observed: a window orders by its key, then
``_ord`` (source, file, line), and rows leave DuckDB only through ``Engine.read``,
which returns them in ``_ord`` order. Tables materialized between steps are not sorted:
nothing reads their physical order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa

from ftc.errors import FtcError, did_you_mean

INTERNAL = ("_source", "_file", "_row", "_ord", "row_id")
MEMORY_LIMIT = "1GB"  # DuckDB's share of a compile's memory when it may spill (issue 15: 2.5 GiB in all)


@dataclass
class Stage:
    stage: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int] = field(default_factory=dict)

    def to_lock(self) -> dict:
        return {"stage": self.stage, "rows_in": self.rows_in, "rows_out": self.rows_out, "dropped": dict(sorted(self.dropped.items()))}


def not_internal(name: str, where: str, file: str) -> None:
    """A field a recipe writes may not be one of the bookkeeping columns (row identity and order)."""
    if name in INTERNAL:
        raise FtcError("FTC311", file=file, path=where, where=where, name=name, internal=", ".join(INTERNAL))


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class Engine:
    """Holds one in-memory DuckDB connection with external access disabled, and the stages
    counted on it; ``Normalizer`` adds the recipe's steps."""

    def __init__(self, recipe_file: str, *, empty_ok: bool = False, temp_dir: "os.PathLike | None" = None):
        import duckdb

        self.file = recipe_file
        self.empty_ok = empty_ok  # `ftc validate` runs the steps on a sample, which a filter may empty
        # With a temp_dir, DuckDB keeps to MEMORY_LIMIT and spills the rest there (sorts, tables).
        spill = {"memory_limit": MEMORY_LIMIT, "temp_directory": str(temp_dir)} if temp_dir else {}
        self.con = duckdb.connect(":memory:", config={"threads": 2, **spill})
        self.x("SET enable_progress_bar = false")  # compile draws its own progress
        # DuckDB 2 checkpoints an in-memory database every 16 MB written, compressing the table so far:
        # each checkpoint took longer as a source grew (1.1 s, 1.2 s, 1.3 s... at 6k-row appends of
        # the medical CSV), which made reading superlinear; this scratch database is never persisted.
        self.x("SET checkpoint_threshold = '1TB'")
        # Recipes' SQL expressions must not read files or load extensions: sources are
        # handed over as Arrow, so nothing here needs the filesystem.
        self.x("SET enable_external_access = false")
        self.x("SET autoload_known_extensions = false")
        self.x("SET lock_configuration = true")
        self.stages: list[Stage] = []
        self._n = 0
        self._counts: dict[str, int] = {}

    def x(self, sql: str, params: list | None = None) -> "_Rows":
        """Execute and fetch at once: DuckDB 2 refuses new work while a result is open."""
        return _Rows(self.con.execute(sql, params).fetchall() if params else self.con.execute(sql).fetchall())

    def _tmp(self) -> str:
        self._n += 1
        return f"t{self._n}"

    def register(self, table: pa.Table) -> str:
        """A view over a source's Arrow table (no copy), with its stable ``row_id``."""
        name = self._tmp()
        self.con.register(name + "_arrow", table)
        self.x(f"CREATE VIEW {name} AS SELECT _source || ':' || _file || ':' || _row::VARCHAR AS row_id, * FROM {name}_arrow")
        return name

    def count(self, t: str) -> int:
        """Rows of a table or view, remembered: a view's count runs its whole chain."""
        if t not in self._counts:
            self._counts[t] = self.x(f"SELECT count(*) FROM {t}").fetchone()[0]
        return self._counts[t]

    def fields(self, t: str) -> list[str]:
        return [r[0] for r in self.x(f"DESCRIBE {t}").fetchall() if r[0] not in INTERNAL]

    def types(self, t: str) -> dict[str, str]:
        return {r[0]: r[1] for r in self.x(f"DESCRIBE {t}").fetchall()}

    def _sql(self, sql: str, where: str, expr: str, t: str):
        """Bind-time errors of a recipe expression: syntax, names, types, disabled functions."""
        import duckdb

        try:
            return self.x(sql).fetchall()
        except duckdb.Error as e:
            msg = str(e).splitlines()[0]
            raise FtcError("FTC300", file=self.file, path=where, where=where, reason=msg, expr=expr,
                           fields=", ".join(self.fields(t))) from None

    def _run(self, sql: str, path: str, step: str, expr: str, t: str, evaluated: str | None = None) -> "_Rows":
        """Execute ``sql``, which evaluates ``evaluated`` (the user's ``expr`` as the step
        wraps it) over every row of ``t``; it bound already.

        A failure now is a value the expression cannot take (a CAST of 'abc', a bad
        date): the error names the step and the first such row in source order.
        """
        import duckdb

        try:
            return self.x(sql)
        except duckdb.Error as e:
            msg = str(e).splitlines()[0]
            row = self._failing_row(t, evaluated or expr)
            raise FtcError("FTC305", file=self.file, path=path, step=step, expr=expr, reason=msg,
                           row=f"row {row}" if row else "a row (which one could not be found)") from None

    def _failing_row(self, t: str, expr: str) -> str | None:
        """row_id of the first row (in ``_ord`` order) where ``expr`` raises.

        ``try(x IS NULL)`` is NULL exactly where evaluating ``x`` raised: ``IS NULL``
        itself is never NULL.
        """
        import duckdb

        try:
            hit = self.x(f"SELECT row_id FROM {t} WHERE try((({expr})) IS NULL) IS NULL ORDER BY _ord LIMIT 1").fetchone()
        except duckdb.Error:  # try() refuses some expressions (aggregates, subqueries)
            return None
        return hit[0] if hit else None

    def _check_fields(self, t: str, names: list[str], where: str) -> None:
        known = self.fields(t)
        for n in names:
            if n not in known:
                raise FtcError("FTC301", file=self.file, path=where, where=where, field=n, fields=", ".join(known),
                               suggest=did_you_mean(n, known))

    def _replace(self, t: str, select: str, label: str, dropped: dict[str, int] | None = None, reason: str | None = None,
                 window: bool = False, rows_out: int | None = None) -> str:
        """Follow ``t`` by ``select``; record the stage. Drops not itemized in ``dropped``
        are counted under ``reason``.

        Row-wise steps become views: the chain runs once, when the split materializes
        it, and counting a view only touches the columns its filters read. Steps that
        use windows (dedup, sample n, limit, mix) are materialized; their windows break
        ties by ``_ord``.
        """
        new = self._tmp()
        rows_in = self.count(t)
        self.x(f"CREATE {'TABLE' if window else 'VIEW'} {new} AS {select}")
        if rows_out is not None:
            self._counts[new] = rows_out
        rows_out = self.count(new)
        d = {k: v for k, v in (dropped or {}).items() if v}
        rest = rows_in - rows_out - sum(d.values())
        if rest > 0 and reason:  # a step that drops by one rule counts its drops as the difference
            d[reason] = d.get(reason, 0) + rest
        self.check(label, rows_in, rows_out, d)
        self.stages.append(Stage(label, rows_in, rows_out, d))
        if rows_out == 0 and not self.empty_ok:
            counts = ", ".join(f"{k}: {v}" for k, v in d.items()) or f"{rows_in} rows in"
            raise FtcError("FTC302", file=self.file, stage=label, counts=counts)
        return new

    def check(self, stage: str, rows_in: int, rows_out: int, dropped: dict[str, int]) -> None:
        """Rows in = rows out + the counted drops, or the stage lost or made rows without a word."""
        if rows_in != rows_out + sum(dropped.values()) or rows_out > rows_in:
            counts = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "none"
            raise FtcError("FTC308", file=self.file, stage=stage, rows_in=rows_in, rows_out=rows_out,
                           dropped=f"{sum(dropped.values())} ({counts})")


    def read(self, t: str, select: str) -> pa.Table:
        """Rows of ``t`` out of DuckDB, in ``_ord`` (source) order: the one way rows leave it.

        The order is checked and, where DuckDB returned another, restored in Arrow: an
        ORDER BY would sort the whole payload (half a second for 200k rows of text),
        while checking ``_ord`` costs a millisecond and the rows mostly come back sorted.
        """
        import pyarrow.compute as pc

        table = self.arrow(f"SELECT {select}, _ord FROM {t}")
        ord_ = table.column("_ord").combine_chunks()
        n = len(ord_)
        if n > 1 and not pc.all(pc.less(ord_.slice(0, n - 1), ord_.slice(1))).as_py():
            table = table.take(pc.sort_indices(ord_))
        return table.drop_columns(["_ord"])

    def arrow(self, sql: str) -> pa.Table:
        rel = self.con.sql(sql)
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        return standard_lists(table)


class _Rows(list):
    def fetchall(self) -> list:
        return list(self)

    def fetchone(self):
        return self[0] if self else None


def standard_lists(table: pa.Table) -> pa.Table:
    """DuckDB names list items "l"; Arrow, Parquet readers and HF datasets expect "item"."""

    def fix(t: pa.DataType) -> pa.DataType:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(fix(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, fix(f.type), f.nullable) for f in t])
        return t

    schema = pa.schema([pa.field(f.name, fix(f.type), f.nullable) for f in table.schema])
    return table if str(schema) == str(table.schema) else table.cast(schema)

