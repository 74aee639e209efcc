"""What a plan was compiled from, checked again: the recipe, the source files (HF `data_files`
included), the tokenizer and python reward files.

`ftc run` asks this before anything trains, so drift is refused with the file named; it is the
compiler's public contract for "are my inputs still the ones the lock fingerprints", and the
runtime never re-derives a fingerprint on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ftc.compiler.lock import Plan
from ftc.errors import FtcError


@dataclass(frozen=True)
class Drift:
    """One input that is not what the lock recorded: the error rule that says so, and its fields."""

    code: str  # FTC504 source, FTC505 recipe not found, FTC506 tokenizer, FTC507 python reward
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
    t = tokenizer_drift(plan)
    return found + ([t] if t else [])
