"""The compile pipeline: recipe -> sources -> DuckDB steps -> split -> render -> artifacts -> lock.

Pure steps live in their own modules; this file only wires them in order and
collects the facts that go into the lock.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pyarrow as pa

from ftc import __version__
from ftc.compiler import cache, preference, render
from ftc.compiler.artifacts import Spill, write_parquet
from ftc.compiler.inputs import model_fingerprint
from ftc.compiler.lock import LOCK_VERSION, Plan, relpath, seal
from ftc.compiler.lock import write_lock as write_lock_file
from ftc.compiler.normalize import Normalizer, Stage
from ftc.compiler.outputs import check_writable, remove_stale_tmp
from ftc.compiler.recipe import Recipe
from ftc.compiler.render_split import OUTPUTS, render_split
from ftc.compiler.schedule import check_grpo_batch, derive_schedule
from ftc.compiler.progress import Clock, Progress
from ftc.compiler.sources import load_source
from ftc.compiler.tokens import tokenize_splits, tokenizer_location, write_reports
from ftc.errors import FtcError

VERSIONED = ("duckdb", "pyarrow", "jinja2", "jsonschema")


@dataclass
class Compiled:
    lock: dict
    lock_path: Path
    splits: Mapping[str, pa.Table]
    tokens: Mapping[str, pa.Table]  # empty when compiled with tokenize=False
    clock: Clock = field(default_factory=Clock)  # seconds per stage, and the stages a recompile reused


def compile_recipe(recipe: Recipe, lock_path: Path, *, progress: bool = False, write: bool = True, tokenize: bool = True,
                   write_lock: bool = True) -> Compiled:
    """Compile; ``write`` puts artifacts in the cache, ``write_lock`` also writes the lock and its reports.

    With ``write``, what the content fingerprints say is unchanged is taken from the cache
    (``cache.py``): the whole data-and-tokens half, or only the normalized rows.
    """
    if write:  # before any reading: a compile that cannot write its output fails first, not last
        check_writable(recipe, Path(lock_path) if write_lock else None)
        for sub in ("data", "tokens"):  # a killed compile's half-written files go, even when nothing is rewritten
            remove_stale_tmp(cache.cache_root(recipe) / sub)
    clock = Clock(progress)
    versions = _versions(tokenize)
    head = _lock_head(recipe, lock_path, versions)  # before any source is read: model.adapter is refused here (FTC170-172)
    store = cache.Cache(cache.cache_root(recipe)) if write else None
    with clock.stage("fingerprint"):
        norm_key = cache.normalized_key(recipe, versions) if store else None
        try:
            key = cache.plan_key(recipe, norm_key, _templates(recipe, recipe.data["template"]), versions, tokenize,
                                 tokenizer_location(recipe))
        except FtcError:  # the cold compile reports it where it always has
            key = None
        entry = store.get("plan", key) if store else None
    if entry is not None:
        return _reused(recipe, lock_path, store, entry, head, clock, tokenize=tokenize, write_lock=write_lock)
    with tempfile.TemporaryDirectory(prefix="ftc-compile-") as tmp:
        return _compile_cold(recipe, lock_path, store, key, norm_key, head, clock, Path(tmp), write=write,
                             tokenize=tokenize, write_lock=write_lock)


def _compile_cold(recipe: Recipe, lock_path: Path, store: cache.Cache | None, key: str | None, norm_key: str | None,
                  head: dict, clock: Clock, tmp: Path, *, write: bool, tokenize: bool, write_lock: bool) -> Compiled:
    """Every stage the cache could not give back, in order; ``tmp`` holds the rows between stages."""
    file = str(recipe.path)
    norm = Normalizer(file, temp_dir=tmp / "duckdb")
    t, source_facts = _normalized(recipe, norm, store, norm_key, clock)

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
    _check_grpo(recipe, fields)


    # 4. split, deterministic from a hash of key fields
    default_key = sorted({v for tpl in templates.values() for v in render.variables(tpl)} & fields) or sorted(fields)
    with clock.stage("split"):
        train_t, eval_t = norm.split(t, recipe.data["split"], default_key)

    # 5. render and write each split, batch by batch through a spill file
    splits, artifacts, samples, rendered_by = {}, {}, {}, {}
    cache_dir = cache.cache_root(recipe) / "data"
    for split, st in (("train", train_t), ("eval", eval_t)):
        with clock.stage("render"):
            spill = render_split(norm, st, tpl_spec, templates, types, rendered_by, Spill(tmp / f"{split}.arrow"),
                                  clock.progress(f"render ({split})", norm.count(st)), all_rows=split == "train")
        splits[split] = spill
        if spill.num_rows == 0 and split == "eval":
            continue
        progress = clock.progress(f"write data ({split})", spill.num_rows)
        with clock.stage("write"):
            artifacts[split] = write_parquet(_counted(spill.tables(), progress), cache_dir, split, recipe.dir, write,
                                             schema=spill.schema)
        progress.close()
        samples[split] = [_sample(r, fmt) for r in spill.head.to_pylist()]
    norm.con.close()  # every row is in a spill now: DuckDB's memory (up to its MEMORY_LIMIT) goes before tokenizing

    lock = head
    lock.update({
        "sources": source_facts,
        "stages": [s.to_lock() for s in norm.stages],
        "templates": {
            jp: {"name": tpl.name, "sha256": tpl.sha256, "text": tpl.source, "rendered_by": rendered_by.get(jp, "jinja")}
            for jp, tpl in templates.items()
        },
        "samples": samples,
        "artifacts": {"data": artifacts},
    })
    sequences = splits["train"].num_rows
    token_tables: dict[str, pa.Table] = {}
    tokens = None
    if tokenize:
        tokens = tokenize_splits(recipe, splits, cache_dir.parent / "tokens", write, clock)
        lock["tokens"] = tokens["lock"]
        lock["artifacts"]["tokens"] = tokens["artifacts"]
        lock["stages"] += tokens["stages"]
        sequences = tokens["train_sequences"]
        token_tables = tokens["tables"]
    png = None
    if tokens is not None and write and write_lock:
        png = write_reports(lock, tokens["info"], lock_path, lengths=tokens["lengths"])
    if store is not None:
        cache.keep_plan(store, key, lock, recipe.dir, normalized=norm_key, train_sequences=sequences, fields=sorted(fields),
                        report={"info": asdict(tokens["info"])} if tokens is not None else None, png=png)
    lock["schedule"] = derive_schedule(recipe.data["train"], sequences, file=file)
    lock = seal(lock)
    if write and write_lock:
        write_lock_file(lock, lock_path)
    if write:  # the spills go with tmp: the tables are the artifacts, read when asked for
        tables = cache.lazy(recipe.dir, lock["artifacts"]["data"], ("train", "eval"))
    else:
        tables = {split: spill.read_all() for split, spill in splits.items()}
    return Compiled(lock, lock_path, tables, token_tables, clock)


def _counted(parts: Iterable[pa.Table], progress: Progress) -> Iterator[pa.Table]:
    for t in parts:
        yield t
        progress.update(t.num_rows)


def _lock_head(recipe: Recipe, lock_path: Path, versions: dict) -> dict:
    """The lock's values that come from the recipe and the installed packages, never from the cache."""
    return {
        "lock_version": LOCK_VERSION,
        "ftc_version": __version__,
        "recipe": {"path": relpath(recipe.path, lock_path.parent), "sha256": recipe.sha256, "overrides": list(recipe.overrides)},
        "settings": recipe.data,
        "versions": dict(versions),
        # the one fingerprint of the base model, checked again at run (never from the cache: not a data input)
        "model": model_fingerprint(tokenizer_location(recipe, "name"), recipe.data["model"]["revision"]),
        # the run this plan starts from (model.adapter), fingerprinted here and at run, like the model
        **({"adapter": _adapter(recipe)} if recipe.data["model"]["adapter"] else {}),
    }


