"""The Trainer's own choices for free-string settings, read without importing it.

`train.optim` is a string the schema cannot enumerate: the optimizers are transformers'
`OptimizerNames`, and they change between versions. A typo (`adamw_9bit`) used to compile and
fail at `ftc run` with a traceback; an optimizer that needs another package (`adamw_8bit`
needs bitsandbytes) failed the same way, on the GPU machine, after the model loaded.

Importing `transformers.training_args` imports torch (seconds), which the compiler must not
do, so the names are read from that module's source (its `OptimizerNames` enum, by `ast`):
the installed Trainer's own list, not a copy kept here. The packages each optimizer needs
are transformers' `_get_optimizer_cls_and_kwargs` branches, written down once below.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

from ftc.errors import FtcError, did_you_mean

# optimizer name (or prefix ending in "_") -> the module transformers imports for it
_NEEDS: dict[str, str] = {
    "adamw_bnb_8bit": "bitsandbytes", "adamw_8bit": "bitsandbytes", "ademamix": "bitsandbytes",
    "ademamix_8bit": "bitsandbytes", "lion_8bit": "bitsandbytes", "lion_32bit": "bitsandbytes",
    "paged_": "bitsandbytes", "rmsprop_bnb": "bitsandbytes", "rmsprop_bnb_8bit": "bitsandbytes",
    "rmsprop_bnb_32bit": "bitsandbytes", "galore_": "galore_torch", "apollo_": "apollo_torch",
    "adamw_torch_4bit": "torchao", "adamw_torch_8bit": "torchao", "lomo": "lomo_optim", "adalomo": "lomo_optim",
    "grokadamw": "grokadamw", "schedule_free_": "schedulefree", "stable_adamw": "optimi",
    "adamw_anyprecision": "torchdistx", "adamw_torch_xla": "torch_xla", "adamw_torch_npu_fused": "torch_npu",
}


@lru_cache(maxsize=1)
def optimizer_names() -> tuple[str, ...] | None:
    """The values of the installed transformers' OptimizerNames, or None when its source cannot be read."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "training_args.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "OptimizerNames":
            return tuple(a.value.value for a in node.body
                         if isinstance(a, ast.Assign) and isinstance(a.value, ast.Constant) and isinstance(a.value.value, str))
    return None


def check_optim(optim: str, file: str | None) -> None:
    """Refuse an optimizer the installed Trainer does not know (FTC195), as the schema refuses a value outside an enum."""
    names = optimizer_names()
    if names is None or optim in names:
        return
    raise FtcError("FTC195", file=file, path="train.optim", optim=optim, suggest=did_you_mean(optim, names),
                   choices=", ".join(names))


def optim_needs(optim: str) -> str | None:
    """The module `optim` needs that is not installed here, or None."""
    module = _NEEDS.get(optim) or next((m for k, m in _NEEDS.items() if k.endswith("_") and optim.startswith(k)), None)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return module


def optim_warning(optim: str) -> str | None:
    """What compile says (on stderr, not in the lock: it is a fact of this machine, not of the plan)."""
    module = optim_needs(optim)
    if module is None:
        return None
    return (f"train.optim {optim!r} needs the {module} package, which is not installed here: "
            f"`ftc run` refuses the plan on a machine without it")
