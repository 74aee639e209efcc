"""DPO, ORPO, SimPO and KTO: what is particular to preference tuning in the run skeleton (session.py).

The data is the compiler's preference token artifact (`compiler/preference.py`: prompt,
chosen and rejected ids, or a completion and its label, made as TRL's own preparation makes
them); the config and trainer are TRL's: `DPOConfig`/`DPOTrainer`, `ORPOConfig`/`ORPOTrainer`,
`CPOConfig`/`CPOTrainer` with ``loss_type="simpo"``, `KTOConfig`/`KTOTrainer`. The method keys
are the lock's `train.<method>` section, TRL's own names, resolved by the compiler.

Decisions that are not TRL defaults, and why:
- Nothing is tokenized again: DPO's and KTO's `_prepare_dataset` is replaced by the compiled ids
  (KTO keeps TRL's one step that is not tokenization: the KL completions, each example's
  completion rotated by one within its batch); CPO's and ORPO's `tokenize_row` gets rows
  already laid out as their collator wants them. `max_length` is None for DPO and KTO: the
  compiler applied `train.overlong`, so no collator truncates.
- The reference model of DPO and KTO is the base model with the adapter disabled: the hf
  backend hands TRL a `peft_config`, and TRL then keeps no second copy of the weights. ORPO and
  SimPO have no reference model.
- KTO trains in the artifact's order (TRL requires a sequential sampler for its KL estimate), so
  its batch is never cut into other micro-batches either (`can_split_batch`).
- metrics.jsonl keeps every scalar TRL logs: rewards/chosen, rewards/rejected, rewards/margins,
  rewards/accuracies, logps, KTO's kl, ORPO's log_odds_ratio, the NLL terms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc.compiler.lock import Plan
from ftc.compiler.preference import FORMAT_OF, SIDES
from ftc.errors import FtcError
from ftc.runtime.metrics import TokenCounter, read_metrics
from ftc.runtime.model import ModelSetup
from ftc.runtime.session import Finished
from ftc.runtime.token_data import check_vocab, read_artifact

__all__ = ["METHODS", "Preference", "reward_keys"]

REFERENCE_FREE = ("orpo", "simpo")  # TRL's CPO/ORPO: no reference model, their own batch layout


@dataclass(frozen=True)
class PreferenceData:
    """The plan's preference token artifacts, read and checked, and the datasets the trainer iterates."""

    train_path: Path
    eval_path: Path | None
    train_table: Any  # pyarrow.Table
    eval_table: Any | None
    train_dataset: Any
    eval_dataset: Any | None
    tokens_per_item: int


def required(fmt: str) -> tuple[str, ...]:
    """The artifact columns a format's trainer reads."""
    sides = SIDES[fmt]
    return ("row_id", "prompt_ids", *(f"{s}_ids" for s in sides), *(("label",) if fmt == "unpaired_preference" else ()))


def read_preference(path: Path, fmt: str, *, max_seq_length: int) -> Any:
    """The artifact, refused when it lacks a column or holds a sequence over max_seq_length (FTC720/721/725)."""
    import pyarrow.compute as pc

    table = read_artifact(path, "preference token", required(fmt))
    prompt = pc.list_value_length(table.column("prompt_ids"))
    for side in SIDES[fmt]:
        total = pc.add(prompt, pc.list_value_length(table.column(f"{side}_ids"))).to_numpy(zero_copy_only=False)
        worst = int(total.argmax())
        if total[worst] > max_seq_length:
            raise FtcError("FTC725", file=str(path), what=f"row {table.column('row_id')[worst].as_py()} ({side})",
                           tokens=int(total[worst]), limit=max_seq_length)
    return table


