"""The lock's schedule of a preference plan is the Trainer's own count (as tests/test_schedule.py
shows for SFT and GRPO).

A DPO item of per_device_train_batch_size is a pair, a KTO item one labelled completion (KTO trains
them in order, TRL's sequential sampler). The shipped recipes, cut to a few real rows of
../shared/data/preference, short sequences and a tiny random model, are compiled by the real
compiler and trained by the run skeleton through TRL's DPOTrainer / KTOTrainer: the run's
`state.max_steps` and `state.epoch` (run.json) must be the lock's `total_steps` and `epochs`,
by epochs (with a short last step) and by a step budget that ends mid-epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO_TOKENIZER, NEEDS_SHARED, ROOT, SHARED
from fixtures import compile_plan, one_torch_thread, train  # noqa: F401 (autouse)

pytestmark = NEEDS_SHARED

ROWS = 7  # an odd count: the last micro-batch of an epoch holds one item
COMMON = ["model.max_seq_length=32", "model.dtype=float32", "model.init=random", "lora.r=4", "lora.lora_alpha=8",
          'lora.target_modules=["q_proj"]', "train.per_device_train_batch_size=2", "train.warmup_ratio=0",
          "train.save_steps=1000", "train.logging_steps=1", "train.micro_batch=plan", "train.gradient_checkpointing=false",
          "split.eval=0"]


def plan_for(folder: Path, recipe_name: str, *extra: str):
    """recipes/<name>.json on the first ROWS real rows, 32-token sequences and the demo's small tokenizer and
    model (random weights): the steps are counted, not learned from."""
    recipe = json.loads((ROOT / "recipes" / f"{recipe_name}.json").read_text())
    recipe.pop("$schema")
    recipe.pop("split")
    recipe["train"].pop("eval_steps")
    source = next(iter(recipe["sources"].values()))
    source["path"] = str(SHARED / "data" / "preference" / Path(source["path"]).name)
    recipe["transforms"] = [{"limit": ROWS}]
    demo = ROOT / "recipes" / "demo"
    return compile_plan(folder, recipe, f"model.name={demo / 'model'}", f"model.tokenizer={DEMO_TOKENIZER}", *COMMON, *extra)


CASES = {
    # 7 pairs / 2 = 4 micro-batches, 3 a step: 2 steps an epoch, the last of one micro-batch
    "dpo by epochs": ("dpo", ["train.gradient_accumulation_steps=3", "train.num_train_epochs=1", "train.max_steps=-1"], (2, 1.0)),
    # 1.5 epochs of 2 steps: ceil(3) = 3 steps, ending 3 micro-batches (of 4) into the second epoch
    "dpo by fractional epochs": ("dpo", ["train.gradient_accumulation_steps=3", "train.num_train_epochs=1.5",
                                         "train.max_steps=-1"], (3, 1.75)),
    "dpo by max_steps": ("dpo", ["train.gradient_accumulation_steps=1", "train.max_steps=5"], (5, 1.25)),
    # 7 labelled completions / 2 = 4 micro-batches, 2 a step: 2 steps an epoch
    "kto by epochs": ("kto", ["train.gradient_accumulation_steps=2", "train.num_train_epochs=2", "train.max_steps=-1"], (4, 2.0)),
    "kto by max_steps": ("kto", ["train.gradient_accumulation_steps=1", "train.max_steps=6"], (6, 1.5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lock_says_the_steps_and_epochs_the_preference_trainer_reports(case, tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    recipe, sets, want = CASES[case]
    plan = plan_for(tmp_path, recipe, *sets)
    sched = plan.schedule
    assert sched["train_items"] == ROWS and sched["counts"] == ("pairs" if recipe == "dpo" else "labelled completions")
    assert (sched["total_steps"], sched["epochs"]) == want  # the arithmetic, by hand
    facts = train(plan, tmp_path / "run")
    assert facts["method"] == recipe and facts["train"]["global_step"] == sched["total_steps"]
    assert (sched["total_steps"], sched["epochs"]) == (facts["train"]["max_steps"], facts["train"]["epoch"])