def _check_grpo(recipe: Recipe, fields: set[str]) -> None:
    """GRPO's batch rule and its rewards, checked against the fields (which resolves them into the settings)."""
    if recipe.data["train"]["method"] != "grpo":
        return
    from ftc.compiler.reward_check import check_rewards

    file = str(recipe.path)
    check_grpo_batch(recipe.data["train"], file=file)
    grpo = recipe.data["train"]["grpo"]
    grpo["rewards"] = check_rewards(grpo["rewards"], fields=fields, allow_python=grpo["allow_python"],
                                    recipe_dir=recipe.dir, file=file)


def _normalized(recipe: Recipe, norm: Normalizer, store: cache.Cache | None, key: str | None,
                clock: Clock) -> tuple[str, dict]:
    """Steps 1 and 2 (sources with their transforms, the mixture, the recipe-wide transforms), or
    their result from the cache; the table's name in ``norm`` and the sources' lock facts."""
    entry = store.get(cache.NORMALIZED, key) if store else None
    if entry is not None:
        with clock.stage("read"):
            t = cache.restore_normalized(norm, store, entry)
        if t is not None:
            norm.stages = [Stage(**s) for s in entry["stages"]]
            clock.reused += ["read", "normalize"]
            return t, entry["sources"]
    # 1. sources, each with its own transforms
    source_facts, tables, ord_base = {}, {}, 0
    for name, spec in recipe.data["sources"].items():
        with clock.stage("read"):  # into a DuckDB table of norm, batch by batch
            sd = load_source(recipe, name, spec, norm, ord_base, progress=clock.show)
        n = sd.rows
        malformed = sum(f.malformed_rows for f in sd.files)
        norm.stages.append(Stage(f"sources.{name}: read", n + malformed, n, {"malformed row (parser skipped it)": malformed} if malformed else {}))
        ord_base += n
        with clock.stage("normalize"):
            t = sd.table
            for i, step in enumerate(spec["transforms"]):
                t = norm.apply(t, step, f"sources.{name}.transforms[{i}]")
        tables[name] = t
        source_facts[name] = sd.hf if sd.hf is not None else {"files": [f.to_lock() for f in sd.files], "rows": n,
                                                               **({"unread": sd.unread} if sd.unread else {})}

    # 2. mixture, then the recipe-wide transforms
    with clock.stage("normalize"):
        t = norm.mix(tables, recipe.data["mix"]) if len(tables) > 1 or recipe.data["mix"] else next(iter(tables.values()))
        for i, step in enumerate(recipe.data["transforms"]):
            t = norm.apply(t, step, f"transforms[{i}]")
    if store is not None and key is not None:
        with clock.stage("normalize"):
            t = cache.keep_normalized(norm, store, key, t, [s.to_lock() for s in norm.stages], source_facts)
    return t, source_facts