class Preference:
    """One preference method; `METHODS` holds the four."""

    log_all_scalars = True  # rewards, margins, accuracies, kl

    def __init__(self, name: str) -> None:
        self.name = name
        self.fmt = FORMAT_OF[name]
        self.can_split_batch = name != "kto"  # KTO's KL term is estimated over the batch it trains on

    def prepare(self, plan: Plan, train: dict, *, tokenizer: Any, world_size: int) -> PreferenceData:
        train_path, eval_path = plan.artifact("tokens", "train"), plan.artifact("tokens", "eval")
        if train_path is None:
            raise FtcError("FTC726", file=str(plan.lock_path), method=self.name.upper())
        max_len = plan.settings["model"]["max_seq_length"]
        train_table = read_preference(train_path, self.fmt, max_seq_length=max_len)
        eval_table = read_preference(eval_path, self.fmt, max_seq_length=max_len) if eval_path else None
        use_eval = eval_table is not None and train["eval_steps"] is not None
        import pyarrow.compute as pc

        longest = int(pc.max(train_table.column("length")).as_py())
        per_item = 2 * longest  # two sequences per item: a pair, or a completion and its KL sequence
        return PreferenceData(train_path, eval_path, train_table, eval_table, self._dataset(train_table),
                              self._dataset(eval_table) if use_eval else None, per_item)

    def _dataset(self, table: Any) -> Any:
        import datasets

        if self.name in REFERENCE_FREE:
            return datasets.Dataset.from_dict(cpo_rows(table))
        return datasets.Dataset(table.select(list(required(self.fmt)[1:])))

    def check_model(self, setup: ModelSetup, data: PreferenceData) -> None:
        ids = tuple(c for c in required(self.fmt)[1:] if c != "label")
        check_vocab(setup.loaded.model, data.train_table, data.train_path, ids)
        setup.loaded.model.config.use_cache = False

    def config(self, train: dict, data: PreferenceData) -> tuple[type, dict]:
        keys = dict(train[self.name])  # TRL's own names, resolved by the compiler
        if self.name == "dpo":
            from trl import DPOConfig

            keys["loss_type"] = [keys["loss_type"]]  # DPOConfig keeps a list (it may combine losses)
            return DPOConfig, dict(**keys, max_length=None, precompute_ref_log_probs=False)
        if self.name == "kto":
            from trl import KTOConfig

            return KTOConfig, dict(**keys, max_length=None, precompute_ref_log_probs=False)
        longest = int(max(data.train_table.column("length").to_pylist()))
        if self.name == "orpo":
            from trl.experimental.orpo import ORPOConfig

            return ORPOConfig, dict(**keys, max_length=longest, remove_unused_columns=False)
        from trl.experimental.cpo import CPOConfig

        return CPOConfig, dict(**keys, loss_type="simpo", max_length=longest, remove_unused_columns=False)

    def trainer(self, data: PreferenceData, *, tokenizer: Any, setup: ModelSetup) -> tuple[type, dict]:
        return trainer_class(self.name), {}

    def flops(self, model: Any, data: PreferenceData, *, device: str) -> dict:
        from ftc.runtime.flops import flops_facts

        t = data.train_table
        lengths = [p + s for side in SIDES[self.fmt]
                   for p, s in zip(t.column("prompt_length").to_pylist(), t.column(f"{side}_length").to_pylist())]
        return flops_facts(model, lengths, device=device)

    def finish(self, run: Finished) -> dict:
        data, state = run.data, run.trainer.state
        metrics = read_metrics(run.metrics_path)
        steps = [m for m in metrics if m.get("loss") is not None]
        eval_facts: dict = {}
        if data.eval_table is not None and not run.interrupted:
            from ftc.runtime.evaluate import preference_eval

            eval_facts = preference_eval(run.trainer.model, data.eval_path, method=self.name,
                                         settings=run.train[self.name], pad_token_id=run.tokenizer.pad_token_id,
                                         batch_size=run.train["per_device_train_batch_size"])
            with open(run.metrics_path, "a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "final": True,
                                    "eval_preference_accuracy": eval_facts["accuracy"],
                                    "eval_mean_margin": eval_facts["mean_margin"]}) + "\n")
        keys = reward_keys(self.name)
        return {
            "data": {"train": _split_facts(data.train_path, data.train_table, self.fmt),
                     "eval": _split_facts(data.eval_path, data.eval_table, self.fmt) if data.eval_table is not None else None},
            "preference": {
                "method": self.name, "trainer": type(run.trainer).__mro__[1].__name__,
                "settings": dict(run.train[self.name]),
                "reference": "none (reference-free)" if self.name in REFERENCE_FREE else "the base model, adapter disabled",
                **{f"first_{k}": _first(steps, key) for k, key in keys.items()},
                **{f"last_{k}": _first(steps[::-1], key) for k, key in keys.items()},
            },
            "tokens": {"note": "prompt + completion tokens of the sequences trained on (a pair is two), counted in this "
                               "process; trained = completion tokens"},
            "eval": eval_facts,
        }

    def report_sections(self, run: Finished, facts: dict) -> list[str]:
        from ftc.runtime.report import preference_section

        return [preference_section(run.output_dir, facts, read_metrics(run.metrics_path), reward_keys(self.name))]


