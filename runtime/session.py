"""The one run skeleton: every method (SFT, GRPO, later DPO...) trains through `run_method`.

Read it top to bottom like torchtune's recipes:

    folder -> data -> memory plan -> model -> checked config -> trainer -> signals -> train
    -> save -> facts -> report

A `Method` (sft.py, grpo.py) supplies only what is its own: reading its artifacts, whether its
batch may be cut into other micro-batches, its config class and keys, its trainer class and
constructor extras, its run.json facts and report section. Everything else happens here, once,
for both backends: the unsloth process (unsloth_process.py) runs this very function with
unsloth's model setup.

The plan is read as the lock resolved it (`ftc.compiler.lock.Plan`): no setting is
re-defaulted here. Two runtime changes reach the batch keys, and run.json records both:
`--gpus N` divides gradient_accumulation_steps per rank (`distributed`), and the memory plan
may cut the same batch into other micro-batches (`memory_plan`).

Decisions that are not TRL defaults, and why:
- Data order comes from the Trainer's seedable sampler seeded with `train.seed`; resuming
  restores the optimizer, scheduler and RNG states and skips the batches already seen, so an
  interrupted-and-resumed run ends where an uninterrupted one does.
- Ctrl-C saves a checkpoint after the current step and stops; `resume=True` continues.
- The config is checked against the keywords it was built from twice: when it is built and
  after the trainer's __init__ (unsloth's classes may rewrite either).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ftc.compiler.lock import Plan
from ftc.compiler.schedule import run_warmup_steps
from ftc.errors import FtcError
from ftc.runtime import memory_plan
from ftc.runtime.facts import (checkpoint_step, device_name, distributed_facts, finished_times, model_facts, peak_memory,
                               relative, token_facts, train_facts, versions)
from ftc.runtime.flops import mfu
from ftc.runtime.launch import per_rank_accumulation, world
from ftc.runtime.metrics import StopFlag, TokenCounter, callbacks as run_callbacks, read_metrics, truncate_metrics
from ftc.runtime.model import ModelSetup, align_pad_token, load_tokenizer
from ftc.runtime.trainer_config import (checked_config, refuse_changes, refuse_missing_optimizer, refuse_unapplied_fsdp, tracking,
                                        training_arguments)

CHECKPOINTS = "checkpoints"


class Data(Protocol):
    """What a method's `prepare` returns: the trainer's datasets, plus whatever else it keeps for itself."""

    train_dataset: Any
    eval_dataset: Any | None  # None: no eval during training
    tokens_per_item: int  # the longest dataset item, in tokens, for the memory plan


@dataclass(frozen=True)
class Finished:
    """What a method's `finish` and `report_sections` see once training stopped (rank 0 only)."""

    plan: Plan
    train: dict  # the train settings used: per rank, after the memory plan
    data: Any  # the method's own Data
    trainer: Any
    tokenizer: Any
    counter: TokenCounter
    output_dir: Path
    metrics_path: Path
    interrupted: bool


class Method(Protocol):
    """What is particular to one training method; `METHOD` in sft.py and grpo.py."""

    name: str  # train.method
    can_split_batch: bool  # may the memory plan cut the batch into other micro-batches
    log_all_scalars: bool  # metrics.jsonl keeps every scalar the trainer logs (GRPO's rewards)

    def prepare(self, plan: Plan, train: dict, *, tokenizer: Any, world_size: int) -> Data:
        """Checks that need no model, then the method's artifacts as the trainer's datasets."""

    def check_model(self, setup: ModelSetup, data: Data) -> None:
        """Refuse a loaded model the data cannot train (vocabulary, packing-safe attention)."""

    def config(self, train: dict, data: Data) -> tuple[type, dict]:
        """The TRL config class and the method's own keys (on top of `training_arguments`)."""

    def trainer(self, data: Data, *, tokenizer: Any, setup: ModelSetup) -> tuple[type, dict]:
        """The trainer class (with a `token_counter` attribute) and its extra constructor keywords."""

    def flops(self, model: Any, data: Data, *, device: str) -> dict | None:
        """FLOPs per token for MFU (`flops.flops_facts`), or None where the method has no such figure."""

    def finish(self, run: Finished) -> dict:
        """The method's own run.json facts ("data", "eval", its section, "tokens" notes), merged one level deep."""

    def report_sections(self, run: Finished, facts: dict) -> list[str]:
        """Markdown sections of report.md after the summary."""


