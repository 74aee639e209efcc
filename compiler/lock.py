"""plan.lock I/O and the `Plan` view: canonical JSON, the plan hash, and one rule for paths.

Canonical means sorted keys, 2-space indent, UTF-8 not escaped, a trailing newline,
no timestamps and no absolute paths: the same inputs give the same bytes, so a
reviewer's diff shows only real changes.

Paths, one rule: every path a lock holds is relative to the folder of its recipe, except
`recipe.path`, which says where that recipe lies as seen from the lock. `recipe.path` is
therefore where the lock is, not what the plan is, and the plan hash leaves it out: the
same recipe compiled to two folders is the same plan (and a run folder's copy of the lock,
re-anchored at the run folder, keeps the hash).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftc import __version__
from ftc.errors import FtcError

LOCK_VERSION = 1


def canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def plan_hash(lock: dict) -> str:
    """sha256 of the plan: the lock without its own hash and without `recipe.path` (its location)."""
    body = {k: v for k, v in lock.items() if k != "plan_hash"}
    if isinstance(body.get("recipe"), dict):
        body["recipe"] = {k: v for k, v in body["recipe"].items() if k != "path"}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def seal(lock: dict) -> dict:
    lock = {k: v for k, v in lock.items() if k != "plan_hash"}
    lock["plan_hash"] = plan_hash(lock)
    return lock


def write_lock(lock: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(canonical(seal(lock)), encoding="utf-8")
    tmp.replace(path)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())


def read_lock(path: str | Path) -> dict:
    """Read a lock, refusing one from a newer ftc or one whose hash does not match."""
    p = Path(path)
    try:
        lock = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise FtcError("FTC500", file=str(path), reason=e.strerror or str(e)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FtcError("FTC500", file=str(path), reason=f"not JSON ({e})") from None
    if isinstance(lock, dict) and "sources" in lock and "plan_hash" not in lock:
        raise FtcError("FTC508", file=str(path))  # FTC500's hint would compile over the recipe itself
    if not isinstance(lock, dict) or "plan_hash" not in lock or "ftc_version" not in lock:
        raise FtcError("FTC500", file=str(path), reason="not a plan.lock (no plan_hash / ftc_version)")
    version = lock.get("lock_version", 0)
    if type(version) is not int or version > LOCK_VERSION or _version_tuple(lock["ftc_version"]) > _version_tuple(__version__):
        raise FtcError("FTC501", file=str(path), path="lock_version", lock_version=version, version=lock["ftc_version"], ours=__version__,
                       reads=LOCK_VERSION)
    if plan_hash(lock) != lock["plan_hash"]:
        raise FtcError("FTC502", file=str(path))
    return lock


def relpath(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """`path` relative to `start`, with forward slashes (the lock's spelling on every OS)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start)).replace(os.sep, "/")


def _absolute(path: str | os.PathLike) -> Path:
    """Absolute and normalized, without resolving symlinks (a project may be reached through one)."""
    return Path(os.path.normpath(os.path.abspath(path)))


@dataclass(frozen=True)
class Plan:
    """A lock as the runtime reads it: the resolved settings and every path, absolute, by one rule.

    Everything `ftc run`, `infer`, `eval`, `export` and `score` need from a plan comes from
    here, so no command resolves a path against the current directory on its own.
    """

    lock: dict = field(repr=False)
    lock_path: Path  # absolute
    rebuilt: tuple[str, ...] = ()  # artifacts `ftc run` rebuilt from the sources ("tokens/train", ...)

    @classmethod
    def load(cls, lock_path: str | os.PathLike) -> "Plan":
        return cls(read_lock(lock_path), _absolute(lock_path))

    # -- what the plan is
    @property
    def plan_hash(self) -> str:
        return self.lock["plan_hash"]

    @property
    def name(self) -> str:
        return self.lock["settings"]["name"]

    @property
    def settings(self) -> dict:
        return self.lock["settings"]

    @property
    def method(self) -> str:
        return self.settings["train"]["method"]

    @property
    def schedule(self) -> dict:
        return self.lock["schedule"]

    # -- where things are
    @property
    def recipe_file(self) -> Path:
        return _absolute(self.lock_path.parent / self.lock["recipe"]["path"])

    @property
    def recipe_dir(self) -> Path:
        return self.recipe_file.parent

    def path(self, value: str) -> Path:
        """A path of the lock (relative to the recipe's folder) as an absolute path."""
        return _absolute(self.recipe_dir / value)

    def location(self, value: str) -> str:
        """A model or tokenizer value: the local folder (absolute) when there is one, else the hub id as written."""
        local = self.path(value)
        return str(local) if local.is_dir() else value

    @property
    def model_location(self) -> str:
        return self.location(self.settings["model"]["name"])

    @property
    def run_model(self) -> dict:
        """The resolved `model` section as a run loads it: `name` a local folder (absolute) or the hub id;
        `adapter` (the earlier run it starts from) an absolute folder, with `adapter_files` the lock's
        fingerprints of its files, so whatever loads it later (`ftc infer` from run.json) checks them too."""
        model = {**self.settings["model"], "name": self.model_location}
        if model.get("adapter"):  # .get: a lock of an ftc before model.adapter has no such key
            model.update(adapter=str(self.path(model["adapter"])), adapter_files=self.lock["adapter"]["files"])
        return model

    @property
    def tokenizer_location(self) -> str:
        return self.location(self.settings["model"]["tokenizer"])

    def artifact(self, kind: str, split: str) -> Path | None:
        """The artifact file of `kind` ("data" | "tokens") for `split`, or None when the plan has none."""
        art = self.lock["artifacts"].get(kind, {}).get(split)
        return self.path(art["path"]) if art else None

    def artifacts(self) -> list[tuple[str, str, dict]]:
        """(kind, split, lock entry) of every artifact."""
        return [(kind, split, art) for kind, arts in self.lock["artifacts"].items() for split, art in arts.items()]

    def anchored_at(self, lock_path: str | os.PathLike) -> dict:
        """The lock as it must be written at `lock_path` (e.g. a run folder's copy): the same plan, same
        hash, with `recipe.path` re-anchored so every path still resolves from there."""
        lock = json.loads(json.dumps(self.lock))
        lock["recipe"]["path"] = relpath(self.recipe_file, _absolute(lock_path).parent)
        return seal(lock)
