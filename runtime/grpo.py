"""GRPO with LoRA on the hf backend (transformers + PEFT + TRL's GRPOTrainer), top to bottom.

Read it like `sft.py`: setup (checks, rewards, prompts, model, trainer), train, cleanup
(adapter, facts, report). The plan's settings pass straight through: the `train` keys are
GRPOConfig's own, `train.grpo` holds the generation and loss keys, the `lora` keys are
LoraConfig's own. The run folder has the same shape as an SFT run's.

Decisions that are not TRL defaults, and why:
- The batch arithmetic is checked before anything loads. In TRL 1.x a batch counts
  completions, and each prompt gets `num_generations` of them, so the generation batch
  (per_device_train_batch_size x gradient_accumulation_steps x processes) must hold whole
  groups; we say so in the recipe's words instead of TRL's ValueError.
- Rewards are the declared ones (`rewards.py`), weighted by GRPOConfig(reward_weights); the
  dataset keeps every compiled column, so the fields a reward reads reach it as kwargs. A
  field the data lacks is refused here, not scored as 0 at step 1.
- TRL 1.x dropped `max_prompt_length`, but the plan declares it: prompts are measured with
  the chat template TRL will apply, and those over the limit follow `train.overlong`
  (truncate: keep the last tokens, as TRL 0.x did; drop: leave the row out; error: stop).
  The counts go to run.json.
- Generation is plain `model.generate` (no vLLM): one process, nothing to launch.
- metrics.jsonl gets every scalar TRL logs for GRPO (total and per-reward means and stds,
  completion lengths, KL when beta > 0, entropy, clipping) besides loss and learning rate.
- Ctrl-C saves a checkpoint after the current step and stops; `resume=True` continues.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ftc.compiler.rewards import reward_from_dict
from ftc.compiler.schedule import check_grpo_batch
from ftc.errors import FtcError
from ftc.runtime.metrics import StopFlag, TokenCounter, callbacks as run_callbacks, read_metrics
from ftc.runtime import memory_plan
from ftc.runtime.model import load_tokenizer, model_setup, run_error
from ftc.runtime.rewards_trl import build_reward_funcs, reward_weights
from ftc.runtime.trainer_args import (checked_config, common_facts, open_run_folder, refuse_changes, reset_metrics,
                                      training_arguments)

REQUIRED = ("row_id", "prompt")


def train_grpo(
    *,
    train_data: Path,
    eval_data: Path | None,
    model: dict,
    lora: dict,
    train: dict,
    tokenizer_path: str,
    output_dir: Path,
    recipe_dir: Path,
    resume: bool = False,
    plan_hash: str = "",
    max_steps_override: int | None = None,
    name: str = "",
    extra_callbacks: Sequence[Any] = (),
    show_progress: bool = True,
    backend: str = "hf",
) -> dict:
    """Train a LoRA adapter with GRPO on the prompts of `train_data`; return the run facts
    (also written to run.json).

    Writes to output_dir: the PEFT adapter and tokenizer, checkpoints/, metrics.jsonl,
    run.json, report.md, loss.png and rewards.png. The eval prompts are generated for and
    scored every `train.eval_steps` steps (and after the last one); without eval_steps they
    are not used, since generating for a whole eval split is a cost to ask for. `backend`
    picks the model loader, as for train_sft.
    """
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    grpo = train.get("grpo") or {}
    if train.get("method", "grpo") != "grpo" or not grpo:
        raise run_error("train_grpo needs train.method \"grpo\" and a train.grpo section", "recompile the recipe with train.method: grpo")

    # ---- checks that need nothing loaded: batch arithmetic, rewards (python files unchanged)
    check_grpo_batch(train, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    resolved = list(grpo.get("rewards") or [])
    if not resolved:
        raise FtcError("FTC105", path="train.grpo.rewards", reason="GRPO needs at least one reward, and the plan declares none",
                       hint='declare one, e.g. {"kind": "regex", "pattern": "</reasoning>"}, and recompile')
    reward_funcs = build_reward_funcs(resolved, Path(recipe_dir))

    # ---- resume or fresh start: never mix two runs in one folder silently
    folder = open_run_folder(output_dir, resume=resume)
    output_dir, checkpoints, metrics_path = folder.root, folder.checkpoints, folder.metrics
    last_checkpoint, resumed_from, main_process = folder.last_checkpoint, folder.resumed_from, folder.main_process
    reset_metrics(folder)

    # ---- data: the compiler's prompt artifacts, measured with the chat template TRL applies
    tokenizer = load_tokenizer(tokenizer_path)
    max_prompt = int(grpo.get("max_prompt_length", 512))
    overlong = train.get("overlong", "truncate")
    use_eval = eval_data is not None and train.get("eval_steps") is not None
    train_table, train_prompts = _read_prompts(Path(train_data), resolved, tokenizer, max_prompt, overlong)
    eval_table, eval_prompts = _read_prompts(Path(eval_data), resolved, tokenizer, max_prompt, overlong) if use_eval else (None, {})

    # ---- memory: gradient checkpointing from the model's size and this GPU ("auto"), before loading;
    # a micro-batch holds per_device_train_batch_size completions with their prompts
    train, memory = memory_plan.apply(model, lora, train, tokens_per_item=max_prompt + int(grpo.get("max_completion_length", 256)),
                                      backend=backend, can_split=False, announce=main_process)

    # ---- model: from the backend (hf: base model, LoRA added by the trainer; unsloth: LoRA already on)
    seed = int(train.get("seed", 3407))
    setup = model_setup(backend)(model, lora, train, seed=seed, output_dir=output_dir, tokenizer_path=tokenizer_path)
    loaded = setup.loaded

    # ---- trainer: GRPOConfig takes the plan's keys as they are
    max_steps = int(max_steps_override if max_steps_override is not None else train.get("max_steps", -1))
    args, planned = _grpo_config(train, grpo, resolved, checkpoints=checkpoints, max_steps=max_steps, dtype=loaded.dtype,
                                 device=loaded.device, eval_steps=train.get("eval_steps") if use_eval else None,
                                 overrides=setup.trainer_overrides)
    counter, stop = TokenCounter(), StopFlag()
    trainer = _trainer_class()(
        model=loaded.model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=_dataset(train_table),
        eval_dataset=_dataset(eval_table) if eval_table is not None else None,
        processing_class=tokenizer,
        peft_config=setup.peft_config,
        # extra callbacks first: whatever they request at a step end is seen by ours at that step
        callbacks=[*extra_callbacks, *run_callbacks(metrics_path=metrics_path, counter=counter, stop=stop,
                                                    show_progress=show_progress, all_scalars=True)],
    )
    refuse_changes(trainer.args, planned, who=type(trainer).__mro__[1].__name__)  # unsloth's trainer may rewrite args
    trainer.token_counter = counter
    trainer.max_prompt_length = max_prompt
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # ---- train: Ctrl-C becomes "save a checkpoint and stop"
    stop.install()
    t_train = time.perf_counter()
    try:  # with eval_steps, the Trainer also evaluates after the last step
        trainer.train(resume_from_checkpoint=last_checkpoint if resume else None)
    finally:
        stop.uninstall()
    train_time = time.perf_counter() - t_train
    state = trainer.state
    interrupted = stop.requested

    # ---- cleanup: adapter (+ tokenizer), facts, report
    trainer.save_model(str(output_dir))
    if not main_process:
        return {}
    metrics = read_metrics(metrics_path)
    steps = [m for m in metrics if "reward" in m]
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    evals = [m for m in metrics if "eval_reward" in m]
    names = [d["name"] for d in resolved]
    facts = common_facts(name=name, plan_hash=plan_hash, method="grpo", setup=setup, model=model, lora=lora, train=train,
                         tokenizer_path=tokenizer_path, max_steps_override=max_steps_override, trainer=trainer, losses=losses,
                         interrupted=interrupted, resumed_from=resumed_from, train_time=train_time, counter=counter,
                         memory=memory, checkpoints=checkpoints, output_dir=output_dir, started_at=started_at, t0=t0)
    facts.update({
        "data": {
            "train": {"path": str(train_data), "rows": train_table.num_rows, "prompts": train_prompts},
            "eval": {"path": str(eval_data), "rows": eval_table.num_rows, "prompts": eval_prompts} if eval_table is not None else None,
        },
        "grpo": {
            "num_generations": args.num_generations,
            "generation_batch_size": args.generation_batch_size,
            "steps_per_generation": args.steps_per_generation,
            "prompts_per_generation": args.generation_batch_size // args.num_generations,
            "max_completion_length": args.max_completion_length,
            "beta": args.beta,
            "loss_type": args.loss_type,
            "epsilon": args.epsilon,
            "epsilon_high": args.epsilon_high,
            "mask_truncated_completions": args.mask_truncated_completions,
            "scale_rewards": args.scale_rewards,
            "first_reward": steps[0]["reward"] if steps else None,
            "last_reward": steps[-1]["reward"] if steps else None,
            "rewards": [
                {"name": d["name"], "kind": d["kind"], "weight": d["weight"],
                 "first_mean": _first(steps, f"rewards/{d['name']}/mean"), "last_mean": _last(steps, f"rewards/{d['name']}/mean")}
                for d in resolved
            ],
            "last_completion_mean_length": _last(steps, "completions/mean_length"),
            # groups whose completions all scored alike give no advantage, hence no learning signal
            "last_frac_reward_zero_std": _last(steps, "frac_reward_zero_std"),
            "last_kl": _last(steps, "kl"),
        },
        "tokens": {
            "real": counter.real,
            "slots": counter.slots,
            "trained": counter.trained,
            "padding_efficiency": counter.real / counter.slots if counter.slots else None,
            "note": "prompt + completion tokens of the batches trained on, counted in this process; trained = completion tokens",
        },
        "eval": {"step": evals[-1]["step"], "reward": evals[-1]["eval_reward"],
                 "rewards": {n: evals[-1].get(f"eval_rewards/{n}/mean") for n in names}} if evals else {},
    })
    (output_dir / "run.json").write_text(json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n")
    from ftc.runtime.report import write_report

    write_report(output_dir, facts, sections=[_reward_report(output_dir, facts, metrics, names)])
    if interrupted:
        print(f"ftc: stopped at step {state.global_step}; checkpoint saved. Continue with --resume.", file=sys.stderr)
    return facts


def _read_prompts(path: Path, resolved: list[dict], tokenizer: Any, max_prompt: int, overlong: str) -> tuple[Any, dict]:
    """The artifact's rows, checked against the contract and the rewards, with prompts over
    `max_prompt` tokens handled by `overlong`; returns the table and the facts for run.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing or table.num_rows == 0:
        raise FtcError("FTC601", file=str(path), reason=f"missing columns {missing}" if missing else "no rows",
                       hint="recompile the plan: the prompt artifact does not follow the compiler's contract")
    for i, d in enumerate(resolved):
        lacking = [f for f in reward_from_dict(d).fields() if f not in table.column_names]
        if lacking:
            raise FtcError("FTC105", path=f"train.grpo.rewards[{i}]",
                           reason=f"reward {d['name']!r} reads field(s) {', '.join(lacking)}, which {path.name} does not have "
                                  f"(it has: {', '.join(table.column_names)})",
                           hint="recompile the plan so the data keeps the fields the rewards read")
    prompts = table.column("prompt").to_pylist()
    if isinstance(prompts[0], list):  # chat turns: TRL applies the chat template, so measure with it
        ids = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer(text=prompts)["input_ids"]
    lengths = [len(x) for x in ids]
    over = [i for i, n in enumerate(lengths) if n > max_prompt]
    facts = {"max_tokens": max(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1), "limit": max_prompt,
             "over_limit": len(over), "overlong": overlong, "dropped": 0}
    if over:
        worst = max(over, key=lambda i: lengths[i])
        what = f"{len(over)} of {len(lengths)} prompts in {path.name} are longer than train.grpo.max_prompt_length ({max_prompt} tokens)"
        if overlong == "error":
            raise run_error(f"{what}; the longest, row {table.column('row_id')[worst]}, has {lengths[worst]}",
                            "raise train.grpo.max_prompt_length, or set train.overlong to truncate or drop")
        if overlong == "drop":
            keep = pa.array([n <= max_prompt for n in lengths])
            table = table.filter(keep)
            facts["dropped"] = len(over)
            if table.num_rows == 0:
                raise run_error(f"{what}: none is left", "raise train.grpo.max_prompt_length")
        print(f"ftc: {what}; {'dropped' if overlong == 'drop' else 'their first tokens are cut (kept: the last ' + str(max_prompt) + ')'}",
              file=sys.stderr)
    return table, facts


