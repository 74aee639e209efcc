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
from ftc.compiler import preference, render
from ftc.compiler.lock import LOCK_VERSION, Plan, relpath, seal
from ftc.compiler.lock import write_lock as write_lock_file
from ftc.compiler.normalize import INTERNAL, Normalizer, Stage
from ftc.compiler.outputs import check_writable, remove_stale_tmp
from ftc.compiler.recipe import Recipe
from ftc.compiler.schedule import check_grpo_batch, derive_schedule
from ftc.compiler.sources import load_source

OUTPUTS = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "prompt": ["prompt"], "messages": ["messages"],
           **preference.OUTPUTS}
VERSIONED = ("duckdb", "pyarrow", "jinja2", "jsonschema")


@dataclass
class Compiled:
    lock: dict
    lock_path: Path
    splits: dict[str, pa.Table]
    tokens: dict[str, pa.Table]  # empty when compiled with tokenize=False


def compile_recipe(recipe: Recipe, lock_path: Path, *, progress: bool = False, write: bool = True, tokenize: bool = True,
                   write_lock: bool = True) -> Compiled:
    """Compile; ``write`` puts artifacts in the cache, ``write_lock`` also writes the lock and its reports."""
    file = str(recipe.path)
    if write:  # before any reading: a compile that cannot write its output fails first, not last
        check_writable(recipe, Path(lock_path) if write_lock else None)
    norm = Normalizer(file)
    adapter = _adapter(recipe, file)  # refused before any source is read

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
        for i, step in enumerate(spec["transforms"]):
            t = norm.apply(t, step, f"sources.{name}.transforms[{i}]")
        tables[name] = t
        source_facts[name] = sd.hf if sd.hf is not None else {"files": [f.to_lock() for f in sd.files], "rows": n,
                                                               **({"unread": sd.unread} if sd.unread else {})}

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
    if fmt in preference.OUTPUTS:
        preference.check_fields(tpl_spec, fields, file=file,
                                files=[f["path"] for s in source_facts.values() for f in s.get("files", [])])

    if recipe.data["train"]["method"] == "grpo":
        from ftc.compiler.rewards import check_rewards

        check_grpo_batch(recipe.data["train"], file=file)
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
        # the rendered text outputs (KTO's boolean label is the preference module's to check: FTC241/FTC604)
        texts = {k: tpl_spec[k] for k in OUTPUTS[fmt] if k in tpl_spec and k != "label"}
        render.check_rendered(table, texts, templates, all_rows=split == "train")
        splits[split] = table
        if table.num_rows == 0 and split == "eval":
            continue
        artifacts[split] = _write_parquet(table, cache, split, recipe.dir, write)
        samples[split] = [_sample(r, fmt) for r in table.slice(0, 2).to_pylist()]

    lock = {
        "lock_version": LOCK_VERSION,
        "ftc_version": __version__,
        "recipe": {"path": relpath(recipe.path, lock_path.parent), "sha256": recipe.sha256, "overrides": list(recipe.overrides)},
        "settings": recipe.data,
        "sources": source_facts,
        "stages": [s.to_lock() for s in norm.stages],
        "templates": {
            jp: {"name": tpl.name, "sha256": tpl.sha256, "text": tpl.source, "rendered_by": rendered_by.get(jp, "jinja")}
            for jp, tpl in templates.items()
        },
        "samples": samples,
        "artifacts": {"data": artifacts},
        "versions": _versions(),
        **({"adapter": adapter} if adapter else {}),
    }
    sequences = splits["train"].num_rows
    token_tables: dict[str, pa.Table] = {}
    if tokenize:
        tokens = _tokenize(recipe, splits, cache, write)
        lock["tokens"] = tokens["lock"]
        lock["artifacts"]["tokens"] = tokens["artifacts"]
        lock["stages"] += tokens["stages"]
        lock["versions"]["tokenizers"] = _version("tokenizers")
        lock["versions"]["transformers"] = _version("transformers")
        sequences = tokens["train_sequences"]
        token_tables = tokens["tables"]
        if write and write_lock:
            _write_reports(tokens, lock_path)
    from ftc.compiler.inputs import model_fingerprint  # the one fingerprint, checked again at run

    lock["model"] = model_fingerprint(tokenizer_location(recipe, "name"), recipe.data["model"]["revision"])
    lock["schedule"] = derive_schedule(recipe.data["train"], sequences, file=file)
    lock = seal(lock)
    if write and write_lock:
        write_lock_file(lock, lock_path)
    return Compiled(lock, lock_path, splits, token_tables)


