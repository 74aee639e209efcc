"""Normalization as DuckDB SQL over Arrow: clean, filter, dedup, derive, mix, split.

Every step is one set-based query. Each records rows in, rows out, and the rows it
dropped under a reason, so nothing disappears silently; the connection, that accounting
and the row order live in ``compiler/duckdb_engine.py``, and this module says what each
recipe step means in SQL over it.

User expressions are evaluated when their step runs, over every row the step sees, so
a value that fails (a CAST of 'abc') is reported at that step with its row, not later
at whatever query happened to touch the column first.
"""

from __future__ import annotations

import math

from ftc.compiler.duckdb_engine import INTERNAL, Engine, Stage, lit, not_internal, q, standard_lists
from ftc.compiler.safe_sql import check_expression
from ftc.errors import FtcError, did_you_mean

# Re-exported: the compiler imports the row bookkeeping from here, where normalization is.
__all__ = ["INTERNAL", "Normalizer", "Stage", "lit", "not_internal", "q", "standard_lists"]

# Whitespace for `strip`: ASCII plus no-break and ideographic spaces common in CJK data.
WHITESPACE = " \t\n\r\f\v\u00a0\u3000\ufeff"


class Normalizer(Engine):
    """The recipe's steps over one Engine: ``apply`` runs a transform (one ``_step_<kind>``
    method per kind in the schema); ``mix`` and ``split`` cut the whole dataset."""

    # -- steps
    def apply(self, t: str, step: dict, where: str) -> str:
        (kind, arg), = step.items()
        return getattr(self, f"_step_{kind}")(t, arg, where)

    def _step_strip(self, t, arg, where):
        types = self.types(t)
        names = [c for c, ty in types.items() if ty == "VARCHAR" and c not in INTERNAL] if arg is True else arg
        if arg is not True:
            self._check_fields(t, names, where)
            for c in names:
                if types[c] != "VARCHAR":
                    raise FtcError("FTC304", file=self.file, path=f"{where}.strip", field=c, type=types[c])
        if not names:
            return t
        # Trim only values that start or end with whitespace: most rows are clean, and
        # looking at two characters is much cheaper than trimming (or a regex over) the text.
        # contains() on one string, not list_contains() on a list: DuckDB turns a
        # constant list into a hash join, which is slower and scrambles the row order.
        ws = lit(WHITESPACE)
        repl = ", ".join(
            f"CASE WHEN contains({ws}, left({q(c)}, 1)) OR contains({ws}, right({q(c)}, 1)) "
            f"THEN trim({q(c)}, {ws}) ELSE {q(c)} END AS {q(c)}"
            for c in names
        )
        return self._replace(t, f"SELECT * REPLACE ({repl}) FROM {t}", f"{where}: strip")

    def _step_drop_empty(self, t, arg, where):
        self._check_fields(t, arg, where)
        types = self.types(t)

        def empty(c):
            ty = types[c]
            if ty == "VARCHAR":
                return f"({q(c)} IS NULL OR {q(c)} = '')"
            if ty.endswith("[]"):
                return f"({q(c)} IS NULL OR len({q(c)}) = 0)"
            return f"({q(c)} IS NULL)"

        case = "CASE " + " ".join(f"WHEN {empty(c)} THEN {lit('empty ' + c)}" for c in arg) + " END"
        # one pass gives both the drops by reason and the rows kept (the NULL group)
        groups = dict(self.x(f"SELECT {case} AS why, count(*) FROM {t} GROUP BY 1").fetchall())
        kept = groups.pop(None, 0)
        cond = " OR ".join(empty(c) for c in arg)
        return self._replace(t, f"SELECT * FROM {t} WHERE NOT ({cond})", f"{where}: drop_empty", groups, rows_out=kept)

    def _step_filter(self, t, arg, where):
        expr = arg["where"]
        label = arg.get("name") or expr
        # A subquery boundary keeps the expression an expression, not a statement.
        cond = f"coalesce(({expr})::BOOLEAN, false)"
        path = f"{where}.filter"
        check_expression(expr, path=path, file=self.file, fields=", ".join(self.fields(t)))
        self._sql(f"SELECT count(*) FROM {t} WHERE {cond} LIMIT 0", path, expr, t)
        kept = self._run(f"SELECT count(*) FROM {t} WHERE {cond}", path, "filter", expr, t, cond).fetchone()[0]
        return self._replace(t, f"SELECT * FROM {t} WHERE {cond}", f"{where}: filter",
                             reason=f"filter: {label}", rows_out=kept)

    def _step_dedup(self, t, arg, where):
        self._check_fields(t, arg, where)
        keys = ", ".join(q(c) for c in arg)
        return self._replace(t, f"SELECT * FROM {t} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _ord) = 1",
                             f"{where}: dedup", reason=f"duplicate ({', '.join(arg)})", window=True)

    def _step_derive(self, t, arg, where):
        existing = set(self.types(t))
        for name, expr in arg.items():
            not_internal(name, f"{where}.derive.{name}", self.file)
            path = f"{where}.{name}"  # the stage's label
            jp = f"{where}.derive.{name}"
            check_expression(expr, path=jp, file=self.file, fields=", ".join(self.fields(t)))
            self._sql(f"SELECT ({expr}) FROM {t} LIMIT 0", jp, expr, t)
            # The view is lazy and a count skips unused columns: evaluate the expression
            # on every row now (hash() keeps the optimizer from dropping it), so a value
            # it cannot take is reported here, with its row.
            self._run(f"SELECT max(hash(({expr}))) FROM {t}", jp, f"derive of {name!r}", expr, t)
            sel = f"SELECT * REPLACE (({expr}) AS {q(name)}) FROM {t}" if name in existing else f"SELECT *, ({expr}) AS {q(name)} FROM {t}"
            t = self._replace(t, sel, f"{path}: derive")
            existing.add(name)
        return t

    def _step_extract(self, t, arg, where):
        src, pat, into = arg["from"], arg["pattern"], arg["into"]
        self._check_fields(t, [src], f"{where}.from")
        not_internal(into, f"{where}.into", self.file)
        import duckdb

        try:  # DuckDB runs RE2: validate the pattern with the engine that will use it
            self.x("SELECT regexp_extract('', ?, 0)", [pat]).fetchall()
        except duckdb.Error as e:
            raise FtcError("FTC303", file=self.file, path=f"{where}.pattern", where=f"{where}.pattern", reason=str(e).splitlines()[0]) from None
        group = 1 if _groups(pat) else 0
        val = f"regexp_extract({q(src)}::VARCHAR, {lit(pat)}, {group})"
        if arg.get("remove"):
            val = f"translate({val}, {lit(arg['remove'])}, '')"
        val = f"nullif({val}, '')"
        existing = set(self.types(t))
        sel = f"SELECT * REPLACE ({val} AS {q(into)}) FROM {t}" if into in existing else f"SELECT *, {val} AS {q(into)} FROM {t}"
        if not arg.get("required", True):
            return self._replace(t, sel, f"{where}: extract")
        src_rows = f"SELECT * FROM ({sel}) WHERE {q(into)} IS NOT NULL"
        return self._replace(t, src_rows, f"{where}: extract", reason=f"no match for {pat!r} in {src}")

    def _step_length(self, t, arg, where):
        f = arg["field"]
        self._check_fields(t, [f], f"{where}.field")
        n = f"length({q(f)}::VARCHAR)"
        parts, dropped = [], {}
        if "min" in arg:
            parts.append(f"{n} >= {int(arg['min'])}")
            dropped[f"{f} shorter than {arg['min']} characters"] = self.x(
                f"SELECT count(*) FROM {t} WHERE {n} < {int(arg['min'])}").fetchone()[0]
        if "max" in arg:
            parts.append(f"{n} <= {int(arg['max'])}")
            dropped[f"{f} longer than {arg['max']} characters"] = self.x(
                f"SELECT count(*) FROM {t} WHERE {n} > {int(arg['max'])}").fetchone()[0]
        nulls = self.x(f"SELECT count(*) FROM {t} WHERE {q(f)} IS NULL").fetchone()[0]
        if nulls:
            dropped[f"{f} is null"] = nulls
        cond = " AND ".join(parts) or "true"
        return self._replace(t, f"SELECT * FROM {t} WHERE {cond}", f"{where}: length", dropped)

    def _step_sample(self, t, arg, where):
        h = f"md5({lit(arg['seed'])} || ':' || row_id)"
        if "n" in arg:
            sel = f"SELECT * FROM {t} QUALIFY row_number() OVER (ORDER BY {h}, _ord) <= {int(arg['n'])}"
        else:
            sel = f"SELECT * FROM {t} WHERE {_unit(h)} < {float(arg['fraction'])!r}"
        return self._replace(t, sel, f"{where}: sample", reason="sample: not selected", window="n" in arg)

    def _step_limit(self, t, arg, where):
        return self._replace(t, f"SELECT * FROM {t} QUALIFY row_number() OVER (ORDER BY _ord) <= {int(arg)}", f"{where}: limit", reason=f"beyond limit {int(arg)}", window=True)

    # -- whole-dataset steps
    def mix(self, tables: dict[str, str], mix: dict) -> str:
        """Union the sources, each cut to its declared count or weight share."""
        for n in mix:
            if n not in tables:
                raise FtcError("FTC306", file=self.file, path=f"mix.{n}", name=n, sources=", ".join(tables),
                               suggest=did_you_mean(n, tables))
        counts = {n: self.count(t) for n, t in tables.items()}
        take = dict(counts)
        weights = {n: m["weight"] for n, m in mix.items() if "weight" in m}
        if weights:
            total_w = sum(weights.values())
            fit = min(counts[n] / (w / total_w) for n, w in weights.items())
            for n, w in weights.items():
                take[n] = min(counts[n], math.floor(fit * w / total_w + 1e-9))
        for n, m in mix.items():
            if "count" in m:
                take[n] = min(counts[n], m["count"])
        parts = []
        for n, t in tables.items():
            if take[n] < counts[n]:
                h = "md5('mix:' || row_id)"
                sel = f"SELECT * FROM {t} QUALIFY row_number() OVER (ORDER BY {h}, _ord) <= {take[n]}"
                t = self._replace(t, sel, f"mix.{n}", {f"mix: beyond {n}'s share": counts[n] - take[n]}, window=True)
            parts.append(f"SELECT * FROM {t}")
        out = self._tmp()
        self.x(f"CREATE TABLE {out} AS " + " UNION ALL BY NAME ".join(parts))
        self.check("mix", sum(take.values()), self.count(out), {})
        return out

    def split(self, t: str, split: dict, default_key: list[str]) -> tuple[str, str]:
        keys = split.get("key") or default_key
        self._check_fields(t, keys, "split.key")
        h = "md5(" + " || '\x1f' || ".join([lit(split["seed"])] + [f"coalesce({q(k)}::VARCHAR, '')" for k in keys]) + ")"
        ev = split["eval"]
        rows = self.count(t)
        final, train, evl = self._tmp(), self._tmp(), self._tmp()
        if ev < 1:
            # Row-wise: the chain stays a view, so each split's render runs it once for its
            # own rows, and one grouped pass counts both sides.
            is_eval = "false" if ev == 0 else f"{_unit(h)} < {float(ev)!r}"
            self.x(f"CREATE VIEW {final} AS SELECT *, {is_eval} AS _eval FROM {t}")
            sides = dict(self.x(f"SELECT _eval, count(*) FROM {final} GROUP BY 1").fetchall())
            self._counts[train], self._counts[evl] = sides.get(False, 0), sides.get(True, 0)
        else:  # a count needs a window: materialize once
            self.x(f"CREATE TABLE {final} AS SELECT *, row_number() OVER (ORDER BY {h}, _ord) <= {int(ev)} AS _eval FROM {t}")
        self.x(f"CREATE VIEW {train} AS SELECT * EXCLUDE (_eval) FROM {final} WHERE NOT _eval")
        self.x(f"CREATE VIEW {evl} AS SELECT * EXCLUDE (_eval) FROM {final} WHERE _eval")
        n_eval = self.count(evl)
        # Counted again over the split itself, not taken from the stages: rows that a
        # step's view gained or lost after its stage was counted show up here.
        self.check("split", rows, self.count(train) + n_eval, {})
        self.stages.append(Stage("split", rows, rows, {}))
        if rows - n_eval == 0 and not self.empty_ok:
            raise FtcError("FTC302", file=self.file, stage="split", counts=f"all {rows} rows went to eval")
        return train, evl


def _unit(h: str) -> str:
    """A uniform [0, 1) number from the first 32 bits of an md5 hex digest."""
    return f"(('0x' || substr({h}, 1, 8))::UBIGINT / 4294967296.0)"


def _groups(pattern: str) -> int:
    import re

    try:
        return re.compile(pattern).groups
    except re.error:
        return 1 if "(" in pattern else 0
