"""ftc's DPO against TRL's DPOTrainer + PEFT written by hand, step by step, on the CPU in float32.

The oracle is TRL as its documentation shows it: the pairs in TRL's conversational format (TRL
tokenizes them), a `LoraConfig`, the same base weights, seed and batch keys. ftc trains on its
compiled ids through the run skeleton. In float32, with untruncated pairs (`train.overlong=drop`,
so TRL's collate-time truncation never differs from ftc's compile-time one) the two see the same
pairs in the same order and their losses agree to float noise over several updates: at the same
micro-batch cut, and at another cut of the same batch (ftc 2 x 2 against TRL 1 x 4). This is the
CPU half of BENCHMARKS.md "DPO on the GPU" (why the GPU losses part from step 3).

The model is the demo's tiny Qwen2 with its 1,024-token tokenizer (recipes/demo): the Qwen2.5
vocabulary would make each step a minute on two cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from conftest import NEEDS_SHARED, ROOT, SHARED  # noqa: E402
from fixtures import compile_plan, one_torch_thread, train  # noqa: E402,F401

pytestmark = NEEDS_SHARED

STEPS, BATCH = 4, 4
DEMO = ROOT / "recipes" / "demo"


def dpo_plan(folder: Path, micro: int):
    """recipes/dpo.json on the real pairs that fit 768 demo tokens, a learning rate that moves the loss."""
    recipe = json.loads((ROOT / "recipes" / "dpo.json").read_text())
    recipe.pop("$schema")
    recipe["sources"]["pairs"]["path"] = str(SHARED / "data" / "preference" / "dpo_en_demo.json")
    recipe["transforms"] = [{"limit": 100}]
    recipe["train"].pop("eval_steps")
    return compile_plan(folder, recipe, f"model.name={DEMO / 'model'}", f"model.tokenizer={DEMO / 'tokenizer'}",
                        "model.init=random", "model.dtype=float32", "model.max_seq_length=768", "split.eval=0",
                        "train.overlong=drop", "train.learning_rate=0.002", "train.lr_scheduler_type=constant",
                        "train.warmup_ratio=0", f"train.max_steps={STEPS}", "train.micro_batch=plan",
                        "train.gradient_checkpointing=false", f"train.per_device_train_batch_size={micro}",
                        f"train.gradient_accumulation_steps={BATCH // micro}", "train.save_steps=1000")


def trl_by_hand(plan, folder: Path, micro: int) -> list[float]:
    """TRL DPOTrainer + PEFT on the plan's pairs as TRL's conversational data; its logged losses."""
    import datasets
    import pyarrow.parquet as pq
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from ftc.runtime.model import load_base_model, load_tokenizer

    s = plan.settings
    kept = set(pq.read_table(plan.artifact("tokens", "train"), columns=["row_id"]).column("row_id").to_pylist())
    rows = [r for r in pq.read_table(plan.artifact("data", "train")).to_pylist() if r["row_id"] in kept]
    pairs = [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]["value"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]["value"]}]} for r in rows]
    model = load_base_model(plan.run_model, seed=s["train"]["seed"], device="cpu").model  # the same base weights
    lora = s["lora"]
    t = s["train"]
    args = DPOConfig(output_dir=str(folder / "trl"), per_device_train_batch_size=micro,
                     gradient_accumulation_steps=BATCH // micro, learning_rate=t["learning_rate"],
                     lr_scheduler_type="constant", warmup_steps=0, max_steps=STEPS, beta=t["dpo"]["beta"],
                     loss_type=[t["dpo"]["loss_type"]], seed=t["seed"], logging_steps=1, use_cpu=True,
                     bf16=False, gradient_checkpointing=False,  # DPOConfig's defaults are True: the plan's are not
                     report_to=[], save_strategy="no", max_length=s["model"]["max_seq_length"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                        processing_class=load_tokenizer(plan.tokenizer_location),
                        peft_config=LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                                               target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def ftc_losses(plan, out: Path) -> list[float]:
    train(plan, out)
    return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trl")
    plan = dpo_plan(folder, 1)
    return plan, trl_by_hand(plan, folder, 1)


@pytest.mark.parametrize("micro", [1, 2])
def test_ftc_dpo_losses_match_trl_by_hand_over_several_updates(tmp_path, trl_run, micro):
    _, want = trl_run
    plan = dpo_plan(tmp_path, micro)
    import pyarrow.parquet as pq

    assert pq.read_metadata(plan.artifact("tokens", "train")).num_rows >= STEPS * BATCH  # no pair seen twice
    got = ftc_losses(plan, tmp_path / "run")
    assert len(got) == len(want) == STEPS
    assert got[0] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(want[-1] - math.log(2)) > 0.01  # the updates move the loss, so agreeing means something
    assert got == pytest.approx(want, abs=2e-5), (got, want)