def _templates(recipe: Recipe, spec: dict) -> dict[str, render.Template]:
    out = {}
    for key in OUTPUTS[spec["format"]]:
        if key not in spec:  # a preference prompt taken from the completions' turns
            continue
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
    table = norm.read(t, ", ".join(cols))
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


def _write_parquet(table: pa.Table, cache: Path, split: str, recipe_dir: Path, write: bool) -> dict:
    """Content-addressed Parquet: the file name carries its own sha256.

    DuckDB writes it (row groups encoded in parallel) from its own connection, which
    only ever sees this Arrow table, never a recipe's SQL. The bytes are the same on
    every run (tests/test_determinism.py) because both things they depend on are fixed
    here: the row order, since the query is a bare scan of one Arrow table and
    ``preserve_insertion_order`` (set, not left to a default) makes COPY write a scan's
    batches in their order (an ORDER BY would pin the same order at twice the cost);
    and the row groups, which DuckDB cuts at batch boundaries, so the table is handed
    over in batches of 2,048 rows whatever chunks it arrived in (DuckDB's result
    chunks vary from run to run).
    """
    import duckdb

    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(cache)
    tmp = cache / f".{split}-{os.getpid()}.parquet.tmp"
    con = duckdb.connect(":memory:", config={"threads": 2, "preserve_insertion_order": True})
    try:
        batch = 2048  # divides ROW_GROUP_SIZE
        batches = [b for i in range(0, table.num_rows, batch) for b in table.slice(i, batch).combine_chunks().to_batches()]
        con.register("artifact", pa.Table.from_batches(batches, table.schema))
        con.execute(f"COPY (SELECT * FROM artifact) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' "
                    "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 65536)").fetchall()
    finally:
        con.close()
    data = tmp.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    path = cache / f"{split}-{digest[:16]}.parquet"
    # An entry is trusted only when its bytes are these bytes: a corrupt one (same name, other
    # bytes) is replaced, else `ftc run` would refuse it again after the compile it hints at.
    if write and not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
        tmp.replace(path)
    else:
        tmp.unlink()
    return {
        "path": relpath(path, recipe_dir),  # the lock's one rule: relative to the recipe's folder
        "sha256": digest,
        "rows": table.num_rows,
        "schema": {f.name: str(f.type) for f in table.schema},
    }


def _sample(row: dict, fmt: str) -> dict:
    return {"row_id": row["row_id"], **{k: row[k] for k in OUTPUTS[fmt] if k in row}}


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _versions() -> dict:
    return {"ftc": __version__, **{pkg: _version(pkg) for pkg in VERSIONED}}


def tokenizer_location(recipe: Recipe, key: str = "tokenizer") -> str:
    """model.tokenizer (or another model key, such as "name") as a local folder (relative to the
    recipe) when one exists, else the hub id."""
    name = recipe.data["model"][key]
    local = recipe.resolve_path(name)
    return str(local) if local.is_dir() else name


def _adapter(recipe: Recipe, file: str) -> dict | None:
    """The lock's record of model.adapter (compiler/inputs.py), or None when the plan starts from the base."""
    from ftc.compiler.inputs import adapter_facts

    model = recipe.data["model"]
    if not model["adapter"]:
        return None
    local = recipe.resolve_path(model["name"])
    return adapter_facts(recipe.resolve_path(model["adapter"]), model, str(local) if local.is_dir() else model["name"], file=file)


def rebuild(plan: Plan) -> Compiled:
    """Recompile the plan's recipe (with the lock's own overrides) into the artifact cache, without
    writing the lock; refused when the recipe no longer gives the same plan."""
    from ftc.compiler.recipe import load_recipe

    recipe = load_recipe(plan.recipe_file, plan.lock["recipe"]["overrides"], base=plan.recipe_dir)
    again = compile_recipe(recipe, plan.lock_path, write=True, write_lock=False)
    if again.lock["plan_hash"] != plan.plan_hash:
        from ftc.errors import FtcError

        raise FtcError("FTC504", file=str(plan.recipe_file), what="recompiling it gives a different plan",
                       recipe=plan.recipe_file, lock=plan.lock_path)
    return again


