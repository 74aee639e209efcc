"""The trainer's config from the plan: TrainingArguments keywords, and the refusal of a config
that changed one of them.

Every method passes `training_arguments` straight into its TRL config (SFTConfig,
GRPOConfig, ...) and adds only its own keys, so a plan setting means the same thing
whichever trainer runs it. The `train` section is the lock's, resolved by the compiler:
every key is read as it stands, never re-defaulted here. Two runtime changes reach it
before this point, both recorded in run.json: `--gpus N` divides gradient_accumulation_steps
per rank (launch.per_rank_accumulation), and the memory plan may cut the same batch into
other micro-batches and decides gradient checkpointing (memory_plan.apply).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftc.errors import FtcError


def refuse_missing_optimizer(train: dict) -> None:
    """FTC764 before the model loads, instead of transformers' ImportError when it builds the optimizer."""
    from ftc.compiler.trainer_choices import optim_needs

    module = optim_needs(train["optim"])
    if module is not None:
        raise FtcError("FTC764", path="train.optim", optim=train["optim"], module=module)


def training_arguments(train: dict, *, warmup_steps: int, checkpoints: Path, max_steps: int, dtype: str, device: str,
                       eval_steps: int | None) -> dict[str, Any]:
    """TrainingArguments keywords from the resolved `train` section.

    `warmup_steps` is the lock's `schedule.warmup_steps`: the compiler turns warmup_ratio into
    steps once, so the runtime never derives it again."""
    batch = int(train["per_device_train_batch_size"])
    return dict(
        output_dir=str(checkpoints),
        learning_rate=float(train["learning_rate"]),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=int(train["gradient_accumulation_steps"]),
        num_train_epochs=float(train["num_train_epochs"]),
        max_steps=max_steps,
        warmup_steps=int(warmup_steps),
        lr_scheduler_type=train["lr_scheduler_type"],
        optim=train["optim"],
        weight_decay=float(train["weight_decay"]),
        max_grad_norm=float(train["max_grad_norm"]),
        seed=int(train["seed"]),
        logging_steps=int(train["logging_steps"]),
        save_strategy="steps",
        save_steps=int(train["save_steps"]),
        save_total_limit=2,  # the last checkpoint resumes; one more in case it was cut mid-write
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        gradient_checkpointing=train["gradient_checkpointing"] is True,  # "auto" is resolved before this (memory_plan)
        bf16=device == "cuda" and dtype == "bfloat16",
        fp16=device == "cuda" and dtype == "float16",
        report_to="none",
        # several processes (torchrun): CPU ranks need use_cpu to form a gloo DDP group;
        # LoRA leaves most parameters frozen, so DDP must not search for unused ones
        use_cpu=device != "cuda",
        ddp_find_unused_parameters=False,
        fsdp=train["fsdp"],
        disable_tqdm=True,  # ftc's own progress bar shows loss, tokens/s and ETA
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
    )


# Keys TrainingArguments rewrites into another form by design (not a change of the plan's value)
_NORMALIZED = frozenset({"report_to", "fsdp", "output_dir"})


def checked_config(cls: type, kwargs: dict[str, Any]) -> Any:
    """cls(**kwargs) (an SFTConfig, GRPOConfig, ...), refused when the config class changed a value
    the plan set (see `refuse_changes`)."""
    config = cls(**kwargs)
    refuse_changes(config, kwargs, who=f"{cls.__name__} ({cls.__module__})")
    return config


def refuse_changes(config: Any, kwargs: dict[str, Any], *, who: str) -> None:
    """FTC730 when `config` holds another value than `kwargs` for a setting of the plan.

    unsloth replaces TRL's configs and trainers with its own, which adjust settings on the way
    (for GRPO it may reset per_device_train_batch_size to num_generations). The lock is the
    truth: a run must not silently train with another batch or schedule than the reviewed
    one. The run skeleton checks the config when it is built and again after the trainer's
    __init__, which may rewrite its args."""
    changed = config_changes(config, kwargs)
    if changed:
        raise FtcError("FTC730", who=who, changes="; ".join(changed))


def config_changes(config: Any, kwargs: dict[str, Any]) -> list[str]:
    """'key: plan -> config' for each scalar setting whose value in `config` differs from `kwargs`."""
    out = []
    for key, want in kwargs.items():
        if key in _NORMALIZED or want is None or not isinstance(want, (bool, int, float, str)):
            continue
        got = getattr(config, key, want)
        got = getattr(got, "value", got)  # enums: lr_scheduler_type, optim, strategies
        if got != want:
            out.append(f"{key}: {want!r} -> {got!r}")
    return out
