"""What a plan was compiled from, checked again: the recipe, the source files (HF `data_files`
included), the settings the recipe resolves to, the base model, the tokenizer, python reward files
and the adapter a run starts from (`model.adapter`).

`ftc run` asks this before anything trains, so drift is refused with the file named; it is the
compiler's public contract for "are my inputs still the ones the lock fingerprints", and the
runtime never re-derives a fingerprint on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftc.compiler.lock import Plan
from ftc.errors import FtcError


@dataclass(frozen=True)
class Drift:
    """One input that is not what the lock recorded: the error rule that says so, and its fields."""

    code: str  # FTC504 source, FTC505 recipe not found, FTC506 tokenizer, FTC507 python reward, FTC509 settings, FTC510 model, FTC520 adapter
    file: str | None  # what changed, as a path (or a hub id)
    fields: dict = field(default_factory=dict)
    missing: bool = False  # absent, not changed: harmless while the artifacts are intact, fatal for a rebuild

    def error(self, plan: Plan) -> FtcError:
        return FtcError(self.code, file=self.file, **{"recipe": plan.recipe_file, "lock": plan.lock_path, **self.fields})


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in blocks (a token artifact can be gigabytes): the one file hash of the
    lock, its drift checks and the artifact cache."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_SOURCE_HASHES: dict[tuple, str] = {}  # (device, inode, size, mtime_ns, ctime_ns) -> sha256 of a source file
_SOURCE_HASHES_MAX = 65_536  # entries kept (a few MiB); past it the memo starts again


def source_sha256(path: Path) -> str:
    """sha256 of a source file, read once per compile: the cache key (``cache.normalized_key``)
    and the file's facts (``sources.read_path_file``) both need it, and a 1 GB corpus took
    seconds a pass. Remembered under the file's identity and change times (a write to the file
    changes its ctime, which nothing can set back), and only when they did not move while it
    was read; the drift checks and the artifact cache hash afresh (``sha256_file``)."""
    def identity() -> tuple:
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    before = identity()
    known = _SOURCE_HASHES.get(before)
    if known is not None:
        return known
    digest = sha256_file(path)
    if identity() == before:
        if len(_SOURCE_HASHES) >= _SOURCE_HASHES_MAX:
            _SOURCE_HASHES.clear()
        _SOURCE_HASHES[before] = digest
    return digest


def recipe_drift(plan: Plan) -> Drift | None:
    file = plan.recipe_file
    if not file.exists():
        return Drift("FTC505", str(file), {"recipe_rel": plan.lock["recipe"]["path"]}, missing=True)
    if sha256_file(file) != plan.lock["recipe"]["sha256"]:
        return Drift("FTC504", str(file), {"what": "the recipe was edited"})
    return None


def source_drift(plan: Plan) -> list[Drift]:
    """Every source file and HF `data_files` entry against its recorded size and sha256."""
    out = []
    for facts in plan.lock["sources"].values():
        entries = facts.get("files") or facts.get("data_files") or []
        for f in entries:
            p = plan.path(f["path"])
            if not p.exists():
                out.append(Drift("FTC504", str(p), {"what": "the file is missing and the artifacts must be rebuilt"},
                                 missing=True))
            elif ("bytes" in f and p.stat().st_size != f["bytes"]) or sha256_file(p) != f["sha256"]:
                out.append(Drift("FTC504", str(p), {"what": "its sha256 differs from the lock's"}))
    return out


def tokenizer_drift(plan: Plan) -> Drift | None:
    """The tokenizer's files and chat template against the lock's fingerprint (plans with tokens only)."""
    recorded = plan.lock.get("tokens", {}).get("tokenizer")
    if not recorded:
        return None
    from ftc.compiler.tokenizer import fingerprint

    location = plan.tokenizer_location
    now = fingerprint(location, recorded.get("revision"))
    if now != recorded["fingerprint"]:
        changed = sorted(k for k in set(now) | set(recorded["fingerprint"]) if now.get(k) != recorded["fingerprint"].get(k))
        return Drift("FTC506", location, {"changed": ", ".join(changed)})
    return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def model_fingerprint(location: str, revision: str | None) -> dict:
    """What identifies the base model behind model.name, for the lock.

    A local folder: the sha256 of config.json and of any weight index (*.index.json), and the
    name and size of every weight file (hashing gigabytes of weights at every compile and run
    would cost minutes; another checkpoint with the same names and sizes is not a drift this
    catches). A hub id: the revision asked for, and the commit it resolved to in the local
    Hugging Face cache when it is there (looked up, never downloaded)."""
    folder = Path(location)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        hashed = {p.name: sha256_file(p) for p in files if p.name == "config.json" or p.name.endswith(".index.json")}
        weights = {p.name: p.stat().st_size for p in files if p.name.endswith(WEIGHT_SUFFIXES)}
        return {"kind": "local", "config.json": hashed.pop("config.json", None), "indexes": hashed, "weights": weights}
    return {"kind": "hub", "revision": revision, "commit": _cached_commit(location, revision)}


def _cached_commit(repo: str, revision: str | None) -> str | None:
    """The commit a hub id's revision points to in the local cache, or None when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "config.json", revision=revision or "main")
    except Exception:  # not a valid hub id (a folder that is not there), or no huggingface_hub
        return None
    parts = Path(hit).parts if isinstance(hit, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def model_drift(plan: Plan) -> Drift | None:
    """The base model against the lock's fingerprint (locks that record one). A local folder that is
    gone is a drift, not a harmless absence: its relative path would then be read as a hub id."""
    recorded = plan.lock.get("model")
    if not recorded:
        return None
    name = plan.settings["model"]["name"]
    local = plan.path(name)
    if recorded["kind"] == "local" and not local.is_dir():
        return Drift("FTC510", str(local), {"changed": "the folder is missing"})
    if recorded["kind"] == "hub" and recorded["commit"] is None:
        # compile saw neither a folder nor a cached hub snapshot (a plan compiled on a CPU box for
        # a model that lives only on the training machine): nothing was fingerprinted to compare
        return None
    now = model_fingerprint(plan.model_location, plan.settings["model"]["revision"])
    if recorded["kind"] == "hub" and now["kind"] == "hub" and now["commit"] is None:
        now["commit"] = recorded["commit"]  # not cached here (or not at compile): nothing to compare
    changed = differing(recorded, now)
    if changed:
        return Drift("FTC510", plan.model_location, {"changed": ", ".join(changed) + " changed"})
    return None


def reward_drift(plan: Plan) -> list[Drift]:
    """python reward files against the sha256 the lock holds (the check is the rewards module's own)."""
    from ftc.compiler.rewards import check_drift

    try:
        check_drift(plan.settings["train"].get("grpo", {}).get("rewards", []), plan.recipe_dir)
    except FtcError as err:
        return [Drift(err.code, err.file or str(plan.recipe_file), dict(err.fields))]
    return []


def settings_drift(plan: Plan) -> Drift | None:
    """The lock's resolved settings against what its recipe, with the lock's recorded overrides,
    resolves to now (asked once the recipe's sha256 matched).

    plan_hash is only a checksum: a lock edited by hand and re-hashed (learning_rate 0.05 where
    the recipe says 0.005) passes it. The settings are recomputed here by the resolver itself,
    so the lock trains only what its recipe says; the schedule is derived again from them. GRPO rewards are resolved by the compiler
    against the data's fields; they are resolved again the same way, over the data artifact's
    columns."""
    from ftc.compiler.recipe import load_recipe

    recipe = load_recipe(plan.recipe_file, plan.lock["recipe"]["overrides"], base=plan.recipe_dir)
    expected = recipe.data
    grpo = expected["train"].get("grpo")
    if grpo is not None:
        from ftc.compiler.reward_check import check_rewards

        columns = plan.lock["artifacts"]["data"]["train"]["schema"]
        try:
            grpo["rewards"] = check_rewards(grpo["rewards"], fields=set(columns) - {"row_id"},
                                            allow_python=grpo["allow_python"], recipe_dir=plan.recipe_dir,
                                            file=str(plan.recipe_file))
        except FtcError as err:  # a reward file that is gone or changed: reward_drift names it
            if err.code != "FTC507" and not err.code.startswith("FTC13"):
                raise
            grpo["rewards"] = plan.settings["train"].get("grpo", {}).get("rewards")
    keys = differing(plan.settings, json.loads(json.dumps(expected)))  # as the lock spells it: lists, not tuples
    if not keys:  # the schedule (warmup, steps) from those settings, derived again by the schedule's own code
        from ftc.compiler.schedule import derive_schedule

        again = derive_schedule(plan.settings["train"], plan.schedule["train_items"], file=str(plan.recipe_file))
        keys = differing(plan.schedule, json.loads(json.dumps(again)), "schedule.")
    if keys:
        return Drift("FTC509", str(plan.lock_path), {"keys": ", ".join(keys[:8]) + (f" (and {len(keys) - 8} more)" if len(keys) > 8 else "")})
    return None


def differing(a, b, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (a whole list where lists differ; 1 and 1.0 differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += differing(a[key], b[key], f"{prefix}{key}.") if key in a and key in b else [f"{prefix}{key}"]
        return out
    return [] if type(a) is type(b) and a == b else [prefix.rstrip(".") or "(all)"]


def drift(plan: Plan) -> list[Drift]:
    """Every input of the plan that is not what the lock recorded (empty: all match). A missing
    input is listed with `missing=True`: the caller decides whether it needs it (a rebuild does;
    a run on intact, content-addressed artifacts does not: a GPU box may hold the lock and the
    artifacts without the raw data)."""
    found = [d for d in (recipe_drift(plan),) if d]
    if found:
        return found  # without the recipe's folder nothing else can be found
    found += source_drift(plan)
    found += reward_drift(plan)
    found += [d for d in (settings_drift(plan), model_drift(plan)) if d]
    a = adapter_drift(plan)
    t = tokenizer_drift(plan)
    return found + ([a] if a else []) + ([t] if t else [])


# ---------------------------------------------------------------- model.adapter: the run a plan starts from

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_facts(folder: Path, model: dict, model_location: str, *, file: str) -> dict:
    """The lock's record of `model.adapter` (a run folder of `ftc run`, or a PEFT adapter folder):
    its files with sizes and sha256, its LoRA shape and the base model it was trained on. Refused
    here, before anything is compiled further: a folder without an adapter (FTC170), an adapter of
    another base model (FTC171), a 4-bit plan (FTC172: merging into nf4 weights rounds the update away).
    `model_location` is the plan's base model as a run would load it (a local folder, or the hub id)."""
    config_file = folder / "adapter_config.json"
    weights = next((folder / w for w in ADAPTER_WEIGHTS if (folder / w).is_file()), None)
    if not config_file.is_file() or weights is None:
        raise FtcError("FTC170", file=file, path="model.adapter", folder=str(folder),
                       missing=", ".join(n for n, ok in (("adapter_config.json", config_file.is_file()),
                                                        ("adapter_model.safetensors", weights is not None)) if not ok))
    if model["load_in_4bit"]:
        raise FtcError("FTC172", file=file, path="model.load_in_4bit")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    run_file = folder / "run.json"
    if run_file.is_file():  # a run folder: the run's own record of its base is exact
        theirs = json.loads(run_file.read_text(encoding="utf-8"))["settings"]["model"]
        kind, base, init = "run", theirs["name"], theirs["init"]
    else:  # a PEFT folder: what PEFT wrote (empty for a model built from a config)
        kind, base, init = "peft", config.get("base_model_name_or_path") or "", None
    if (base and not _same_model(base, model_location)) or (init is not None and init != model["init"]):
        raise FtcError("FTC171", file=file, path="model.adapter", folder=str(folder), base=base,
                       init=f" (init {init})" if init else "", ours=model_location, our_init=model["init"])
    files = [config_file, weights]
    return {
        "kind": kind,  # (the base model is not recorded: a run folder names it by an absolute path)
        "lora": {k: config.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora")},
        "files": [{"path": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files],
    }


def adapter_changes(folder: Path, files: list[dict]) -> list[str]:
    """The adapter files (of a lock's `adapter.files`) that are missing or differ, as names."""
    out = []
    for f in files:
        p = Path(folder) / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            out.append(f["path"] + ("" if p.is_file() else " (missing)"))
    return out


def adapter_drift(plan: Plan) -> Drift | None:
    """`model.adapter` against the lock's fingerprint. Missing counts as changed: unlike a source, no
    artifact stands in for it (the run merges it into the base weights)."""
    recorded = plan.lock.get("adapter")
    if not recorded:
        return None
    folder = plan.path(plan.settings["model"]["adapter"])
    changed = adapter_changes(folder, recorded["files"])
    return Drift("FTC520", str(folder), {"changed": ", ".join(changed)}) if changed else None


def _same_model(a: str, b: str) -> bool:
    """Two spellings of one base model: equal, or the same local folder."""
    return a == b or (os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b))
