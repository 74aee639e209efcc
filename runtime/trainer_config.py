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
from typing import Any, Callable

from ftc.errors import FtcError


def refuse_missing_optimizer(train: dict) -> None:
    """FTC764 before the model loads, instead of transformers' ImportError when it builds the optimizer."""
    from ftc.compiler.trainer_choices import optim_needs

    module = optim_needs(train["optim"])
    if module is not None:
        raise FtcError("FTC764", path="train.optim", optim=train["optim"], module=module)


def training_arguments(train: dict, *, warmup_steps: int, checkpoints: Path, max_steps: int, dtype: str, device: str,
                       eval_steps: int | None, run_name: str | None = None) -> dict[str, Any]:
    """TrainingArguments keywords from the resolved `train` section.

    `warmup_steps` is the lock's `schedule.warmup_steps`: the compiler turns warmup_ratio into
    steps once, so the runtime never derives it again. `run_name` names the run in the
    trackers of `train.report_to` (see `tracking`)."""
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
        **{checkpointing_key(): train["gradient_checkpointing"] is True},  # "auto" is resolved before this (memory_plan)
        bf16=device == "cuda" and dtype == "bfloat16",
        fp16=device == "cuda" and dtype == "float16",
        report_to=train["report_to"],
        run_name=run_name,
        # several processes (torchrun): CPU ranks need use_cpu to form a gloo DDP group;
        # LoRA leaves most parameters frozen, so DDP must not search for unused ones
        use_cpu=device != "cuda",
        ddp_find_unused_parameters=False,
        **fsdp_arguments(train["fsdp"]),
        disable_tqdm=True,  # ftc's own progress bar shows loss, tokens/s and ETA
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
    )


def fsdp_arguments(fsdp: str) -> dict[str, Any]:
    """TrainingArguments keywords for `train.fsdp` (FSDPOption words, checked at compile by
    trainer_choices.check_fsdp). Where transformers has moved FSDP into `fsdp_config`
    (`fsdp2_only`; passing the words warns on every run there), the words become that config:
    a sharding strategy sets `reshard_after_forward` (full_shard: True, shard_grad_op: False),
    `offload` sets `cpu_offload`, `auto_wrap` is its default. Elsewhere they pass as they are."""
    from ftc.compiler.trainer_choices import fsdp2_only

    words = fsdp.split()
    if not words or not fsdp2_only():
        return {"fsdp": fsdp}
    config: dict[str, Any] = {}
    if "full_shard" in words or "shard_grad_op" in words:
        config["reshard_after_forward"] = "full_shard" in words
    if "offload" in words:
        config["cpu_offload"] = True
    return {"fsdp": True, "fsdp_config": config}


def checkpointing_key() -> str:
    """TrainingArguments' name for gradient checkpointing: `activation_checkpointing` where this
    transformers has it (`gradient_checkpointing` is its deprecated alias there, and passing it
    warns on every run), else the old name."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


# The package each `train.report_to` integration needs (the Trainer's callbacks import them)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",), "trackio": ("trackio",)}
TENSORBOARD_DIR = "tensorboard"  # in the run folder


def trackers(train: dict) -> list[str]:
    """The integrations of `train.report_to` ("none": [])."""
    report_to = train["report_to"]
    return [] if report_to == "none" else [report_to] if isinstance(report_to, str) else list(report_to)


def refuse_missing_trackers(train: dict) -> None:
    """FTC779 before any loading when an integration's package is absent (the Trainer would
    fail only once the model is loaded)."""
    import importlib.util

    for name in trackers(train):
        if not any(importlib.util.find_spec(pkg) for pkg in TRACKERS[name]):
            raise FtcError("FTC779", path="train.report_to", tracker=name, package=TRACKERS[name][0])


def refuse_unsharded_fsdp(train: dict, *, launching: bool = False) -> None:
    """Before any loading, refuse a `train.fsdp` that cannot be in force here. FSDP shards across the
    ranks of a distributed launch on CUDA GPUs. On the CPU accelerate does not turn it on, and the
    ranks get plain DDP with the key dropped without a word (FTC765; measured: gloo ranks got
    DistributedDataParallel, Trainer.is_fsdp_enabled False). In one process that is not a rank (no
    LOCAL_RANK, as torchrun sets it), transformers' Trainer raises "Using fsdp only works in
    distributed training", after the model has loaded (FTC766 says it first). `ftc run` launches
    torchrun for every FSDP plan, one GPU included (`launch.needs_launch`), so FTC766 is for a
    process started some other way. ``launching``: the check of the process that is about to start
    torchrun, which is not a rank itself."""
    if not train.get("fsdp"):
        return
    import os

    import torch

    if not torch.cuda.is_available():
        raise FtcError("FTC765", path="train.fsdp", fsdp=train["fsdp"])
    if not launching and int(os.environ.get("LOCAL_RANK", "-1")) == -1:
        raise FtcError("FTC766", path="train.fsdp", fsdp=train["fsdp"])


def refuse_unapplied_fsdp(trainer: Any, train: dict) -> None:
    """After the Trainer is built: `train.fsdp` is in force (Trainer.is_fsdp_enabled, which it reads
    from accelerate's state), or the run stops before training (FTC767). The checks before loading
    cover the cases known; this one holds for any other path that would drop it."""
    if train.get("fsdp") and not getattr(trainer, "is_fsdp_enabled", False):
        state = getattr(getattr(trainer, "accelerator", None), "distributed_type", None)
        raise FtcError("FTC767", path="train.fsdp", fsdp=train["fsdp"], distributed_type=str(getattr(state, "value", state)))


def tracking(train: dict, *, plan_name: str, plan_hash: str, run_dir: Path) -> tuple[dict[str, str], Callable[[], None]]:
    """What each tracker of `train.report_to` reads from the environment, set for this run (a
    value the user exported wins): TensorBoard's event folder in the run folder, the plan hash
    as a tag for wandb and mlflow. Returns (the values in force, for run.json; a function that
    takes back what was set here, called when training ends, so a second run in the same
    process does not inherit them)."""
    import json
    import os

    wanted: dict[str, str] = {}
    names = trackers(train)
    if "tensorboard" in names:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / TENSORBOARD_DIR)
    if "wandb" in names:
        wanted["WANDB_TAGS"] = f"ftc,plan-{plan_hash[:12]}"
    if "mlflow" in names:
        wanted["MLFLOW_TAGS"] = json.dumps({"ftc.plan": plan_name, "ftc.plan_hash": plan_hash})
    ours = [key for key in wanted if key not in os.environ]
    in_force = {key: os.environ.setdefault(key, value) for key, value in wanted.items()}

    def restore() -> None:
        for key in ours:
            os.environ.pop(key, None)

    return in_force, restore


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
