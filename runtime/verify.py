"""Verify a plan before anything trains: its inputs, then its artifacts.

Nothing trains on data the lock does not describe. The inputs (recipe, sources, tokenizer,
python rewards) are checked through the compiler's contract (`ftc.compiler.inputs`); a
changed one is refused with the file named and the fix spelled out. A missing or damaged
artifact is rebuilt from the sources when they still match (the lock is enough to rebuild
the cache, `ftc.compiler.compile.rebuild`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ftc.compiler.cache import verified
from ftc.compiler.inputs import drift
from ftc.compiler.lock import Plan
from ftc.errors import FtcError


def verify(lock_path: str | Path) -> Plan:
    plan = Plan.load(lock_path)
    found = drift(plan)
    changed = [d for d in found if not d.missing]
    if changed:  # an input that is there but is not the one the lock fingerprints: never train on it
        raise changed[0].error(plan)
    damaged = [(kind, split, art) for kind, split, art in plan.artifacts() if not verified(plan.path(art["path"]), art["sha256"])]
    if not damaged:
        if found:
            print(f"ftc: not here, so not re-checked: {', '.join(d.file or '?' for d in found)}; the artifacts match "
                  "the lock's sha256", file=sys.stderr)
        return plan
    if found:  # a rebuild needs every input
        raise found[0].error(plan)
    from ftc.compiler.compile import rebuild

    print(f"ftc: artifacts missing from the cache; rebuilding them from {plan.recipe_file}", file=sys.stderr)
    rebuild(plan)
    for kind, split, art in damaged:
        if not verified(plan.path(art["path"]), art["sha256"]):
            raise FtcError("FTC503", file=str(plan.path(art["path"])), recipe=plan.lock["recipe"]["path"])
    return dataclasses.replace(plan, rebuilt=tuple(f"{kind}/{split}" for kind, split, _ in damaged))