@dataclass(frozen=True)
class RunFolder:
    root: Path
    checkpoints: Path
    metrics: Path
    last_checkpoint: str | None  # the checkpoint a resume starts from
    resumed_from: int | None  # its step, when resuming
    main_process: bool  # under torchrun/accelerate only rank 0 writes


def run_method(method: Method, plan: Plan, *, output_dir: Path, resume: bool = False, backend: str = "hf",
               backend_reason: str = "", max_steps_override: int | None = None, world_size: int = 1,
               extra_callbacks: Sequence[Any] = (), show_progress: bool = True) -> dict:
    """Train a LoRA adapter on `plan` with `method`; return the run facts (also written to run.json).

    Writes to output_dir: the PEFT adapter and tokenizer, checkpoints/, metrics.jsonl, run.json,
    report.md and loss.png (+ the method's own plots). `extra_callbacks` are transformers
    TrainerCallbacks (tests use one to interrupt a run at a given step). Ranks other than 0
    return {}.
    """
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    settings = plan.settings
    model = plan.run_model  # model.name (and model.adapter) as local folders, absolute
    lora, tokenizer_path = settings["lora"], plan.tokenizer_location

    # ---- folder: resume or fresh start, never two runs mixed in one folder silently
    folder = open_run_folder(output_dir, resume=resume)
    refuse_missing_optimizer(settings["train"])

    # ---- data: the method's artifacts, checked against the compiler's contract before any model loads
    rank_train = per_rank_accumulation(settings["train"], world_size)  # the lock's global batch over the ranks
    tokenizer = load_tokenizer(tokenizer_path, model["tokenizer_revision"], model["trust_remote_code"])  # as compile loaded it
    data = method.prepare(plan, rank_train, tokenizer=tokenizer, world_size=world_size)

    # ---- memory: checkpointing and the micro-batch from the model's size and this GPU ("auto"), before loading
    train, memory = memory_plan.apply(model, lora, rank_train, tokens_per_item=data.tokens_per_item, backend=backend,
                                      can_split=method.can_split_batch, announce=folder.main_process)

    # ---- model: from the backend (hf: base model, LoRA added by the trainer; unsloth: LoRA already on)
    setup = backend_setup(backend)(model, lora, train, seed=train["seed"], output_dir=folder.root, tokenizer_path=tokenizer_path)
    method.check_model(setup, data)
    loaded = setup.loaded

    # ---- config: the plan's keys as TrainingArguments + the method's own + what the backend decides
    config_class, own = method.config(train, data)
    warmup = run_warmup_steps(plan.schedule, plan.settings["train"], max_steps_override)  # the lock's, or for --max-steps
    planned = {**training_arguments(train, warmup_steps=warmup, checkpoints=folder.checkpoints,
                                    max_steps=max_steps_override if max_steps_override is not None else train["max_steps"],
                                    dtype=loaded.dtype, device=loaded.device,
                                    eval_steps=train["eval_steps"] if data.eval_dataset is not None else None,
                                    run_name=f"{plan.name}-{plan.plan_hash[:8]}"),
               **own, **setup.trainer_overrides}
    args = checked_config(config_class, planned)

    # ---- trainer, and what it reports while it trains (train.report_to: the Trainer's own trackers)
    tracked, untrack = tracking(train, plan_name=plan.name, plan_hash=plan.plan_hash, run_dir=folder.root)
    counter, stop, perf = TokenCounter(), StopFlag(), {"device": loaded.device}
    trainer_class, extra = method.trainer(data, tokenizer=tokenizer, setup=setup)
    align_pad_token(loaded.model, tokenizer)  # as the Trainer would, without its warning on every run
    trainer = trainer_class(
        model=loaded.model, args=args, train_dataset=data.train_dataset, eval_dataset=data.eval_dataset,
        processing_class=tokenizer, peft_config=setup.peft_config,
        # extra callbacks first: whatever they request at a step end is seen by ours at that step
        callbacks=[*extra_callbacks, *run_callbacks(metrics_path=folder.metrics, counter=counter, stop=stop, perf=perf,
                                                    show_progress=show_progress, all_scalars=method.log_all_scalars)],
        **extra,
    )
    refuse_changes(trainer.args, planned, who=type(trainer).__mro__[1].__name__)  # unsloth's trainer may rewrite args
    refuse_unapplied_fsdp(trainer, train)
    trainer.token_counter = counter
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    flops = method.flops(trainer.model, data, device=loaded.device)
    if flops:
        perf.update(flops_per_token=flops["flops_per_token"], peak_flops=flops.get("peak_flops"))
    if loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # ---- train: Ctrl-C becomes "save a checkpoint and stop"
    reset_metrics(folder)
    stop.install()
    t_train = time.perf_counter()
    try:  # with eval_steps, the Trainer also evaluates after the last step
        trainer.train(resume_from_checkpoint=folder.last_checkpoint if resume else None)
    finally:
        stop.uninstall()
        untrack()
    train_time = time.perf_counter() - t_train

    # ---- save: the adapter (+ tokenizer); from here on rank 0 alone writes
    trainer.save_model(str(folder.root))
    if not folder.main_process:
        return {}

    # ---- facts: the shared ones here, the method's own from its finish
    run = Finished(plan, train, data, trainer, tokenizer, counter, folder.root, folder.metrics, stop.requested)
    own_facts = method.finish(run)
    losses = [m["loss"] for m in read_metrics(folder.metrics) if m.get("loss") is not None]
    per_second = round(counter.real / train_time, 1) if train_time > 0 else None
    facts = {
        "name": plan.name,
        "plan_hash": plan.plan_hash,
        "lock": str(plan.lock_path),
        "rebuilt_artifacts": list(plan.rebuilt),
        "method": method.name,
        "backend": setup.backend,
        "backend_reason": backend_reason,
        "backend_facts": setup.facts,
        "versions": versions(),
        "device": device_name(loaded.device),
        "model": model_facts(model, setup, trainer),
        "settings": {"model": model, "lora": lora, "train": train, "max_steps_override": max_steps_override,
                     "tokenizer": tokenizer_path},
        "train": train_facts(trainer.state, losses, interrupted=stop.requested, resumed_from=folder.resumed_from,
                             train_time=train_time),
        "throughput_tokens_per_second": per_second,
        "tokens": token_facts(counter, note="counted in this process (a resumed run counts from its resume step)"),
        "memory_plan": memory,
        "tracking": {"report_to": train["report_to"], "run_name": args.run_name, "environment": tracked},
        "peak_memory": peak_memory(loaded.device),
        "distributed": distributed_facts(settings["train"], rank_train, world_size, per_second, trainer),
        "adapter_dir": ".",
        "checkpoint": relative(last_checkpoint(folder.checkpoints), folder.root),
        **({"flops": flops, "mfu": mfu(counter.real, train_time, flops)} if flops else {}),
        **finished_times(started_at, t0),
    }
    for key, value in own_facts.items():  # one level deep: a method may add to "tokens"
        facts[key] = {**facts[key], **value} if isinstance(facts.get(key), dict) and isinstance(value, dict) else value

    # ---- report
    (folder.root / "run.json").write_text(json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n")
    from ftc.runtime.report import write_report

    write_report(folder.root, facts, sections=method.report_sections(run, facts))
    if stop.requested:
        print(f"ftc: stopped at step {trainer.state.global_step}; checkpoint saved. Continue with --resume.", file=sys.stderr)
    return facts


def backend_setup(backend: str) -> Callable[..., ModelSetup]:
    """The ModelSetup function of a backend: hf's, or unsloth's (only inside the unsloth process)."""
    if backend == "unsloth":
        from ftc.runtime.backend_unsloth import unsloth_setup

        return unsloth_setup
    from ftc.runtime.backend_hf import hf_setup

    return hf_setup


TRAINER_STATE = "trainer_state.json"  # the Trainer's _save_checkpoint writes it after the weights, optimizer, scheduler and RNG


def checkpoint_state(path: Path) -> str | None:
    """None for a complete checkpoint, else what is wrong with it.

    Complete means the Trainer's own last file is there whole: trainer_state.json parses and
    names the folder's step. A `kill -9` while the Trainer saves leaves a folder without it
    (or with half of it), which transformers' get_last_checkpoint would still pick."""
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}, which the Trainer writes last"
    except (OSError, ValueError) as e:
        return f"{TRAINER_STATE} is unreadable ({e})"
    step = checkpoint_step(str(path))
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{TRAINER_STATE} is of step {state.get('global_step') if isinstance(state, dict) else '?'}, not {step}"
    return None


