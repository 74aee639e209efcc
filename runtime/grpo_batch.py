"""GRPO's batch arithmetic, checked before anything loads (the compiler calls it too).

Batch and step arithmetic belongs to the compiler (ftc.compiler.schedule, being written on
another branch); until that lands it lives here, and grpo.py imports it through one line.
"""

from __future__ import annotations

from ftc.errors import FtcError


def check_grpo_batch(train: dict, *, world_size: int = 1, file: str | None = None) -> None:
    """Refuse a batch that cannot hold whole prompt groups (TRL would raise at start-up).

    In TRL 1.x a batch counts completions, and each prompt gets `num_generations` of them, so
    the generation batch (per_device_train_batch_size x gradient_accumulation_steps x processes)
    must hold whole groups; we say so in the recipe's words instead of TRL's ValueError. Pure
    arithmetic on a resolved `train` section (per rank when world_size > 1)."""
    g = train["grpo"]["num_generations"]
    batch = train["per_device_train_batch_size"]
    accum = train["gradient_accumulation_steps"]
    generation = batch * accum * world_size
    if generation % g == 0:
        return
    procs = f" x {world_size} processes" if world_size > 1 else ""
    up = -(-batch // g) * g
    raise FtcError(
        "FTC105", file=file, path="train.per_device_train_batch_size",
        reason=f"per_device_train_batch_size {batch} x gradient_accumulation_steps {accum}{procs} = {generation} completions "
               f"per generation, which is not a multiple of train.grpo.num_generations ({g})",
        hint=f"in GRPO a batch counts completions, {g} per prompt: set per_device_train_batch_size to {up} "
             f"(or another multiple of {g}), or lower num_generations to a divisor of {generation}",
    )
