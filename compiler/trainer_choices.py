"""The Trainer's own choices for free-string settings, read without importing it.

`train.optim` and `train.fsdp` are strings the schema cannot enumerate: the optimizers are
transformers' `OptimizerNames` and the FSDP words its `FSDPOption`, and both change between
versions. A typo (`adamw_9bit`, `full_shrd`) used to compile and fail at `ftc run` with a
traceback; an optimizer that needs another package (`adamw_8bit` needs bitsandbytes) failed the
same way, on the GPU machine, after the model loaded.

Importing `transformers.training_args` imports torch (seconds), which the compiler must not
do, so the names are read from the modules' source (the enums, by `ast`): the installed
Trainer's own lists, not copies kept here. The packages each optimizer needs are transformers'
`_get_optimizer_cls_and_kwargs` branches, written down once below.
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


# The sharding strategies among FSDPOption's words (accelerate's FSDP_SHARDING_STRATEGY); a
# transformers whose TrainingArguments translate `fsdp` for FSDP2 (`_apply_legacy_fsdp_to_config`,
# FSDP2 being its default and ftc having no fsdp_config key) takes only the first two.
FSDP_STRATEGIES = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard", "hybrid_shard_zero2")
FSDP2_STRATEGIES = ("full_shard", "shard_grad_op")


@lru_cache(maxsize=4)
def _classes(module: str) -> dict[str, ast.ClassDef] | None:
    """The top-level classes of the installed transformers' `module` (its source, parsed), or None."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / f"{module}.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _enum_values(module: str, name: str) -> tuple[str, ...] | None:
    """The string values of the enum class `name` in transformers' `module`, or None when unreadable."""
    node = (_classes(module) or {}).get(name)
    if node is None:
        return None
    return tuple(a.value.value for a in node.body
                 if isinstance(a, ast.Assign) and isinstance(a.value, ast.Constant) and isinstance(a.value.value, str))


def optimizer_names() -> tuple[str, ...] | None:
    """The values of the installed transformers' OptimizerNames, or None when its source cannot be read."""
    return _enum_values("training_args", "OptimizerNames")


def fsdp_options() -> tuple[str, ...] | None:
    """The values of the installed transformers' FSDPOption (the words of `train.fsdp`), or None."""
    return _enum_values("trainer_utils", "FSDPOption")


def fsdp2_only() -> bool:
    """Whether the installed TrainingArguments turn `fsdp` words into an FSDP2 config (and refuse
    the FSDP1-only strategies)."""
    args = (_classes("training_args") or {}).get("TrainingArguments")
    return args is not None and any(isinstance(n, ast.FunctionDef) and n.name == "_apply_legacy_fsdp_to_config"
                                    for n in args.body)


def check_optim(optim: str, file: str | None) -> None:
    """Refuse an optimizer the installed Trainer does not know (FTC195), as the schema refuses a value outside an enum."""
    names = optimizer_names()
    if names is None or optim in names:
        return
    raise FtcError("FTC195", file=file, path="train.optim", optim=optim, suggest=did_you_mean(optim, names),
                   choices=", ".join(names))


def check_fsdp(fsdp: str, file: str | None) -> None:
    """Refuse a `train.fsdp` the installed TrainingArguments would refuse at `ftc run`, after the
    model loaded: a word that is not an FSDPOption (FTC196), or two sharding strategies, or one
    that FSDP2 does not have (FTC197; transformers would keep the first of two silently)."""
    words, options = fsdp.split(), fsdp_options()
    for word in words:
        if options is not None and word not in options:
            raise FtcError("FTC196", file=file, path="train.fsdp", word=word, suggest=did_you_mean(word, options),
                           choices=", ".join(options))
    strategies = [w for w in words if w in FSDP_STRATEGIES]
    allowed = FSDP2_STRATEGIES if fsdp2_only() else FSDP_STRATEGIES
    if len(strategies) > 1 or (strategies and strategies[0] not in allowed):
        raise FtcError("FTC197", file=file, path="train.fsdp", fsdp=fsdp, strategies=", ".join(strategies),
                       allowed=" or ".join(allowed))


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