def scan_checkpoints(checkpoints: Path) -> tuple[list[Path], dict[Path, str]]:
    """The complete checkpoints, by step, and the incomplete ones with what they lack."""
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: checkpoint_step(str(p))) if checkpoints.is_dir() else []
    problems = {p: checkpoint_state(p) for p in found}
    return [p for p in found if problems[p] is None], {p: why for p, why in problems.items() if why is not None}


def last_checkpoint(checkpoints: Path) -> str | None:
    """The checkpoint a resume starts from: the last complete one (incomplete ones are skipped), or None."""
    complete, _ = scan_checkpoints(checkpoints)
    return str(complete[-1]) if complete else None


def refuse_resume(checkpoints: Path) -> None:
    """--resume needs a complete checkpoint: say so, naming incomplete ones when that is all there is."""
    complete, partial = scan_checkpoints(checkpoints)
    if complete:
        return
    if partial:
        raise FtcError("FTC763", folder=str(checkpoints),
                       partial="; ".join(f"{p.name} ({why})" for p, why in partial.items()))
    raise FtcError("FTC706", folder=str(checkpoints))


def open_run_folder(output_dir: Path, *, resume: bool) -> RunFolder:
    """Resume or fresh start, never two runs mixed in one folder silently.

    An incomplete checkpoint (the run was killed while saving it) is removed, saying so: it
    cannot be resumed from, and left in place the Trainer would write the same step into it."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    checkpoints = root / CHECKPOINTS
    if resume:
        refuse_resume(checkpoints)
    complete, partial = scan_checkpoints(checkpoints)
    last = str(complete[-1]) if complete else None
    if not resume and last is not None:
        raise FtcError("FTC707", folder=str(root))
    main_process = world()[0] == 0
    for path, why in partial.items():
        if main_process:
            shutil.rmtree(path, ignore_errors=True)
            start = f"resuming from {Path(last).name}" if resume and last else "starting from step 0"
            print(f"ftc: removed the incomplete {path.name} ({why}: the run stopped while saving it); {start}",
                  file=sys.stderr)
    return RunFolder(root, checkpoints, root / "metrics.jsonl", last, checkpoint_step(last) if resume else None,
                     main_process)


def reset_metrics(folder: RunFolder) -> None:
    """A fresh run starts an empty metrics.jsonl; a resumed one drops the lines past its checkpoint
    (those steps are trained, and logged, again)."""
    if not folder.main_process:
        return
    if folder.resumed_from is not None:
        truncate_metrics(folder.metrics, folder.resumed_from)
    else:
        folder.metrics.write_text("")
