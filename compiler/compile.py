"""The compile pipeline: recipe -> sources -> DuckDB steps -> split -> render -> artifacts -> lock.

Pure steps live in their own modules; this file only wires them in order and
collects the facts that go into the lock.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from ftc import __version__
from ftc.compiler import render
from ftc.compiler.lock import LOCK_VERSION, seal, write_lock
from ftc.compiler.normalize import INTERNAL, Normalizer, Stage
from ftc.compiler.recipe import Recipe, derive_schedule
from ftc.compiler.sources import load_source

OUTPUTS = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "prompt": ["prompt"], "messages": ["messages"]}
VERSIONED = ("duckdb", "pyarrow", "jinja2", "jsonschema")


@dataclass
class Compiled:
    lock: dict
    lock_path: Path
    splits: dict[str, pa.Table]


def rel(path: Path, start: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start)).replace(os.sep, "/")


def compile_recipe(recipe: Recipe, lock_path: Path, *, progress: bool = False, write: bool = True) -> Compiled:
    file = str(recipe.path)
    norm = Normalizer(file)
    lock_dir = lock_path.parent

    # 1. sources, each with its own transforms
    source_facts, tables, ord_base = {}, {}, 0
    for name, spec in recipe.data["sources"].items():
        sd = load_source(recipe, name, spec, progress=progress)
        n = sd.table.num_rows
        malformed = sum(f.malformed_rows for f in sd.files)
        norm.stages.append(Stage(f"sources.{name}: read", n + malformed, n, {"malformed row (parser skipped it)": malformed} if malformed else {}))
        table = sd.table.append_column("_ord", pa.array(range(ord_base, ord_base + n), pa.int64()))
        ord_base += n
        t = norm.register(table)
        norm.x(f"CREATE TABLE {t}_id AS SELECT _source || ':' || _file || ':' || _row::VARCHAR AS row_id, * FROM {t}")
        norm.x(f"DROP TABLE {t}")
        t = f"{t}_id"
        for i, step in enumerate(spec["transforms"]):
            t = norm.apply(t, step, f"sources.{name}.transforms[{i}]")
        tables[name] = t
        source_facts[name] = sd.hf if sd.hf is not None else {"files": [f.to_lock() for f in sd.files], "rows": n}

    # 2. mixture, then the recipe-wide transforms
    t = norm.mix(tables, recipe.data["mix"]) if len(tables) > 1 or recipe.data["mix"] else next(iter(tables.values()))
    for i, step in enumerate(recipe.data["transforms"]):
        t = norm.apply(t, step, f"transforms[{i}]")

    # 3. templates: checked against the fields before any row is rendered
    tpl_spec = recipe.data["template"]
    fmt = tpl_spec["format"]
    types = norm.types(t)
    fields = set(norm.fields(t))
    templates = _templates(recipe, tpl_spec)
    for json_path, tpl in templates.items():
        render.compile_template(tpl)
        render.check_fields(tpl, fields, file, json_path)
    if fmt == "messages" and isinstance(tpl_spec["messages"], dict):
        src = tpl_spec["messages"]["field"]
        norm._check_fields(t, [src], "template.messages.field")

    if recipe.data["train"]["method"] == "grpo":
        from ftc.runtime.rewards import check_rewards

        grpo = recipe.data["train"]["grpo"]
        grpo["rewards"] = check_rewards(grpo["rewards"], fields=fields, allow_python=grpo["allow_python"],
                                        recipe_dir=recipe.dir, file=file)

    # 4. split, deterministic from a hash of key fields
    default_key = sorted({v for tpl in templates.values() for v in render.variables(tpl)} & fields) or sorted(fields)
    train_t, eval_t = norm.split(t, recipe.data["split"], default_key)

    # 5. render and write each split
    splits, artifacts, samples, rendered_by = {}, {}, {}, {}
    cache = recipe.resolve_path(recipe.data["output"]["cache_dir"]) / "data"
    for split, st in (("train", train_t), ("eval", eval_t)):
        table = _render_split(norm, st, tpl_spec, templates, types, rendered_by)
        splits[split] = table
        if table.num_rows == 0 and split == "eval":
            continue
        artifacts[split] = _write_parquet(table, cache, split, lock_dir, write)
        samples[split] = [_sample(r, fmt) for r in table.slice(0, 2).to_pylist()]

    lock = {
        "lock_version": LOCK_VERSION,
        "ftc_version": __version__,
        "recipe": {"path": rel(recipe.path, lock_dir), "sha256": recipe.sha256, "overrides": list(recipe.overrides)},
        "settings": recipe.data,
        "sources": source_facts,
        "stages": [s.to_lock() for s in norm.stages],
        "templates": {
            jp: {"name": tpl.name, "sha256": tpl.sha256, "text": tpl.source, "rendered_by": rendered_by.get(jp, "jinja")}
            for jp, tpl in templates.items()
        },
        "samples": samples,
        "artifacts": {"data": artifacts},
        "schedule": derive_schedule(recipe.data["train"], splits["train"].num_rows),
        "versions": _versions(),
    }
    lock = seal(lock)
    if write:
        write_lock(lock, lock_path)
    return Compiled(lock, lock_path, splits)


def _templates(recipe: Recipe, spec: dict) -> dict[str, render.Template]:
    out = {}
    for key in OUTPUTS[spec["format"]]:
        value = spec[key]
        if isinstance(value, list):  # chat turns
            for i, m in enumerate(value):
                jp = f"template.{key}[{i}].content"
                out[jp] = render.load_template(m["content"], recipe.dir, jp, str(recipe.path))
        elif isinstance(value, dict) and "field" in value:
            continue
        else:
            jp = f"template.{key}"
            out[jp] = render.load_template(value, recipe.dir, jp, str(recipe.path))
    return out


def _render_split(norm: Normalizer, t: str, spec: dict, templates, types, rendered_by) -> pa.Table:
    """One SELECT for everything lowerable; Jinja for the rest, in row order."""
    fmt = spec["format"]
    sql_cols, jinja_cols = {}, {}
    for key in OUTPUTS[fmt]:
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
    keep = ", ".join(f'"{c}"' for c in types if c not in INTERNAL and c not in sql_cols and c not in jinja_cols)
    select = ", ".join(["row_id"] + ([keep] if keep else []) + [f"{e} AS \"{k}\"" for k, e in sql_cols.items()])
    table = norm.arrow(f"SELECT {select} FROM {t} ORDER BY _ord")
    if jinja_cols and table.num_rows:
        rows = norm.arrow(f"SELECT * EXCLUDE (_source, _file, _row, _ord) FROM {t} ORDER BY _ord").to_pylist()
        for key, tpl in jinja_cols.items():
            if isinstance(tpl, list):
                contents = [render.render_rows(tp, rows) for _, tp in tpl]
                col = render.chat_arrow([r for r, _ in tpl], contents)
            else:
                col = pa.array(render.render_rows(tpl, rows), pa.string())
            table = table.append_column(key, col)
    elif jinja_cols:
        for key in jinja_cols:
            table = table.append_column(key, pa.array([], pa.string()))
    return table


def _write_parquet(table: pa.Table, cache: Path, split: str, lock_dir: Path, write: bool) -> dict:
    """Content-addressed Parquet: the file name carries its own sha256."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=65536)
    data = sink.getvalue().to_pybytes()
    digest = hashlib.sha256(data).hexdigest()
    path = cache / f"{split}-{digest[:16]}.parquet"
    if write and not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return {
        "path": rel(path, lock_dir),
        "sha256": digest,
        "rows": table.num_rows,
        "schema": {f.name: str(f.type) for f in table.schema},
    }


def _sample(row: dict, fmt: str) -> dict:
    return {"row_id": row["row_id"], **{k: row[k] for k in OUTPUTS[fmt]}}


def _versions() -> dict:
    out = {"ftc": __version__}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
