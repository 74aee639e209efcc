"""What a plan was compiled from, checked again: the recipe, the source files (HF `data_files`
included), the tokenizer, python reward files and the adapter a run starts from (`model.adapter`).

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

    code: str  # FTC504 source, FTC505 recipe not found, FTC506 tokenizer, FTC507 python reward, FTC520 adapter
    file: str | None  # what changed, as a path (or a hub id)
    fields: dict = field(default_factory=dict)
    missing: bool = False  # absent, not changed: harmless while the artifacts are intact, fatal for a rebuild

    def error(self, plan: Plan) -> FtcError:
        return FtcError(self.code, file=self.file, **{"recipe": plan.recipe_file, "lock": plan.lock_path, **self.fields})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


def reward_drift(plan: Plan) -> list[Drift]:
    """python reward files against the sha256 the lock holds (the check is the rewards module's own)."""
    from ftc.compiler.rewards import check_drift

    try:
        check_drift(plan.settings["train"].get("grpo", {}).get("rewards", []), plan.recipe_dir)
    except FtcError as err:
        return [Drift(err.code, err.file or str(plan.recipe_file), dict(err.fields))]
    return []


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
