"""Batch and step arithmetic: how many optimizer steps a plan trains, counted the way the
Trainer that runs it counts them.

The lock's `schedule` is what a reviewer checks before paying for a run, so it must be the
Trainer's own arithmetic, not an approximation of it (transformers 5.x `Trainer` and TRL 1.16
`GRPOTrainer`):

- The Trainer makes `len(dataloader)` micro-batches per epoch ("batches" here) and takes
  `gradient_accumulation_steps` of them per optimizer step: ``steps/epoch = max(ceil(batches /
  accumulation), 1)``. With `max_steps` it stops there; otherwise it trains ``ceil(epochs x
  steps/epoch)`` steps. Its `state.epoch` after a step is ``epoch + micro-batches done /
  batches``, so a step budget that ends mid-epoch is a fraction in micro-batches, not steps.
- SFT: a micro-batch is `per_device_train_batch_size` items, an item a token row or, when
  the compiler packed, one packed sequence; the last batch of an epoch may be short.
- GRPO: a batch counts *completions*, `num_generations` per prompt. TRL's RepeatSampler
  takes `generation_batch_size / num_generations` prompts at a time (whole generation
  batches only: the prompts left over are not used that epoch), repeats each prompt
  `num_generations` times and each generation batch `steps_per_generation x num_iterations`
  times, and the dataloader yields `per_device_train_batch_size x steps_per_generation` of
  those per micro-batch. ftc sets neither `steps_per_generation` nor `num_iterations`, so
  TRL's rule applies: steps_per_generation = gradient_accumulation_steps, num_iterations = 1,
  which makes one optimizer step train one generation batch.
- Warmup: transformers 5 has no `warmup_ratio`; its `warmup_steps` reads a value below 1 as
  a ratio and anything else as a step count (so a ratio of 1.0 would be one step). The ratio
  is therefore resolved here into whole steps, ``ceil(total x ratio)`` as the Trainer rounds
  it, and the runtime passes that integer.

The numbers are for one process and the plan's micro-batch split. Several processes (the
runtime divides the accumulation by the world size) and `train.micro_batch: auto` (which may
re-split a step's items at run time) train the same items per step and the same steps; only
an epoch fraction that ends mid-epoch can then differ slightly, since its micro-batches differ.
"""

from __future__ import annotations

import math

from ftc.errors import FtcError

# What one item of per_device_train_batch_size is, by method (and packing for SFT)
COUNTS = {"sft": "rows", "sft_packed": "packed sequences", "grpo": "completions",
          # preference: a DPO/ORPO/SimPO item is a pair (two sequences), a KTO item one labelled completion
          "dpo": "pairs", "orpo": "pairs", "simpo": "pairs", "kto": "labelled completions"}