def _dataset(table: Any) -> Any:
    """A datasets.Dataset over the Arrow table: chat prompts stay lists of {role, content}."""
    import datasets

    return datasets.Dataset(table)


def _grpo_config(train: dict, grpo: dict, resolved: list[dict], *, checkpoints: Path, max_steps: int, dtype: str, device: str,
                 eval_steps: int | None, overrides: dict | None = None) -> tuple[Any, dict]:
    """GRPOConfig from the resolved `train` section (and the keywords it was built from);
    only what TRL must not decide is added, and what the backend decides (`overrides`)."""
    from trl import GRPOConfig

    g = int(grpo.get("num_generations", 8))
    batch = int(train.get("per_device_train_batch_size", 2))
    kwargs = training_arguments(train, checkpoints=checkpoints, max_steps=max_steps, dtype=dtype, device=device,
                                eval_steps=eval_steps)
    # eval generates whole groups per batch, without accumulation: round the batch up to one
    kwargs["per_device_eval_batch_size"] = -(-batch // g) * g
    kwargs.update(
        # GRPO: generation, rewards and loss, as the plan declares them
        num_generations=g,
        max_completion_length=int(grpo.get("max_completion_length", 256)),
        temperature=float(grpo.get("temperature", 1.0)),
        top_p=float(grpo.get("top_p", 1.0)),
        beta=float(grpo.get("beta", 0.0)),
        loss_type=grpo.get("loss_type", "dapo"),
        # written out, not left to defaults: unsloth's config fills unset ones with its own
        # choices for dapo (epsilon_high 0.28, masked truncations), which would make the two
        # backends train one plan differently
        epsilon=float(grpo.get("epsilon", 0.2)),
        epsilon_high=float(grpo.get("epsilon_high", grpo.get("epsilon", 0.2))),
        mask_truncated_completions=bool(grpo.get("mask_truncated_completions", False)),
        scale_rewards=grpo.get("scale_rewards", "group"),
        reward_weights=reward_weights(resolved),
        use_vllm=False,
        remove_unused_columns=False,  # the rewards read the dataset's own fields
        log_completions=False,
    )
    kwargs.update(overrides or {})
    return checked_config(GRPOConfig, kwargs), kwargs


def _trainer_class() -> type:
    """GRPOTrainer that cuts prompts to max_prompt_length (TRL 1.x no longer does) and
    counts the tokens of every batch it trains on."""
    from trl import GRPOTrainer

    if not hasattr(GRPOTrainer, "_tokenize_prompts"):
        raise run_error("this TRL version's GRPOTrainer has no _tokenize_prompts, so max_prompt_length cannot be applied",
                        "use trl 1.15 or 1.16 (see README, Versions)")

    class FtcGRPOTrainer(GRPOTrainer):
        token_counter: TokenCounter | None = None
        max_prompt_length: int | None = None

        def _tokenize_prompts(self, prompts):
            prompt_ids, images, multimodal = super()._tokenize_prompts(prompts)
            if self.max_prompt_length:  # keep the end: the question and the generation prompt
                prompt_ids = [ids[-self.max_prompt_length:] for ids in prompt_ids]
            return prompt_ids, images, multimodal

        def _prepare_inputs(self, generation_batch):
            inputs = super()._prepare_inputs(generation_batch)
            if self.token_counter is not None and self.model.training:
                prompt, completion = inputs["prompt_mask"], inputs["completion_mask"]
                self.token_counter.add_counts(slots=prompt.numel() + completion.numel(),
                                              real=prompt.sum() + completion.sum(), trained=completion.sum())
            return inputs

    return FtcGRPOTrainer


def _first(rows: list[dict], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key) is not None), None)