METHODS = {name: Preference(name) for name in FORMAT_OF}


def reward_keys(method: str) -> dict[str, str]:
    """The logged scalars a run's facts and report follow: short name -> TRL's log key."""
    keys = {"loss": "loss", "chosen": "rewards/chosen", "rejected": "rewards/rejected", "margin": "rewards/margins",
            "accuracy": "rewards/accuracies"}
    if method == "kto":
        keys = {"loss": "loss", "chosen": "rewards/chosen", "rejected": "rewards/rejected", "margin": "rewards/margins",
                "kl": "kl"}
    return keys


def cpo_rows(table: Any) -> dict[str, list]:
    """CPO's and ORPO's batch layout (their `tokenize_row` output) from the compiled ids: each side is
    prompt + completion, labels -100 over the prompt."""
    out: dict[str, list] = {k: [] for k in ("prompt_input_ids", "prompt_attention_mask", "chosen_input_ids",
                                            "chosen_attention_mask", "chosen_labels", "rejected_input_ids",
                                            "rejected_attention_mask", "rejected_labels")}
    for p, c, r in zip(*(table.column(k).to_pylist() for k in ("prompt_ids", "chosen_ids", "rejected_ids"))):
        out["prompt_input_ids"].append(p)
        out["prompt_attention_mask"].append([1] * len(p))
        for side, ids in (("chosen", c), ("rejected", r)):
            out[f"{side}_input_ids"].append(p + ids)
            out[f"{side}_attention_mask"].append([1] * (len(p) + len(ids)))
            out[f"{side}_labels"].append([-100] * len(p) + ids)
    return out


def _split_facts(path: Path, table: Any, fmt: str) -> dict:
    facts = {"path": str(path), "rows": table.num_rows,
             **{f"{k}_tokens": int(sum(table.column(f"{k}_length").to_pylist())) for k in ("prompt", *SIDES[fmt])}}
    if fmt == "unpaired_preference":
        facts["desirable"] = int(sum(table.column("label").to_pylist()))
    return facts


def _first(rows: list[dict], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key) is not None), None)


def count_batch(counter: TokenCounter, inputs: dict) -> None:
    """Real / padded / trained tokens of a batch in any of the trainers' layouts."""
    if "chosen_input_ids" in inputs:  # CPO / ORPO
        for side in ("chosen", "rejected"):
            counter.add_counts(slots=inputs[f"{side}_input_ids"].numel(), real=inputs[f"{side}_attention_mask"].sum(),
                               trained=(inputs[f"{side}_labels"] != -100).sum())
        return
    counter.add_counts(slots=inputs["input_ids"].numel(), real=inputs["attention_mask"].sum(),
                       trained=inputs["completion_mask"].sum())


def trainer_class(method: str) -> type:
    """TRL's trainer for `method`, fed the compiled ids (no preparation of its own) and counting tokens."""
    if method == "dpo":
        from trl import DPOTrainer as base
    elif method == "kto":
        from trl import KTOTrainer as base
    elif method == "orpo":
        from trl.experimental.orpo import ORPOTrainer as base
    else:
        from trl.experimental.cpo import CPOTrainer as base

    class FtcPreferenceTrainer(base):
        token_counter: TokenCounter | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Handed a model that already carries its adapter (unsloth), TRL's DPO/KTO copy it into a "ref"
            # adapter: a second set of LoRA weights, and a reference that is not the base. Without it, TRL
            # disables the adapter for the reference pass, as with the hf backend's peft_config.
            unwrapped = self.accelerator.unwrap_model(self.model)
            if method in ("dpo", "kto") and "ref" in getattr(unwrapped, "peft_config", {}):
                unwrapped.delete_adapter("ref")

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # the compiled prompt/completion ids, as TRL's own preparation would have made them
            if method != "kto" or not self.calculate_KL or "KL_completion_ids" in dataset.column_names:
                return dataset

            def add_kl(batch):  # TRL's KL completions: each completion rotated by one within its batch
                batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                return batch

            return dataset.map(add_kl, batched=True, batch_size=args.per_device_train_batch_size)

        def tokenize_row(self, feature, model=None):
            return {}  # CPO / ORPO: the rows already hold tokenize_row's output (cpo_rows)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.token_counter is not None:
                count_batch(self.token_counter, inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    FtcPreferenceTrainer.__name__ = f"Ftc{base.__name__}"
    return FtcPreferenceTrainer
