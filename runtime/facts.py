"""The facts every run.json records, whatever the method: versions, device, model, settings,
where training stopped, throughput, memory, checkpoint and times.

Each fact is computed here once; a method adds only its own (data, tokens it alone knows,
eval, its section) in its `finish` (see session.py).
"""

from __future__ import annotations

import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


RUN_PACKAGES = ("ftc", "torch", "transformers", "peft", "trl", "accelerate", "datasets")


def versions(packages: tuple[str, ...] = RUN_PACKAGES, *, python: bool = True) -> dict:
    """Installed version of each package (None where it is absent), for run.json."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()} if python else {}
    for pkg in packages:
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


def checkpoint_step(path: str | None) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1]) if path else 0


def relative(path: str | None, root: Path) -> str | None:
    return str(Path(path).relative_to(root)) if path else None


def train_facts(state: Any, losses: list[float], *, interrupted: bool, resumed_from: int | None, train_time: float) -> dict:
    """run.json's "train" block: where the Trainer stopped and why."""
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


def model_facts(model: dict, setup: Any, trainer: Any) -> dict:
    """run.json's "model": what was loaded (from the plan's resolved model section) and how."""
    loaded = setup.loaded
    trainable, total = trainer.model.get_nb_trainable_parameters()
    return {
        "name": model["name"],
        "revision": model["revision"],
        "init": model["init"],
        "random_init": loaded.random_init,
        "fingerprint": loaded.fingerprint,
        "dtype": loaded.dtype,
        "attn_implementation": setup.attention,
        "max_seq_length": model["max_seq_length"],
        "load_in_4bit": model["load_in_4bit"],
        "num_parameters": total,
        "trainable_parameters": trainable,
    }


def token_facts(counter: Any, *, note: str) -> dict:
    """run.json's "tokens": what the trainer computed, counted from the batches it got."""
    return {
        "real": counter.real,
        "slots": counter.slots,
        "trained": counter.trained,
        "padding_efficiency": counter.real / counter.slots if counter.slots else None,
        "note": note,
    }


def distributed_facts(plan_train: dict, rank_train: dict, world_size: int, tokens_per_second: float | None,
                      trainer: Any) -> dict:
    """run.json's "distributed": the lock's global batch, what each rank ran of it, and what the
    Trainer applied, read from it rather than from the plan: FSDP or not, and the class of the model
    it trained (DistributedDataParallel, an FSDP wrapper, or the model itself in one process)."""
    wrapped = getattr(trainer, "model_wrapped", None)
    return {
        "world_size": world_size,
        "gradient_accumulation_steps_per_rank": rank_train["gradient_accumulation_steps"],
        "global_batch": plan_train["per_device_train_batch_size"] * plan_train["gradient_accumulation_steps"],
        "tokens_per_second_per_gpu": tokens_per_second,  # measured on rank 0's shard
        "tokens_per_second_total": tokens_per_second * world_size if tokens_per_second else None,  # rank 0's rate x world size
        "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False)),
        "wrapper": None if wrapped is None else type(wrapped).__name__,
    }


def finished_times(started_at: datetime, t0: float) -> dict:
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
