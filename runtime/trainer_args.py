"""What every ftc trainer shares: the plan's `train` keys as HF TrainingArguments, and the
facts each run records (versions, device, peak memory, checkpoint names).

SFT and GRPO pass these straight into TRL's SFTConfig / GRPOConfig and add only their
own keys, so a plan setting means the same thing whichever trainer runs it.
"""

from __future__ import annotations

import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"


def training_arguments(train: dict, *, checkpoints: Path, max_steps: int, dtype: str, device: str,
                       eval_steps: int | None) -> dict[str, Any]:
    """TrainingArguments keywords from the resolved `train` section."""
    # Whole steps only: transformers 5 reads a warmup_steps below 1 as a ratio and 1.0 as one step.
    # run_plan passes the lock's schedule warmup (warmup_ratio resolved by compiler/schedule.py).
    warmup = train.get("warmup_steps")
    if warmup is None and train.get("warmup_ratio"):
        from ftc.runtime.model import run_error

        raise run_error("train.warmup_ratio reached the trainer unresolved",
                        "pass warmup_steps from the lock's schedule (ftc run does), not the ratio")
    batch = int(train.get("per_device_train_batch_size", 2))
    return dict(
        output_dir=str(checkpoints),
        learning_rate=float(train.get("learning_rate", 2e-4)),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=int(train.get("gradient_accumulation_steps", 4)),
        num_train_epochs=float(train.get("num_train_epochs", 1)),
        max_steps=max_steps,
        warmup_steps=int(warmup or 0),
        lr_scheduler_type=train.get("lr_scheduler_type", "linear"),
        optim=train.get("optim", "adamw_torch"),
        weight_decay=float(train.get("weight_decay", 0.0)),
        max_grad_norm=float(train.get("max_grad_norm", 1.0)),
        seed=int(train.get("seed", 3407)),
        logging_steps=int(train.get("logging_steps", 1)),
        save_strategy="steps",
        save_steps=int(train.get("save_steps", 100)),
        save_total_limit=2,  # the last checkpoint resumes; one more in case it was cut mid-write
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        gradient_checkpointing=train.get("gradient_checkpointing") is True,  # "auto" is resolved before this (memory_plan)
        bf16=device == "cuda" and dtype == "bfloat16",
        fp16=device == "cuda" and dtype == "float16",
        report_to="none",
        # several processes (torchrun): CPU ranks need use_cpu to form a gloo DDP group;
        # LoRA leaves most parameters frozen, so DDP must not search for unused ones
        use_cpu=device != "cuda",
        ddp_find_unused_parameters=False,
        fsdp=train.get("fsdp") or "",
        disable_tqdm=True,  # ftc's own progress bar shows loss, tokens/s and ETA
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
    )


def checkpoint_step(path: str | None) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1]) if path else 0


