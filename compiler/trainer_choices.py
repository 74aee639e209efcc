"""The trainer's own choices for a free string of the plan (`train.optim`), checked at compile.

TrainingArguments refuses an unknown optimizer only when `ftc run` builds it, after the model
has loaded, with a traceback; the compiler refuses it with the key's path and a did-you-mean.
The names are read from the installed transformers' source (`OptimizerNames` in
training_args.py) without importing it: that import pulls torch in, seconds at every compile.

An optimizer that needs bitsandbytes (the shipped recipes' `adamw_8bit`) is said at compile
when the package is absent here. A warning, not an error: a plan is often compiled on another
machine than the GPU box that trains it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

from ftc.errors import FtcError, did_you_mean

# transformers' Trainer.get_optimizer_cls_and_kwargs builds these from bitsandbytes.optim
_BNB_EXACT = frozenset({"adamw_bnb_8bit", "adamw_8bit"})
_BNB_PREFIXES = ("paged_", "lion_", "ademamix", "rmsprop_bnb")


@lru_cache(maxsize=1)
def optimizer_names() -> tuple[str, ...] | None:
    """The values of transformers' OptimizerNames, or None when its source cannot be read (the
    run's TrainingArguments still refuses an unknown name then)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        source = (Path(list(spec.submodule_search_locations)[0]) / "training_args.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "OptimizerNames":
            names = tuple(s.value.value for s in node.body
                          if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
            return names or None
    return None


def needs_bitsandbytes(optim: str) -> bool:
    return optim in _BNB_EXACT or optim.startswith(_BNB_PREFIXES)


def check_optim(train: dict, *, file: str) -> None:
    """FTC195 for an optimizer transformers does not have; a warning on stderr when it needs
    bitsandbytes and that is not installed here."""
    optim = train["optim"]
    names = optimizer_names()
    if names is not None and optim not in names:
        raise FtcError("FTC195", file=file, path="train.optim", optim=optim, suggest=did_you_mean(optim, names),
                       choices=", ".join(names))
    if needs_bitsandbytes(optim) and importlib.util.find_spec("bitsandbytes") is None:
        print(f"ftc: warning: train.optim {optim!r} needs the bitsandbytes package, which is not installed here: "
              "`ftc run` fails where it is absent (pip install bitsandbytes on the GPU machine, or choose adamw_torch)",
              file=sys.stderr)