def _last(rows: list[dict], key: str) -> Any:
    return _first(rows[::-1], key)


def plot_rewards(metrics: list[dict], names: list[str], path: Path) -> bool:
    """rewards.png: the weighted total and each declared reward's mean per step; eval as points."""
    from ftc.runtime.report import plot_lines

    train = [m for m in metrics if m.get("reward") is not None]
    series = [(label, style, [(m["step"], m[key]) for m in train if m.get(key) is not None])
              for key, label, style in [("reward", "total (weighted)", "-"), *[(f"rewards/{n}/mean", n, "--") for n in names]]]
    series.append(("eval total", "o", [(m["step"], m["eval_reward"]) for m in metrics if m.get("eval_reward") is not None]))
    return plot_lines(path, series, ylabel="reward (mean over completions)")


def _reward_report(output_dir: Path, facts: dict, metrics: list[dict], names: list[str]) -> str:
    """The GRPO section of report.md: what each declared reward did, and the reward curve."""
    g = facts["grpo"]
    rows = [f"| {r['name']} | {r['kind']} | {r['weight']:g} | {_num(r['first_mean'])} | {_num(r['last_mean'])} | "
            f"{_num(facts['eval'].get('rewards', {}).get(r['name']))} |" for r in g["rewards"]]
    lines = [
        "## Rewards", "",
        f"{g['num_generations']} completions per prompt, {g['prompts_per_generation']} prompt(s) per generation, "
        f"at most {g['max_completion_length']} new tokens; loss {g['loss_type']}, beta {g['beta']:g}.", "",
        "| reward | kind | weight | first mean | last mean | eval mean |", "|---|---|---|---|---|---|",
        f"| **total** (weighted) | | | {_num(g['first_reward'])} | {_num(g['last_reward'])} | {_num(facts['eval'].get('reward'))} |",
        *rows, "",
        f"Last mean completion length {_num(g['last_completion_mean_length'])} tokens"
        + (f"; last KL {_num(g['last_kl'])}." if g["last_kl"] is not None else "."),
        "",
    ]
    if g["last_frac_reward_zero_std"]:
        lines += [f"> At the last step {g['last_frac_reward_zero_std']:.0%} of the prompt groups scored alike on every "
                  "completion: those give no advantage, so nothing is learned from them.", ""]
    prompts = facts["data"]["train"]["prompts"]
    if prompts["over_limit"]:
        lines += [f"> {prompts['over_limit']} train prompts were over max_prompt_length ({prompts['limit']} tokens): "
                  f"{'dropped' if prompts['overlong'] == 'drop' else 'cut to their last tokens'}.", ""]
    if plot_rewards(metrics, names, output_dir / "rewards.png"):
        lines += ["![rewards](rewards.png)", ""]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"
