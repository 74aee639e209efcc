"""SFT: what is particular to supervised fine-tuning in the run skeleton (session.py).

The data is the compiler's token artifact (tokenized, masked, truncated and packed at compile
time); the config is TRL's SFTConfig, the trainer TRL's SFTTrainer counting its tokens.

Decisions that are not TRL defaults, and why:
- TRL's dataset preparation is skipped (`skip_prepare_dataset`): nothing is re-tokenized,
  truncated or re-packed here; the plan decided every token.
- Packs planned by the compiler are fed padding-free (one flattened row per batch, with
  restarting position_ids); the attention kernel must honour those boundaries
  (`model.PACKING_SAFE_ATTENTION`), and sdpa does once transformers sees no attention_mask
  and no cache, which is why `use_cache` is switched off for training.
- The eval split is scored once more after the last step, token-weighted (`evaluate.py`, the
  same figure `ftc eval` prints); the Trainer's eval_steps lines are batch means.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftc.compiler.lock import Plan
from ftc.runtime import token_data
from ftc.runtime.metrics import TokenCounter
from ftc.errors import FtcError
from ftc.runtime.model import ModelSetup
from ftc.runtime.session import Finished


@dataclass(frozen=True)
class TokenData:
    """The token artifacts of the plan, read and checked, and the datasets the trainer iterates."""

    train_path: Path
    eval_path: Path | None
    train_table: Any  # pyarrow.Table
    eval_table: Any | None
    packed: bool
    max_seq_length: int
    train_dataset: Any
    eval_dataset: Any | None
    tokens_per_item: int


class SFT:
    name = "sft"
    can_split_batch = True  # rows are independent: any micro-batch cut gives the same step
    log_all_scalars = False

    def prepare(self, plan: Plan, train: dict, *, tokenizer: Any, world_size: int) -> TokenData:
        import pyarrow.compute as pc

        train_path, eval_path = plan.artifact("tokens", "train"), plan.artifact("tokens", "eval")
        if train_path is None:
            raise FtcError("FTC726", file=str(plan.lock_path), method="SFT")
        max_len = plan.settings["model"]["max_seq_length"]
        train_table = token_data.read_tokens(train_path, max_seq_length=max_len)
        eval_table = token_data.read_tokens(eval_path, max_seq_length=max_len) if eval_path else None
        packed = "pack" in train_table.column_names
        if eval_table is not None and not packed and "pack" in eval_table.column_names:
            # one collator serves train and eval; a padding collator would let packed eval rows
            # see each other, so the eval rows go unpacked
            eval_table = eval_table.drop_columns(["pack"])
        longest = max_len if packed else int(pc.max(train_table.column("length")).as_py())
        return TokenData(train_path, eval_path, train_table, eval_table, packed, max_len,
                         token_data.to_dataset(train_table),
                         token_data.to_dataset(eval_table) if eval_table is not None else None, longest)

    def check_model(self, setup: ModelSetup, data: TokenData) -> None:
        base = setup.loaded.model
        token_data.check_vocab(base, data.train_table, data.train_path)
        if data.packed and not setup.packing_safe:
            raise FtcError("FTC731", path="train.packing", attention=setup.attention)
        base.config.use_cache = False  # a cache disables transformers' packed-sequence masks

    def config(self, train: dict, data: TokenData) -> tuple[type, dict]:
        from trl import SFTConfig

        # The compiler already tokenized, masked, truncated and packed: TRL must not redo any of it.
        return SFTConfig, dict(dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False,
                               padding_free=False, completion_only_loss=None)

    def trainer(self, data: TokenData, *, tokenizer: Any, setup: ModelSetup) -> tuple[type, dict]:
        collate = token_data.collator(tokenizer.pad_token_id, packed=data.packed, lengths_key=setup.packed_lengths_key)
        return _trainer_class(), {"data_collator": collate}

    def flops(self, model: Any, data: TokenData, *, device: str) -> dict:
        from ftc.runtime.flops import flops_facts

        return flops_facts(model, data.train_table.column("length").to_pylist(), device=device)

    def finish(self, run: Finished) -> dict:
        data, state = run.data, run.trainer.state
        eval_facts: dict = {}
        if data.eval_table is not None and not run.interrupted:
            from ftc.runtime.evaluate import eval_loss

            eval_facts = eval_loss(run.trainer.model, data.eval_path, pad_token_id=run.tokenizer.pad_token_id,
                                   batch_size=run.train["per_device_train_batch_size"])
            with open(run.metrics_path, "a") as f:
                # "final": token-weighted over the whole eval set; the Trainer's eval_steps lines are batch means
                f.write(json.dumps({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "final": True,
                                    "eval_loss": eval_facts["loss"], "eval_perplexity": eval_facts["perplexity"]}) + "\n")
        stats = token_data.token_stats(data.train_table)
        return {
            "data": {
                "train": {"path": str(data.train_path), **asdict(stats)},
                "eval": ({"path": str(data.eval_path), **asdict(token_data.token_stats(data.eval_table))}
                         if data.eval_table is not None else None),
            },
            "tokens": {"pack_fill": stats.tokens / (stats.sequences * data.max_seq_length) if data.packed else None},
            "eval": eval_facts,
        }

    def report_sections(self, run: Finished, facts: dict) -> list[str]:
        return []


METHOD = SFT()


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
