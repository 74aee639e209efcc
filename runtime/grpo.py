"""GRPO: what is particular to group-relative policy optimization in the run skeleton (session.py).

The data is the compiler's prompt artifact; completions are generated, scored by the plan's
declared rewards (`rewards.py`) and trained on by TRL's GRPOTrainer. The `train` keys are
GRPOConfig's own, `train.grpo` holds the generation and loss keys; the run folder has the
same shape as an SFT run's, with a rewards section and rewards.png added.

Decisions that are not TRL defaults, and why:
- The batch arithmetic is checked before anything loads (`check_grpo_batch`): in TRL 1.x a
  batch counts completions, so the memory plan never cuts it into other micro-batches either.
- Rewards are the declared ones, weighted by GRPOConfig(reward_weights); the dataset keeps
  every compiled column, so the fields a reward reads reach it as kwargs. A field the data
  lacks is refused here, not scored as 0 at step 1.
- Generation starts from the prompt ids the compiler made (`encode_prompt`, in the token
  artifact; the ids `ftc infer` feeds too), handed to TRL in place of its own tokenization.
- TRL 1.x dropped `max_prompt_length`, but the plan declares it: prompts over the limit follow `train.overlong`
  (truncate: keep the last tokens, as TRL 0.x did; drop: leave the row out; error: stop).
  The counts go to run.json.
- The clipping and reward scaling are written out, not left to defaults: unsloth's config
  fills unset ones with its own choices for dapo (epsilon_high 0.28, masked truncations),
  which would make the two backends train one plan differently.
- Generation (`train.grpo.generation`, `generation.py`): "auto" samples from a generation copy
  with the LoRA merged in (re-merged after every optimizer step; static compiled KV cache on
  CUDA), since the measured step is generation through the unmerged adapter; "generate" is
  TRL's own; "vllm" TRL's colocated vLLM. The log-probs of the loss come from the training model
  on every path. run.json's grpo.generation says what ran, why, and what the merges cost.
- The eval prompts are generated for and scored every `train.eval_steps` steps (and after the
  last one); without eval_steps they are not used, since generating for a whole eval split is
  a cost to ask for.
- metrics.jsonl gets every scalar TRL logs for GRPO (total and per-reward means and stds,
  completion lengths, KL when beta > 0, entropy, clipping) besides loss and learning rate.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc.compiler.lock import Plan
from ftc.compiler.rewards import reward_from_dict
from ftc.compiler.schedule import check_grpo_batch
from ftc.errors import FtcError
from ftc.runtime.metrics import TokenCounter, read_metrics
from ftc.runtime.generation import FAST, VLLM, GenerationChoice, MergedGenerator, for_backend, for_plan
from ftc.runtime.token_data import read_artifact
from ftc.runtime.model import ModelSetup
from ftc.runtime.rewards_trl import build_reward_funcs, reward_weights
from ftc.runtime.session import Finished

__all__ = ["METHOD"]

REQUIRED = ("row_id", "prompt")


@dataclass(frozen=True)
class PromptData:
    """The plan's prompt artifacts, checked against the contract and the rewards, as the trainer's datasets."""

    train_path: Path
    eval_path: Path | None
    train_table: Any  # pyarrow.Table
    eval_table: Any | None  # None unless train.eval_steps asks for eval
    prompt_facts: dict  # per split: lengths against max_prompt_length, what train.overlong did
    rewards: list[dict]  # the resolved reward declarations
    reward_funcs: list[Any]
    max_prompt_length: int
    train_dataset: Any
    eval_dataset: Any | None
    tokens_per_item: int
    prompt_ids: dict  # prompt_key(prompt) -> the compiled prompt ids (encode_prompt's), train and eval
    generation: GenerationChoice  # what generates the completions, and why


class GRPO:
    name = "grpo"
    can_split_batch = False  # a batch is a group of completions (see check_grpo_batch)
    log_all_scalars = True  # rewards, completions, kl, clipping

    def prepare(self, plan: Plan, train: dict, *, tokenizer: Any, world_size: int) -> PromptData:
        grpo = train["grpo"]
        check_grpo_batch(train, world_size=world_size)
        generation = for_plan(train, plan.settings["model"], world_size=world_size)  # "vllm" without vllm: refused before any model loads
        resolved = list(grpo["rewards"])
        if not resolved:
            raise FtcError("FTC750", path="train.grpo.rewards")
        reward_funcs = build_reward_funcs(resolved, plan.recipe_dir)
        train_path, eval_path = plan.artifact("data", "train"), plan.artifact("data", "eval")
        max_prompt, overlong = grpo["max_prompt_length"], train["overlong"]
        use_eval = eval_path is not None and train["eval_steps"] is not None
        prompt_ids: dict[str, list[int]] = {}  # prompt -> the compiled ids TRL generates from (see _trainer_class)
        train_table, train_prompts = _read_prompts(plan, "train", resolved, max_prompt, overlong, prompt_ids)
        eval_table, eval_prompts = (_read_prompts(plan, "eval", resolved, max_prompt, overlong, prompt_ids) if use_eval
                                    else (None, {}))
        # a micro-batch holds per_device_train_batch_size completions with their prompts
        return PromptData(train_path, eval_path, train_table, eval_table, {"train": train_prompts, "eval": eval_prompts},
                          resolved, reward_funcs, max_prompt, _dataset(train_table),
                          _dataset(eval_table) if eval_table is not None else None,
                          max_prompt + grpo["max_completion_length"], prompt_ids, generation)

    def check_model(self, setup: ModelSetup, data: PromptData) -> None:
        pass  # the prompt ids come from the compiler's token artifact, checked against the contract when read

    def config(self, train: dict, data: PromptData) -> tuple[type, dict]:
        from trl import GRPOConfig

        grpo = train["grpo"]
        g = grpo["num_generations"]
        epsilon_high = grpo.get("epsilon_high")  # optional in the schema: absent means the same as epsilon
        return GRPOConfig, dict(
            # eval generates whole groups per batch, without accumulation: round the batch up to one
            per_device_eval_batch_size=-(-train["per_device_train_batch_size"] // g) * g,
            num_generations=g,
            max_completion_length=grpo["max_completion_length"],
            temperature=float(grpo["temperature"]),
            top_p=float(grpo["top_p"]),
            beta=float(grpo["beta"]),
            loss_type=grpo["loss_type"],
            epsilon=float(grpo["epsilon"]),
            epsilon_high=float(grpo["epsilon"] if epsilon_high is None else epsilon_high),
            mask_truncated_completions=grpo["mask_truncated_completions"],
            scale_rewards=grpo["scale_rewards"],
            reward_weights=reward_weights(data.rewards),
            use_vllm=data.generation.path == VLLM,
            **({"vllm_mode": "colocate"} if data.generation.path == VLLM else {}),
            remove_unused_columns=False,  # the rewards read the dataset's own fields
            log_completions=False,
        )

    def trainer(self, data: PromptData, *, tokenizer: Any, setup: ModelSetup) -> tuple[type, dict]:
        choice = for_backend(data.generation, setup.backend)  # what generates, now that the backend is known
        trainer_class = _trainer_class(data.max_prompt_length, data.prompt_ids, generation=choice)
        print(f"ftc: GRPO generation: {choice.path} ({choice.reason})", file=sys.stderr)
        return trainer_class, {"reward_funcs": data.reward_funcs}

    def flops(self, model: Any, data: PromptData, *, device: str) -> None:
        return None  # generation dominates a GRPO step; the training FLOPs alone would misstate MFU

    def finish(self, run: Finished) -> dict:
        data, args = run.data, run.trainer.args
        metrics = read_metrics(run.metrics_path)
        steps = [m for m in metrics if "reward" in m]
        evals = [m for m in metrics if "eval_reward" in m]
        names = [d["name"] for d in data.rewards]
        prompts = data.prompt_facts
        return {
            "data": {
                "train": {"path": str(data.train_path), "rows": data.train_table.num_rows, "prompts": prompts["train"]},
                "eval": ({"path": str(data.eval_path), "rows": data.eval_table.num_rows, "prompts": prompts["eval"]}
                         if data.eval_table is not None else None),
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
                # single steps are noisy (one prompt group each): the means over the first and last quarter of the steps
                "first_quarter_reward": _quarter(steps, "reward", first=True),
                "last_quarter_reward": _quarter(steps, "reward", first=False),
                "rewards": [
                    {"name": d["name"], "kind": d["kind"], "weight": d["weight"],
                     "first_mean": _first(steps, f"rewards/{d['name']}/mean"), "last_mean": _last(steps, f"rewards/{d['name']}/mean"),
                     "first_quarter_mean": _quarter(steps, f"rewards/{d['name']}/mean", first=True),
                     "last_quarter_mean": _quarter(steps, f"rewards/{d['name']}/mean", first=False)}
                    for d in data.rewards
                ],
                "generation": _generation_facts(run.trainer.generation_choice, run.trainer),
                "last_completion_mean_length": _last(steps, "completions/mean_length"),
                # groups whose completions all scored alike give no advantage, hence no learning signal
                "last_frac_reward_zero_std": _last(steps, "frac_reward_zero_std"),
                "last_kl": _last(steps, "kl"),
            },
            "tokens": {"note": "prompt + completion tokens of the batches trained on, counted in this process; "
                               "trained = completion tokens"},
            "eval": {"step": evals[-1]["step"], "reward": evals[-1]["eval_reward"],
                     "rewards": {n: evals[-1].get(f"eval_rewards/{n}/mean") for n in names}} if evals else {},
        }

    def report_sections(self, run: Finished, facts: dict) -> list[str]:
        names = [d["name"] for d in run.data.rewards]
        return [_reward_report(run.output_dir, facts, read_metrics(run.metrics_path), names)]


METHOD = GRPO()


def prompt_key(prompt: Any) -> str:
    """A prompt as a dict key: the text, or the chat turns as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _read_prompts(plan: Plan, split: str, resolved: list[dict], max_prompt: int, overlong: str,
                  prompt_ids: dict[str, list[int]]) -> tuple[Any, dict]:
    """The split's prompt rows, checked against the contract and the rewards, each with the ids the
    compiler made for it (`encode_prompt`, the ids `ftc infer` feeds too: nothing is tokenized again
    here); prompts over `max_prompt` tokens are handled by `overlong`. Fills `prompt_ids`; returns the
    table and the facts for run.json."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path, tokens_path = plan.artifact("data", split), plan.artifact("tokens", split)
    if tokens_path is None:
        raise FtcError("FTC726", file=str(plan.lock_path), method="GRPO")
    table = read_artifact(path, "prompt", REQUIRED)
    for i, d in enumerate(resolved):
        lacking = [f for f in reward_from_dict(d).fields() if f not in table.column_names]
        if lacking:
            raise FtcError("FTC751", path=f"train.grpo.rewards[{i}]", name=d["name"], fields=", ".join(lacking),
                           artifact=path.name, columns=", ".join(table.column_names))
    tokens = read_artifact(tokens_path, "prompt token", ("row_id", "input_ids"), columns=["row_id", "input_ids"])
    # rows the compiler dropped at tokenization (counted in the lock's stages) are not trained on
    table = table.filter(pc.is_in(table.column("row_id"), value_set=tokens.column("row_id").combine_chunks()))
    if table.num_rows == 0:
        raise FtcError("FTC721", file=str(tokens_path), kind="prompt token")
    ids_of = dict(zip(tokens.column("row_id").to_pylist(), tokens.column("input_ids").to_pylist()))
    ids = [ids_of[r] for r in table.column("row_id").to_pylist()]
    for prompt, row_ids in zip(table.column("prompt").to_pylist(), ids):
        prompt_ids[prompt_key(prompt)] = row_ids
    lengths = [len(x) for x in ids]
    over = [i for i, n in enumerate(lengths) if n > max_prompt]
    facts = {"max_tokens": max(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1), "limit": max_prompt,
             "over_limit": len(over), "overlong": overlong, "dropped": 0}
    if over:
        worst = max(over, key=lambda i: lengths[i])
        what = f"{len(over)} of {len(lengths)} prompts in {path.name} are longer than train.grpo.max_prompt_length ({max_prompt} tokens)"
        if overlong == "error":
            raise FtcError("FTC754", path="train.overlong", over=len(over), total=len(lengths), artifact=path.name, limit=max_prompt,
                           row=str(table.column("row_id")[worst].as_py()), longest=lengths[worst])
        if overlong == "drop":
            keep = pa.array([n <= max_prompt for n in lengths])
            table = table.filter(keep)
            facts["dropped"] = len(over)
            if table.num_rows == 0:
                raise FtcError("FTC755", path="train.overlong", total=len(lengths), artifact=path.name, limit=max_prompt)
        print(f"ftc: {what}; {'dropped' if overlong == 'drop' else 'their first tokens are cut (kept: the last ' + str(max_prompt) + ')'}",
              file=sys.stderr)
    return table, facts


def _dataset(table: Any) -> Any:
    """A datasets.Dataset over the Arrow table: chat prompts stay lists of {role, content}."""
    import datasets

    return datasets.Dataset(table)


def _trainer_class(max_prompt_length: int, prompt_ids: dict[str, list[int]], base: type | None = None, *,
                   generation: GenerationChoice | None = None) -> type:
    """GRPOTrainer (or `base`, a class that stands for it) that cuts prompts to max_prompt_length
    (TRL 1.x no longer does), counts the tokens of every batch it trains on and, when `generation`
    is the fast path, samples from a merged generation copy (`generation.py`). FTC756 when the class has no
    `_tokenize_prompts` to cut them in (another TRL than the README's)."""
    if base is None:
        from trl import GRPOTrainer

        base = GRPOTrainer
    if not hasattr(base, "_tokenize_prompts"):
        from importlib.metadata import version

        raise FtcError("FTC756", version=version("trl"))

    class FtcGRPOTrainer(base):
        token_counter: TokenCounter | None = None
        generation_choice = generation  # what generates, and why (run.json)
        merged_generator: MergedGenerator | None = None
        fast_generation = generation is not None and generation.path == FAST
        fast_failed: str | None = None  # why the fast path fell back to TRL's, if it did

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            if not self.fast_generation or images is not None and any(images) or multimodal_fields:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            import torch

            if self.merged_generator is None:  # built at the first batch: the trainer has put the LoRA on by then
                try:
                    self.merged_generator = MergedGenerator(self.model, compile_cache=torch.cuda.is_available(),
                                                           max_prompt_length=max_prompt_length)
                except Exception as err:  # a model PEFT cannot copy and merge (a backend's patched one): TRL's path, said
                    self.fast_generation, self.fast_failed = False, f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                    print(f"ftc: WARNING the fast generation path failed ({self.fast_failed}); generating with TRL's "
                          "model.generate instead (run.json grpo.generation)", file=sys.stderr)
                    return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
            mode = "train" if self.model.training else "eval"
            seconds = self.merged_generator.sync(self.model, self.state.global_step)  # once per optimizer step
            if seconds is not None:
                self._metrics[mode]["generation/merge_seconds"].append(seconds)
            t0 = time.perf_counter()
            completions = self.merged_generator.generate(
                prompt_ids, generation_kwargs=self.generation_kwargs, eos_token_ids=list(self.eos_token_ids),
                pad_token_id=self._tokenizer.pad_token_id, device=self.accelerator.device)
            self._metrics[mode]["generation/seconds"].append(time.perf_counter() - t0)
            return completions, None  # no sampler log-probs: the loss's come from the training model

        def _tokenize_prompts(self, prompts):
            # the compiled ids, not TRL's own tokenization: the very ids the lock records and `ftc infer`
            # feeds; cut to max_prompt_length keeping the end (the question and the generation prompt)
            return [prompt_ids[prompt_key(p)][-max_prompt_length:] for p in prompts], None, {}

        def _prepare_inputs(self, generation_batch):
            inputs = super()._prepare_inputs(generation_batch)
            if self.token_counter is not None and self.model.training:
                prompt, completion = inputs["prompt_mask"], inputs["completion_mask"]
                self.token_counter.add_counts(slots=prompt.numel() + completion.numel(),
                                              real=prompt.sum() + completion.sum(), trained=completion.sum())
            return inputs

    return FtcGRPOTrainer


def _generation_facts(choice: GenerationChoice, trainer: Any) -> dict:
    """run.json's grpo.generation: what generated the completions, why, and what the fast path's merges cost."""
    facts: dict[str, Any] = {"asked": choice.asked, "path": choice.path, "reason": choice.reason}
    failed = getattr(trainer, "fast_failed", None)
    if failed:
        why = f"the fast path failed ({failed}); TRL's model.generate ran"
        facts.update(path="generate", reason=why)
    gen = getattr(trainer, "merged_generator", None)
    if gen is not None:
        merges = gen.merge_seconds
        facts.update(copy_build_seconds=round(gen.build_seconds, 4), merges=len(merges),
                     merge_seconds_mean=round(sum(merges) / len(merges), 5) if merges else None,
                     static_compiled_cache=gen.compile_cache, static_caches_built=gen.caches_built,
                     forward_patches_dropped=gen.patches_dropped)
    return facts


def _quarter(rows: list[dict], key: str, *, first: bool) -> float | None:
    """The mean of `key` over the first (or last) quarter of the rows that have it (at least one row)."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    n = max(1, len(values) // 4)
    part = values[:n] if first else values[-n:]
    return sum(part) / len(part)


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
        f"at most {g['max_completion_length']} new tokens; loss {g['loss_type']}, beta {g['beta']:g}. "
        f"Generation: {g['generation']['path']} ({g['generation']['reason']})"
        + (f"; LoRA merge {g['generation']['merge_seconds_mean']:.3g} s per optimizer step"
           if g["generation"].get("merge_seconds_mean") is not None else "") + ".", "",
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
