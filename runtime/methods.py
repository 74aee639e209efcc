"""The training methods a plan can name (train.method), each a `session.Method`.

A new method (DPO, ...) is a module with its `METHOD` and one line here; the run skeleton
(session.py) and both backends take it as it is.
"""

from __future__ import annotations

import importlib
from typing import Any

from ftc.errors import FtcError

# train.method -> the module holding its METHOD (imported on demand: each pulls in its own TRL trainer)
MODULES = {"sft": "ftc.runtime.sft", "grpo": "ftc.runtime.grpo",
           **{m: "ftc.runtime.preference" for m in ("dpo", "orpo", "simpo", "kto")}}  # one module, its METHODS


def method_for(name: str) -> Any:
    """The `Method` of train.method `name`; FTC709 for a method this ftc has no trainer for."""
    if name not in MODULES:
        raise FtcError("FTC709", path="train.method", method=name, methods=", ".join(MODULES))
    module = importlib.import_module(MODULES[name])
    return module.METHODS[name] if hasattr(module, "METHODS") else module.METHOD