def _reused(recipe: Recipe, lock_path: Path, store: cache.Cache, entry: dict, head: dict, clock: Clock, *,
            tokenize: bool, write_lock: bool) -> Compiled:
    """The lock from a plan entry: the cold compile's values, the recipe's settings, a fresh schedule."""
    _check_grpo(recipe, set(entry["fields"]))
    lock = head
    lock.update(cache.plan_lock_parts(store, entry, recipe.dir))
    clock.reused += ["read", "normalize", "split", "render", "write"] + (["tokenize", "pack"] if tokenize else [])
    if tokenize and write_lock:
        from ftc.compiler.tokenizer import TokenizerInfo
        png = entry["report"].get("png")
        write_reports(lock, TokenizerInfo(**entry["report"]["info"]), lock_path,
                       png=store.root / png["path"] if png else None,
                       lengths=None if png else {s: cache.lazy(recipe.dir, lock["artifacts"]["tokens"], (s,))[s]
                                                 .column("length").to_pylist() for s in lock["artifacts"]["tokens"]})
    lock["schedule"] = derive_schedule(recipe.data["train"], entry["train_sequences"], file=str(recipe.path))
    lock = seal(lock)
    if write_lock:
        write_lock_file(lock, lock_path)
    arts = lock["artifacts"]
    return Compiled(lock, lock_path, cache.lazy(recipe.dir, arts["data"], ("train", "eval")),
                    cache.lazy(recipe.dir, arts["tokens"], tuple(arts["tokens"])) if tokenize else {}, clock)


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


def _sample(row: dict, fmt: str) -> dict:
    return {"row_id": row["row_id"], **{k: row[k] for k in OUTPUTS[fmt] if k in row}}


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _versions(tokenize: bool) -> dict:
    """The lock's package versions: the tokenizer's packages only when the plan has tokens."""
    out = {"ftc": __version__, **{pkg: _version(pkg) for pkg in VERSIONED}}
    if tokenize:
        out.update({pkg: _version(pkg) for pkg in ("tokenizers", "transformers")})
    return out


def _adapter(recipe: Recipe) -> dict | None:
    """The lock's record of model.adapter (compiler/inputs.py), or None when the plan starts from the base."""
    from ftc.compiler.inputs import adapter_facts

    model = recipe.data["model"]
    if not model["adapter"]:
        return None
    local = recipe.resolve_path(model["name"])
    return adapter_facts(recipe.resolve_path(model["adapter"]), model, str(local) if local.is_dir() else model["name"],
                         file=str(recipe.path))


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
