"""Verify a plan before anything trains: the lock, its recipe, its sources, its artifacts.

Nothing trains on data the lock does not describe. A missing artifact is rebuilt from
the sources when they still match their fingerprints (the lock is enough to rebuild
the cache); a changed source is refused with the file named and the fix spelled out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ftc.compiler.lock import read_lock
from ftc.errors import FtcError


@dataclass(frozen=True)
class Plan:
    lock: dict
    lock_path: Path
    recipe_dir: Path
    artifacts: dict[str, dict[str, Path]]  # kind ("data" | "tokens") -> split -> file
    rebuilt: tuple[str, ...]  # artifacts that had to be rebuilt from the sources

    @property
    def name(self) -> str:
        return self.lock["settings"]["name"]

    @property
    def plan_hash(self) -> str:
        return self.lock["plan_hash"]

    def local(self, value: str) -> str:
        """A recipe path value (model or tokenizer) as a local folder if it is one, else as given (hub id)."""
        p = self.recipe_dir / value
        return str(p) if p.is_dir() else value


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify(lock_path: str | Path) -> Plan:
    lock_path = Path(lock_path)
    lock = read_lock(lock_path)
    recipe_file = lock_path.parent / lock["recipe"]["path"]
    recipe_dir = recipe_file.parent
    if recipe_file.exists() and sha256_file(recipe_file) != lock["recipe"]["sha256"]:
        raise FtcError("FTC504", file=str(recipe_file), what="the recipe was edited", recipe=recipe_file, lock=lock_path)

    missing = [(kind, split, art) for kind, arts in lock["artifacts"].items() for split, art in arts.items()
               if not _intact(lock_path.parent / art["path"], art["sha256"])]
    sources_ok = _check_sources(lock, recipe_dir, recipe_file, lock_path, needed=bool(missing))
    rebuilt: list[str] = []
    if missing:
        if not sources_ok or not recipe_file.exists():
            kind, split, art = missing[0]
            raise FtcError("FTC503", file=str(lock_path.parent / art["path"]), recipe=lock["recipe"]["path"])
        _rebuild(lock, lock_path, recipe_file)
        for kind, split, art in missing:
            if not _intact(lock_path.parent / art["path"], art["sha256"]):
                raise FtcError("FTC503", file=str(lock_path.parent / art["path"]), recipe=lock["recipe"]["path"])
            rebuilt.append(f"{kind}/{split}")
    rewards = lock["settings"]["train"].get("grpo", {}).get("rewards", [])
    if any(r.get("kind") == "python" for r in rewards):
        from ftc.compiler.rewards import check_drift

        check_drift(rewards, recipe_dir)
    arts = {kind: {split: lock_path.parent / a["path"] for split, a in v.items()} for kind, v in lock["artifacts"].items()}
    return Plan(lock, lock_path, recipe_dir, arts, tuple(rebuilt))


def _intact(path: Path, sha: str) -> bool:
    return path.exists() and sha256_file(path) == sha


def _check_sources(lock: dict, recipe_dir: Path, recipe_file: Path, lock_path: Path, needed: bool) -> bool:
    """Refuse changed sources; report whether every source is present (so a rebuild can work)."""
    all_present = True
    for name, facts in lock["sources"].items():
        for f in facts.get("files", []):
            p = recipe_dir / f["path"]
            if not p.exists():
                all_present = False
                if needed:
                    raise FtcError("FTC504", file=str(p), what="the file is missing and the artifacts must be rebuilt",
                                   recipe=recipe_file, lock=lock_path)
                continue
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise FtcError("FTC504", file=str(p), what="its sha256 differs from the lock's", recipe=recipe_file, lock=lock_path)
    return all_present


def _rebuild(lock: dict, lock_path: Path, recipe_file: Path) -> None:
    """Recompile into the cache with the lock's own overrides; the new plan must be the same plan."""
    import sys

    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe

    print(f"ftc: artifacts missing from the cache; rebuilding them from {recipe_file}", file=sys.stderr)
    recipe = load_recipe(recipe_file, _overrides_from_recipe_dir(lock, recipe_file))
    again = compile_recipe(recipe, lock_path, write=True, write_lock=False)
    if again.lock["plan_hash"] != lock["plan_hash"]:
        raise FtcError("FTC504", file=str(recipe_file), what="recompiling it gives a different plan",
                       recipe=recipe_file, lock=lock_path)


def _overrides_from_recipe_dir(lock: dict, recipe_file: Path) -> list[str]:
    """Recorded overrides hold path values relative to the recipe; --set reads them relative to the
    current directory, so turn them back into paths that resolve from here."""
    import os

    from ftc.compiler.recipe import _is_path_key

    out = []
    for o in lock["recipe"]["overrides"]:
        key, _, value = o.partition("=")
        if _is_path_key(key.split(".")) and not os.path.isabs(value) and (recipe_file.parent / value).exists():
            value = os.path.relpath(recipe_file.parent / value)
        out.append(f"{key}={value}")
    return out