def _tokenize(recipe: Recipe, splits: dict[str, pa.Table], cache: Path, write: bool) -> dict:
    """Tokenize every split, plan packing, write the token artifacts; the facts for the lock."""
    from ftc.compiler import pack
    from ftc.compiler.encode import tokenize
    from ftc.compiler.tokenizer import load_tokenizer

    model, train = recipe.data["model"], recipe.data["train"]
    tok, info = load_tokenizer(tokenizer_location(recipe), model["tokenizer_revision"], model["trust_remote_code"])
    fmt = recipe.data["template"]["format"]
    max_len = model["max_seq_length"]
    packing = train["packing"] and train["method"] == "sft"
    stats, arts, stages, lengths, pack_facts, tables, warnings = {}, {}, [], {}, {}, {}, []
    train_sequences = splits["train"].num_rows
    for split, table in splits.items():
        if table.num_rows == 0:
            continue
        if fmt in preference.OUTPUTS:  # prompt / chosen / rejected ids, as TRL's preference preparation makes them
            res = preference.tokenize_preference(table, fmt, tok, max_seq_length=max_len, overlong=train["overlong"],
                                                 has_prompt="prompt" in recipe.data["template"])
        else:
            res = tokenize(table, fmt, tok, max_seq_length=max_len, overlong=train["overlong"],
                           completion_only_loss=train["completion_only_loss"], assistant_only_loss=train["assistant_only_loss"])
        stages.append(Stage(f"tokenize ({split})", table.num_rows, res.table.num_rows, dict(res.dropped)).to_lock())
        warnings += [{"split": split, **w} for w in res.warnings]
        if res.table.num_rows == 0:
            from ftc.errors import FtcError

            raise FtcError("FTC302", file=str(recipe.path), stage=f"tokenize ({split})",
                           counts=", ".join(f"{k}: {v}" for k, v in res.dropped.items()))
        out = res.table
        lens = out.column("length").to_pylist()
        lengths[split] = lens
        if packing:
            bins = pack.pack_bfd(lens, max_len)
            order, bin_of = [], []
            for b, rows in enumerate(bins):
                order += rows
                bin_of += [b] * len(rows)
            out = out.take(pa.array(order, pa.int64())).append_column("pack", pa.array(bin_of, pa.int32()))
            pack_facts[split] = {"sequences": len(bins), "capacity": max_len,
                                 "efficiency": round(pack.packing_efficiency(lens, bins, max_len), 6)}
            if split == "train":
                train_sequences = len(bins)
        stats[split] = res.stats
        tables[split] = out
        arts[split] = _write_parquet(out, cache.parent / "tokens", split, recipe.dir, write)
    lock = {
        "tokenizer": {"name": model["tokenizer"], "revision": info.revision, "fingerprint": info.fingerprint,
                      "eos_token": info.eos_token, "eos_token_id": info.eos_token_id, "pad_token_id": info.pad_token_id,
                      "vocab_size": info.vocab_size},
        "max_seq_length": max_len,
        "overlong": train["overlong"],
        "stats": stats,
        "packing": pack_facts.get("train"),
        "packing_by_split": pack_facts or None,
    }
    if warnings:  # only when there are any, so plans without one keep their hash
        lock["warnings"] = warnings
    return {"lock": lock, "artifacts": arts, "stages": stages, "lengths": lengths, "info": info, "tables": tables,
            "train_sequences": train_sequences, "max_len": max_len}


def _write_reports(tokens: dict, lock_path: Path) -> None:
    """The length histogram and the data report, beside the lock."""
    from ftc.compiler.views import data_report_md, length_histogram_png

    stem = lock_path.with_suffix("")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    length_histogram_png(tokens["lengths"], f"{stem}.lengths.png", tokens["max_len"])
    dropped = {st["stage"][len("tokenize ("):-1]: st["dropped"] for st in tokens["stages"]}
    report = data_report_md(tokens["lock"]["stats"], tokens["info"], tokens["lock"]["packing"], dropped_by_split=dropped,
                            histogram=Path(f"{stem}.lengths.png").name, warnings=tokens["lock"].get("warnings"))
    Path(f"{stem}.report.md").write_text(report, encoding="utf-8")