def check_grpo_batch(train: dict, *, world_size: int = 1, file: str | None = None) -> None:
    """Refuse a batch that cannot hold whole prompt groups (TRL would raise at start-up).

    Pure arithmetic on the resolved `train` section, so the compiler and the runtime (with
    its world size) both call it."""
    g = int(train["grpo"]["num_generations"])
    batch = int(train["per_device_train_batch_size"])
    accum = int(train["gradient_accumulation_steps"])
    generation = batch * accum * world_size
    if generation % g == 0:
        return
    raise FtcError("FTC111", file=file, path="train.per_device_train_batch_size", batch=batch, accumulation=accum,
                   processes=f" x {world_size} processes" if world_size > 1 else "", completions=generation,
                   generations=g, batch_up=-(-batch // g) * g)


def steps_per_epoch(batches: int, accumulation: int) -> int:
    """The Trainer's num_update_steps_per_epoch: a short last step still counts."""
    return max(math.ceil(batches / accumulation), 1) if batches else 0


def total_steps(train: dict, per_epoch: int) -> int:
    """The Trainer's max_steps: the plan's when positive, else the epochs' worth of steps."""
    if train["max_steps"] > 0:
        return int(train["max_steps"])
    return math.ceil(train["num_train_epochs"] * per_epoch)


def epoch_after(steps: int, *, per_epoch: int, batches: int, accumulation: int) -> float:
    """`state.epoch` after `steps` optimizer steps, by the Trainer's own expression
    (``epoch + (micro-batch + 1) / batches``), so the two are equal to the last bit."""
    if not per_epoch:
        return 0.0
    full, rest = divmod(steps, per_epoch)
    if rest == 0:  # the last step of an epoch ends on its last micro-batch
        return float(full)
    return full + (rest * accumulation) / batches


def warmup_steps(train: dict, total: int) -> int:
    """Warmup as whole steps: train.warmup_steps, or train.warmup_ratio of `total` rounded up
    as the Trainer rounds a ratio (``ceil(total x ratio)``; 1.0 is every step)."""
    if train.get("warmup_steps") is not None:
        return int(train["warmup_steps"])
    return math.ceil(total * float(train.get("warmup_ratio") or 0.0))


def _grpo_batches(train: dict, prompts: int, file: str | None) -> tuple[int, dict]:
    """(micro-batches per epoch, the GRPO facts) as GRPOTrainer's train dataloader makes them."""
    check_grpo_batch(train, file=file)
    g = int(train["grpo"]["num_generations"])
    batch, accum = int(train["per_device_train_batch_size"]), int(train["gradient_accumulation_steps"])
    per_generation = accum  # GRPOConfig: steps_per_generation defaults to gradient_accumulation_steps
    iterations = 1  # GRPOConfig: num_iterations defaults to 1
    generation_batch = batch * per_generation  # completions generated at once (one process)
    prompts_per_generation = generation_batch // g
    if 0 < prompts < prompts_per_generation:
        raise FtcError("FTC112", file=file, path="train.per_device_train_batch_size", prompts=prompts,
                       completions=generation_batch, per_generation=prompts_per_generation, generations=g)
    used = prompts // prompts_per_generation * prompts_per_generation
    sampler = used * g * iterations * per_generation  # RepeatSampler.__len__
    batches = math.ceil(sampler / (batch * per_generation))  # the dataloader's batch: batch x steps_per_generation
    return batches, {
        "num_generations": g,
        "completions_per_step": batch * accum,
        "prompts_per_step": batch * accum // g,
        "steps_per_generation": per_generation,
        "num_iterations": iterations,
        "prompts_per_epoch": used,
        "prompts_left_out_per_epoch": prompts - used,  # a different remainder each epoch (the sampler shuffles)
    }


def derive_schedule(train: dict, train_items: int, *, file: str | None = None) -> dict:
    """The lock's `schedule` from the resolved `train` section and the number of training
    items the compiler wrote (SFT: token rows, or packed sequences when packed; GRPO: prompts).

    Raises FtcError for a plan that cannot train as written; records as `warnings` what
    trains but is likely a mistake (a warmup longer than the training)."""
    if train["max_steps"] == 0:
        raise FtcError("FTC110", file=file, path="train.max_steps")
    method = train["method"]
    batch, accum = int(train["per_device_train_batch_size"]), int(train["gradient_accumulation_steps"])
    extra: dict = {}
    if method == "grpo":
        batches, extra = _grpo_batches(train, train_items, file)
        counts = COUNTS["grpo"]
    else:
        batches = math.ceil(train_items / batch)
        counts = COUNTS[method if method in ("dpo", "orpo", "simpo", "kto") else "sft_packed" if train.get("packing") else "sft"]
    per_epoch = steps_per_epoch(batches, accum)
    total = total_steps(train, per_epoch)
    warmup = warmup_steps(train, total)
    warnings = []
    if warmup > total:
        warnings.append(f"warmup ({warmup} steps) is longer than the training ({total} steps): the learning rate never "
                        f"reaches train.learning_rate")
    return {
        "method": method,
        "counts": counts,  # what per_device_train_batch_size counts
        "train_items": train_items,  # SFT: rows or packed sequences; GRPO: prompts
        "effective_batch_size": batch * accum,  # of `counts` per optimizer step
        "batches_per_epoch": batches,  # the Trainer's len(train dataloader)
        "optimizer_steps_per_epoch": per_epoch,
        "total_steps": total,
        "epochs": epoch_after(total, per_epoch=per_epoch, batches=batches, accumulation=accum),
        "warmup_steps": warmup,
        **extra,
        "warnings": warnings,
    }


def run_warmup_steps(schedule: dict, train: dict, max_steps_override: int | None = None) -> int:
    """The warmup steps a run passes to the Trainer: the lock's, or, when `ftc run --max-steps`
    changes the step budget, the plan's warmup resolved again against that budget."""
    if max_steps_override is None:
        return int(schedule["warmup_steps"])
    budget = {**train, "max_steps": max_steps_override}
    return warmup_steps(budget, total_steps(budget, schedule["optimizer_steps_per_epoch"]))
