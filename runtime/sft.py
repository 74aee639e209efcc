"""SFT with LoRA on the hf backend (transformers + PEFT + TRL's SFTTrainer), top to bottom.

Read it like torchtune's `lora_finetune_single_device.py`: setup (data, model, trainer),
train, cleanup (adapter, eval, run.json, report). The plan's settings are passed straight
through: the `train` keys are SFTConfig's own, the `lora` keys LoraConfig's own.

Decisions that are not TRL defaults, and why:
- The data arrives tokenized and masked from the compiler, so TRL's dataset preparation is
  skipped (`skip_prepare_dataset`): nothing is re-tokenized, truncated or re-packed here.
- Packs planned by the compiler are fed padding-free (one flattened row per batch, with
  restarting position_ids); the attention kernel must honour those boundaries
  (`model.PACKING_SAFE_ATTENTION`), and sdpa does once transformers sees no attention_mask
  and no cache, which is why `use_cache` is switched off for training.
- Data order comes from the Trainer's seedable sampler seeded with `train.seed`; resuming
  restores the optimizer, scheduler and RNG states and skips the batches already seen, so
  an interrupted-and-resumed run ends where an uninterrupted one does.
- Ctrl-C saves a checkpoint after the current step and stops; `resume=True` continues.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pyarrow.compute as pc

from ftc.runtime import data as token_data
from ftc.runtime.trainer_args import (checked_config, common_facts, open_run_folder, refuse_changes, reset_metrics,
                                      training_arguments)
from ftc.runtime.metrics import StopFlag, TokenCounter, callbacks as run_callbacks, read_metrics
from ftc.runtime import memory_plan
from ftc.runtime.model import load_tokenizer, model_setup, run_error



def train_sft(
    *,
    train_tokens: Path,
    eval_tokens: Path | None,
    model: dict,
    lora: dict,
    train: dict,
    tokenizer_path: str,
    output_dir: Path,
    resume: bool = False,
    plan_hash: str = "",
    max_steps_override: int | None = None,
    name: str = "",
    extra_callbacks: Sequence[Any] = (),
    show_progress: bool = True,
    backend: str = "hf",
) -> dict:
    """Train a LoRA adapter on `train_tokens`; return the run facts (also written to run.json).

    Writes to output_dir: the PEFT adapter and tokenizer, checkpoints/, metrics.jsonl,
    run.json, report.md and loss.png. `extra_callbacks` are transformers TrainerCallbacks
    (tests use one to interrupt a run at a given step). `backend` picks the model loader
    (`model.hf_setup`, or `unsloth_backend.unsloth_setup` inside the unsloth process); it
    returns the model and what the trainer must know about it.
    """
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    # ---- resume or fresh start: never mix two runs in one folder silently
    folder = open_run_folder(output_dir, resume=resume)
    output_dir, checkpoints, metrics_path = folder.root, folder.checkpoints, folder.metrics
    last_checkpoint, resumed_from, main_process = folder.last_checkpoint, folder.resumed_from, folder.main_process

    # ---- data: the compiler's artifacts, checked against the contract
    max_len = int(model.get("max_seq_length", 2048))
    train_table = token_data.read_tokens(Path(train_tokens), max_seq_length=max_len)
    eval_table = token_data.read_tokens(Path(eval_tokens), max_seq_length=max_len) if eval_tokens else None
    packed = "pack" in train_table.column_names
    if eval_table is not None and not packed and "pack" in eval_table.column_names:
        # one collator serves train and eval; a padding collator would let packed eval rows
        # see each other, so the eval rows go unpacked
        eval_table = eval_table.drop_columns(["pack"])

    # ---- memory: checkpointing and micro-batch from the model's size and this GPU ("auto"), before loading
    longest = max_len if packed else int(pc.max(train_table.column("length")).as_py())
    train, memory = memory_plan.apply(model, lora, train, tokens_per_item=longest, backend=backend, announce=main_process)

    # ---- model: from the backend (hf: base model, LoRA added by the trainer; unsloth: LoRA already on)
    seed = int(train.get("seed", 3407))
    setup = model_setup(backend)(model, lora, train, seed=seed, output_dir=output_dir, tokenizer_path=tokenizer_path)
    loaded = setup.loaded
    base = loaded.model
    vocab = base.get_input_embeddings().num_embeddings
    if token_data.max_token_id(train_table) >= vocab:
        raise run_error(
            f"token id {token_data.max_token_id(train_table)} in {train_tokens} is outside the model's vocabulary ({vocab})",
            "the plan was compiled with another tokenizer than this model's; compile with the model's tokenizer",
        )
    attention = setup.attention
    if packed and not setup.packing_safe:
        raise run_error(f"packing with attention {attention!r}, which would let packed rows attend to each other", "use sdpa or flash-attention, or set train.packing=false")
    base.config.use_cache = False  # a cache disables transformers' packed-sequence masks
    tokenizer = load_tokenizer(tokenizer_path)

    # ---- trainer: SFTConfig takes the plan's keys as they are
    max_steps = int(max_steps_override if max_steps_override is not None else train.get("max_steps", -1))
    eval_steps = train.get("eval_steps")
    args, planned = _sft_config(train, checkpoints=checkpoints, max_steps=max_steps, dtype=loaded.dtype, device=loaded.device,
                                eval_steps=eval_steps if eval_table is not None else None, overrides=setup.trainer_overrides)
    counter, stop, perf = TokenCounter(), StopFlag(), {}
    trainer = _trainer_class()(
        model=base,
        args=args,
        train_dataset=token_data.to_dataset(train_table),
        eval_dataset=token_data.to_dataset(eval_table) if eval_table is not None else None,
        processing_class=tokenizer,
        data_collator=token_data.collator(tokenizer.pad_token_id, packed=packed, lengths_key=setup.packed_lengths_key),
        peft_config=setup.peft_config,
        # extra callbacks first: whatever they request at a step end is seen by ours at that step
        callbacks=[*extra_callbacks, *run_callbacks(metrics_path=metrics_path, counter=counter, stop=stop,
                                                    show_progress=show_progress, perf=perf)],
    )
    refuse_changes(trainer.args, planned, who=type(trainer).__mro__[1].__name__)  # unsloth's trainer may rewrite args
    trainer.token_counter = counter
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    flops = _flops_facts(trainer.model, train_table, device=loaded.device)
    perf.update(flops_per_token=flops["flops_per_token"], peak_flops=flops.get("peak_flops"), device=loaded.device)
    if loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # ---- train: Ctrl-C becomes "save a checkpoint and stop"
    reset_metrics(folder)
    stop.install()
    t_train = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=last_checkpoint if resume else None)
    finally:
        stop.uninstall()
    train_time = time.perf_counter() - t_train
    state = trainer.state
    interrupted = stop.requested

    # ---- cleanup: adapter (+ tokenizer), eval, facts, report
    trainer.save_model(str(output_dir))
    eval_facts: dict = {}
    if not main_process:
        return {}
    if eval_table is not None and not interrupted:
        from ftc.runtime.evaluate import eval_loss

        eval_facts = eval_loss(trainer.model, Path(eval_tokens), pad_token_id=tokenizer.pad_token_id,
                               batch_size=int(train.get("per_device_train_batch_size", 2)))
        with open(metrics_path, "a") as f:
            # "final": token-weighted over the whole eval set; the Trainer's eval_steps lines are batch means
            f.write(json.dumps({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "final": True,
                                "eval_loss": eval_facts["loss"], "eval_perplexity": eval_facts["perplexity"]}) + "\n")

    metrics = read_metrics(metrics_path)
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    train_stats = token_data.token_stats(train_table)
    facts = common_facts(name=name, plan_hash=plan_hash, method="sft", setup=setup, model=model, lora=lora, train=train,
                         tokenizer_path=tokenizer_path, max_steps_override=max_steps_override, trainer=trainer, losses=losses,
                         interrupted=interrupted, resumed_from=resumed_from, train_time=train_time, counter=counter,
                         memory=memory, checkpoints=checkpoints, output_dir=output_dir, started_at=started_at, t0=t0)
    facts.update({
        "data": {
            "train": {"path": str(train_tokens), **asdict(train_stats)},
            "eval": {"path": str(eval_tokens), **asdict(token_data.token_stats(eval_table))} if eval_table is not None else None,
        },
        "tokens": {
            "real": counter.real,
            "slots": counter.slots,
            "trained": counter.trained,
            "padding_efficiency": counter.real / counter.slots if counter.slots else None,
            "pack_fill": train_stats.tokens / (train_stats.sequences * max_len) if packed else None,
            "note": "counted in this process (a resumed run counts from its resume step)",
        },
        "flops": flops,
        "mfu": (round(counter.real / train_time * flops["flops_per_token"] / flops["peak_flops"], 4)
                if train_time > 0 and flops.get("peak_flops") else None),
        "eval": eval_facts,
    })
    (output_dir / "run.json").write_text(json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n")
    from ftc.runtime.report import write_report

    write_report(output_dir, facts)
    if interrupted:
        print(f"ftc: stopped at step {state.global_step}; checkpoint saved. Continue with --resume.", file=sys.stderr)
    return facts


def _sft_config(train: dict, *, checkpoints: Path, max_steps: int, dtype: str, device: str, eval_steps: int | None,
                overrides: dict | None = None) -> Any:
    """SFTConfig from the resolved `train` section; only what TRL must not decide is added,
    and what the backend decides (`overrides`: unsloth checkpoints inside the model)."""
    from trl import SFTConfig

    kwargs = training_arguments(train, checkpoints=checkpoints, max_steps=max_steps, dtype=dtype, device=device,
                                eval_steps=eval_steps)
    # The compiler already tokenized, masked, truncated and packed: TRL must not redo any of it.
    kwargs.update(dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False, padding_free=False,
                  completion_only_loss=None)
    kwargs = {**kwargs, **(overrides or {})}
    return checked_config(SFTConfig, kwargs), kwargs


def _trainer_class() -> type:
    """SFTTrainer that counts the real tokens and slots of every batch it trains on."""
    from trl import SFTTrainer

    class FtcSFTTrainer(SFTTrainer):
        token_counter: TokenCounter | None = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.token_counter is not None:
                self.token_counter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    return FtcSFTTrainer


def _flops_facts(peft_model: Any, table: Any, *, device: str) -> dict:
    """FLOPs per token and the GPU's peak, for MFU."""
    from ftc.runtime.flops import mean_causal_context, model_flops, peak_flops

    flops = model_flops(peft_model, mean_causal_context(table.column("length").to_pylist()))
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
        flops["peak_flops"] = peak_flops(name)
        flops["peak_note"] = f"dense bf16 of {name}" + (" (measured on the lent H200)" if flops["peak_flops"] and ("H200" in name or "H100" in name) else "")
    return flops
