"""The training methods a plan can name (train.method), each a `session.Method`.

A new method (DPO, ...) is a module with its `METHOD` and one line here; the run skeleton
(session.py) and both backends take it as it is.
"""

from __future__ import annotations

from typing import Any

from ftc.errors import FtcError


def method_for(name: str) -> Any:
    """The `Method` of train.method `name` (imported on demand: each pulls in its own TRL trainer)."""
    if name == "sft":
        from ftc.runtime.sft import METHOD
    elif name == "grpo":
        from ftc.runtime.grpo import METHOD
    else:
        raise FtcError("FTC700", reason=f"train.method {name!r} has no trainer in this ftc",
                       hint="recompile the recipe with a method this ftc trains (sft, grpo)")
    return METHOD
