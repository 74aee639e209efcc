"""Render one split: the template's columns as one DuckDB SELECT where the templates lower to SQL,
Jinja for the rest, batch by batch into a spill file. compile.py calls it once per split.

The template's output keys per format (OUTPUTS) live here because this is what renders them; the
lock's samples (compile.py) name the same keys.
"""

from __future__ import annotations

import pyarrow as pa

from ftc.compiler import cache, preference, render
from ftc.compiler.artifacts import Spill
from ftc.compiler.normalize import INTERNAL, Normalizer, standard_lists
from ftc.compiler.progress import Progress
from ftc.errors import FtcError

OUTPUTS = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "prompt": ["prompt"], "messages": ["messages"],
           **preference.OUTPUTS}


def render_split(norm: Normalizer, t: str, spec: dict, templates, types, rendered_by, spill: Spill,
                 progress: Progress, *, all_rows: bool) -> Spill:
    """One SELECT for everything lowerable; Jinja for the rest, in row order; batch by batch into ``spill``.

    The rows stream out of DuckDB in ``_ord`` order (its sort spills to disk when it must), each
    batch gets its Jinja columns and goes to the spill file, so the split is never whole in memory.
    """
    fmt = spec["format"]
    sql_cols, jinja_cols = {}, {}
    for key in OUTPUTS[fmt]:
        if key not in spec:
            continue
        value = spec[key]
        if isinstance(value, dict) and "field" in value:
            sql_cols[key] = f'"{value["field"]}"'
            continue
        if isinstance(value, list):
            exprs = []
            for i, m in enumerate(value):
                jp = f"template.{key}[{i}].content"
                e = render.to_sql(templates[jp], types)
                exprs.append(e)
                rendered_by[jp] = "sql" if e is not None else "jinja"
            if None not in exprs:
                sql_cols[key] = render.chat_sql([(m["role"], e) for m, e in zip(value, exprs)])
            else:
                jinja_cols[key] = [(m["role"], templates[f"template.{key}[{i}].content"]) for i, m in enumerate(value)]
                for i in range(len(value)):
                    rendered_by[f"template.{key}[{i}].content"] = "jinja"
            continue
        jp = f"template.{key}"
        e = render.to_sql(templates[jp], types)
        rendered_by[jp] = "sql" if e is not None else "jinja"
        if e is not None:
            sql_cols[key] = e
        else:
            jinja_cols[key] = templates[jp]
    from ftc.compiler.normalize import q

    fields = [c for c in types if c not in INTERNAL]
    outputs = set(sql_cols) | set(jinja_cols)
    cols = ["row_id"] + [q(c) for c in fields if c not in outputs] + [f"{e} AS {q(k)}" for k, e in sql_cols.items()]
    # Jinja reads every field, also one an output column replaces: those come along under a
    # hidden name in the same query, so each rendered text is made from its own row (a
    # second query could return the rows in another order).
    hidden: dict[str, str] = {}
    if jinja_cols:
        for c in fields:
            if c in outputs:
                h = f"_in_{c}"
                while h in types:
                    h = "_" + h
                hidden[c] = h
                cols.append(f"{q(c)} AS {q(h)}")
    reader = norm.con.sql(f"SELECT {', '.join(cols)} FROM {t} ORDER BY _ord").to_arrow_reader(cache.BATCH)
    # the rendered text outputs (KTO's boolean label is the preference module's to check: FTC241/FTC604)
    outputs_spec = {k: spec[k] for k in OUTPUTS[fmt] if k in spec and k != "label"}
    failed, maybe_blank = False, True
    for batch in reader:
        table = _jinja(standard_lists(pa.Table.from_batches([batch])), fields, hidden, jinja_cols)
        if table.num_rows and not failed:
            # render.check_rendered batch by batch; where it finds something, the whole split
            # is checked once more below, so the error names the same row and count as ever.
            try:
                render.check_rendered(table, outputs_spec, templates, all_rows=all_rows)
                maybe_blank = False  # some row of every template printed something
            except FtcError as e:
                failed = e.code != "FTC407"
        spill.write(table)
        progress.update(table.num_rows)
    progress.close()
    spill.close(_jinja(standard_lists(reader.schema.empty_table()), fields, hidden, jinja_cols).schema)
    if failed or (all_rows and maybe_blank and spill.num_rows):
        render.check_rendered(spill.read_all(), outputs_spec, templates, all_rows=all_rows)
    return spill


def _jinja(table: pa.Table, fields: list[str], hidden: dict[str, str], jinja_cols: dict) -> pa.Table:
    """A batch of the render query with its Jinja-rendered columns added (and the hidden inputs gone)."""
    if jinja_cols and table.num_rows:
        inputs = table.select(["row_id"] + [hidden.get(c, c) for c in fields]).rename_columns(["row_id"] + fields)
        table = table.drop_columns(list(hidden.values()))
        rows = inputs.to_pylist()
        for key, tpl in jinja_cols.items():
            if isinstance(tpl, list):
                contents = [render.render_rows(tp, rows) for _, tp in tpl]
                col = render.chat_arrow([r for r, _ in tpl], contents)
            else:
                col = pa.array(render.render_rows(tpl, rows), pa.string())
            table = table.append_column(key, col)
    elif jinja_cols:
        table = table.drop_columns(list(hidden.values()))
        for key in jinja_cols:
            table = table.append_column(key, pa.array([], pa.string()))
    return table
