"""plan.lock I/O: canonical JSON, the plan hash, and reading with checks.

Canonical means sorted keys, 2-space indent, UTF-8 not escaped, a trailing newline,
no timestamps and no absolute paths: the same inputs give the same bytes, so a
reviewer's diff shows only real changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftc import __version__
from ftc.errors import FtcError

LOCK_VERSION = 1


def canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def plan_hash(lock: dict) -> str:
    body = {k: v for k, v in lock.items() if k != "plan_hash"}
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
    if not isinstance(lock, dict) or "plan_hash" not in lock or "ftc_version" not in lock:
        raise FtcError("FTC500", file=str(path), reason="not a plan.lock (no plan_hash / ftc_version)")
    if lock.get("lock_version", 0) > LOCK_VERSION or _version_tuple(lock["ftc_version"]) > _version_tuple(__version__):
        raise FtcError("FTC501", file=str(path), version=lock["ftc_version"], ours=__version__)
    if plan_hash(lock) != lock["plan_hash"]:
        raise FtcError("FTC502", file=str(path))
    return lock
