"""Where a compile writes: the lock (-o) and the artifact cache, checked before any source is read.

A long compile that cannot write its output should fail first, in words, not last with a
traceback; and a compile killed mid-write must not leave its temporary files behind forever.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ftc.errors import FtcError

if TYPE_CHECKING:
    from ftc.compiler.recipe import Recipe


def check_writable(recipe: Recipe, lock_path: Path | None) -> None:
    """The lock's path (-o) names a file in a writable folder, and the cache is a folder: said as such
    before the sources are read, instead of a traceback from the last write of a long compile."""
    from ftc.compiler.cache import cache_root

    cache = cache_root(recipe)
    try:
        for sub in ("data", "tokens"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
            if not os.access(cache / sub, os.W_OK):
                raise PermissionError(f"{cache / sub} is not writable")
    except OSError as e:
        raise FtcError("FTC168", file=str(recipe.path), path="output.cache_dir", folder=str(cache),
                       reason=_in_the_way(cache) or e.strerror or str(e)) from None
    if lock_path is None:
        return
    if lock_path.is_dir():
        raise FtcError("FTC169", output=str(lock_path), reason=f"it is a folder (-o names the lock file, e.g. {lock_path / 'plan.lock'})")
    probe = lock_path.with_name(lock_path.name + ".tmp")  # the very file write_lock writes first
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FtcError("FTC169", output=str(lock_path), reason=_in_the_way(lock_path.parent) or e.strerror or str(e)) from None


def _in_the_way(folder: Path) -> str | None:
    """'X is a file, not a folder' when the nearest existing part of ``folder`` is a file."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else f"{part} is a file, not a folder"
    return None


def remove_stale_tmp(cache: Path) -> None:
    """A compile killed mid-write leaves its .SPLIT-PID.parquet.tmp; the next compile removes those
    whose process is gone (a live one may be another compile writing into the same cache)."""
    for tmp in cache.glob(".*-*.parquet.tmp"):
        pid = tmp.name[: -len(".parquet.tmp")].rsplit("-", 1)[-1]
        try:
            if pid.isdigit() and int(pid) != os.getpid():
                os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive under another user: not ours to remove
            pass