def relative(path: str | None, root: Path) -> str | None:
    return str(Path(path).relative_to(root)) if path else None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ftc", "torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def peak_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        return {"kind": "cuda_max_allocated", "gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    # ru_maxrss is KiB on Linux: the process's peak resident set, model and data included
    return {"kind": "cpu_peak_rss", "gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


@dataclass(frozen=True)
class RunFolder:
    root: Path
    checkpoints: Path
    metrics: Path
    last_checkpoint: str | None  # the checkpoint a resume starts from
    resumed_from: int | None  # its step, when resuming
    main_process: bool  # under torchrun/accelerate only rank 0 writes


def open_run_folder(output_dir: Path, *, resume: bool) -> RunFolder:
    """Resume or fresh start, never two runs mixed in one folder silently."""
    import os

    from transformers.trainer_utils import get_last_checkpoint

    from ftc.runtime.model import run_error

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    checkpoints = root / CHECKPOINTS
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and last is None:
        raise run_error(f"--resume: no checkpoint in {checkpoints}", "run without --resume to start training from step 0")
    if not resume and last is not None:
        raise run_error(f"{root} already holds checkpoints of a run", "continue it with --resume, or choose another output folder")
    return RunFolder(root, checkpoints, root / "metrics.jsonl", last, checkpoint_step(last) if resume else None,
                     int(os.environ.get("RANK", "0")) == 0)


def reset_metrics(folder: RunFolder) -> None:
    """A fresh run starts an empty metrics.jsonl; a resumed one drops the lines past its checkpoint
    (those steps are trained, and logged, again)."""
    from ftc.runtime.metrics import truncate_metrics

    if not folder.main_process:
        return
    if folder.resumed_from is not None:
        truncate_metrics(folder.metrics, folder.resumed_from)
    else:
        folder.metrics.write_text("")


def train_facts(state: Any, losses: list[float], *, interrupted: bool, resumed_from: int | None, train_time: float) -> dict:
    """run.json's "train" block, the same for every trainer: where the Trainer stopped and why."""
    return {
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "interrupted": interrupted,
        "resumed_from_step": resumed_from,
        "train_time_s": round(train_time, 3),
    }


# Keys TrainingArguments rewrites into another form by design (not a change of the plan's value)
_NORMALIZED = frozenset({"report_to", "fsdp", "output_dir"})


def checked_config(cls: type, kwargs: dict[str, Any]) -> Any:
    """cls(**kwargs) (an SFTConfig or GRPOConfig), refused when the config class changed a value
    the plan set (see `refuse_changes`)."""
    config = cls(**kwargs)
    refuse_changes(config, kwargs, who=f"{cls.__name__} ({cls.__module__})")
    return config


def refuse_changes(config: Any, kwargs: dict[str, Any], *, who: str) -> None:
    """FTC700 when `config` holds another value than `kwargs` for a setting of the plan.

    unsloth replaces TRL's configs and trainers with its own, which adjust settings on the way
    (for GRPO it may reset per_device_train_batch_size to num_generations). The lock is the
    truth: a run must not silently train with another batch or schedule than the reviewed
    one. The trainers check the config when it is built and again after the trainer's
    __init__, which may rewrite its args."""
    from ftc.runtime.model import run_error

    changed = config_changes(config, kwargs)
    if changed:
        raise run_error(f"{who} changed the plan's settings: {'; '.join(changed)}",
                        "this backend does not train the plan as written: use --backend hf, or change the recipe to "
                        "values this backend keeps")


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


def common_facts(*, name: str, plan_hash: str, method: str, setup: Any, model: dict, lora: dict, train: dict,
                 tokenizer_path: str, max_steps_override: int | None, trainer: Any, losses: list[float],
                 interrupted: bool, resumed_from: int | None, train_time: float, counter: Any, memory: dict,
                 checkpoints: Path, output_dir: Path, started_at: Any, t0: float) -> dict:
    """The run.json facts SFT and GRPO share; each trainer adds its own (data, tokens, eval, ...)."""
    import time
    from datetime import datetime, timezone

    from transformers.trainer_utils import get_last_checkpoint

    loaded = setup.loaded
    trainable, total = trainer.model.get_nb_trainable_parameters()
    return {
        "name": name,
        "plan_hash": plan_hash,
        "backend": setup.backend,
        "backend_facts": setup.facts,
        "method": method,
        "versions": versions(),
        "device": device_name(loaded.device),
        "model": {
            "name": model.get("name"),
            "revision": model.get("revision"),
            "init": model.get("init", "pretrained"),
            "random_init": loaded.random_init,
            "fingerprint": loaded.fingerprint,
            "dtype": loaded.dtype,
            "attn_implementation": setup.attention,
            "max_seq_length": int(model.get("max_seq_length", 2048)),
            "load_in_4bit": bool(model.get("load_in_4bit", False)),
            "num_parameters": total,
            "trainable_parameters": trainable,
        },
        "settings": {"model": model, "lora": lora, "train": train, "max_steps_override": max_steps_override,
                     "tokenizer": str(tokenizer_path)},
        "train": train_facts(trainer.state, losses, interrupted=interrupted, resumed_from=resumed_from, train_time=train_time),
        "throughput_tokens_per_second": round(counter.real / train_time, 1) if train_time > 0 else None,
        "memory_plan": memory,
        "peak_memory": peak_memory(loaded.device),
        "adapter_dir": ".",
        "checkpoint": relative(get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None, output_dir),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
