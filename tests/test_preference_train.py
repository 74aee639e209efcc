"""DPO, ORPO, SimPO and KTO through the one run skeleton on the CPU, on real preference rows.

The shipped recipes (recipes/dpo.json, recipes/kto.json) cut to a few real rows, short
sequences and a tiny random Qwen2-shaped model: each method trains, logs TRL's rewards in
metrics.jsonl, and moves its own metric the right way; DPO clearly raises its training
preference accuracy and margin above where they start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import NEEDS_SHARED, ROOT, SHARED, TOKENIZER
from fixtures import ALL_LINEAR, compile_plan, train, write_tiny_model_dir

pytestmark = NEEDS_SHARED

ROWS, SEQ = 4, 48
COMMON = [f"model.max_seq_length={SEQ}", "model.dtype=float32", "model.init=random", "lora.r=16", "lora.lora_alpha=32",
          f"lora.target_modules={json.dumps(ALL_LINEAR)}", "train.per_device_train_batch_size=2",
          "train.gradient_accumulation_steps=1", "train.learning_rate=0.003", "train.lr_scheduler_type=constant",
          "train.warmup_ratio=0", "train.save_steps=1000", "train.micro_batch=plan", "train.gradient_checkpointing=false",
          "split.eval=2"]


def plan_for(folder: Path, recipe_name: str, steps: int, *extra: str, method: str | None = None):
    """The shipped recipe on a few real rows, a tiny model and short sequences; `method` trains the
    same pairs with another preference method (the recipe's own method keys left out)."""
    recipe = json.loads((ROOT / "recipes" / f"{recipe_name}.json").read_text())
    recipe.pop("$schema")
    if method is not None:
        recipe["train"].pop(recipe["train"]["method"])
        recipe["train"]["method"] = method
    source = next(iter(recipe["sources"].values()))
    source["path"] = str(SHARED / "data" / "preference" / Path(source["path"]).name)
    recipe["transforms"] = [{"limit": ROWS + 2}]
    recipe["train"].pop("eval_steps")
    tiny = write_tiny_model_dir(folder / "tiny")
    return compile_plan(folder, recipe, f"model.name={tiny}", f"model.tokenizer={TOKENIZER}", *COMMON,
                        f"train.max_steps={steps}", *extra)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values)


def test_dpo_raises_the_training_preference_accuracy_and_margin_and_the_run_infers_evals_exports(tmp_path, cli):
    plan = plan_for(tmp_path, "dpo", 24, "train.dpo.beta=0.5")
    out = tmp_path / "run"
    code, _, err = cli("run", plan.lock_path, "--output", out)
    assert code == 0, err
    facts = json.loads((out / "run.json").read_text())
    lines = [m for m in metrics(out) if "loss" in m]
    assert len(lines) == 24 and facts["method"] == "dpo" and facts["train"]["global_step"] == 24
    start, end = lines[:2], lines[-4:]
    assert mean(start, "rewards/accuracies") <= 0.75 and mean(end, "rewards/accuracies") == 1.0
    assert mean(end, "rewards/margins") > mean(start, "rewards/margins") + 1.0
    assert mean(end, "loss") < mean(start, "loss") - 0.3
    p = facts["preference"]
    assert p["reference"] == "the base model, adapter disabled" and p["settings"]["beta"] == 0.5
    assert p["last_accuracy"] == 1.0 and p["first_margin"] < p["last_margin"]
    assert facts["eval"]["pairs"] == 2 and 0.0 <= facts["eval"]["accuracy"] <= 1.0
    assert facts["tokens"]["trained"] > 0 and facts["tokens"]["real"] > facts["tokens"]["trained"]
    assert "## Preference" in (out / "report.md").read_text() and (out / "rewards.png").is_file()

    code, stdout, err = cli("eval", out)  # the figures the run recorded, from the saved adapter
    assert code == 0, err
    assert f"eval: preference accuracy {facts['eval']['accuracy']:.3f}, mean margin {facts['eval']['mean_margin']:.4f}" in stdout
    import pyarrow.parquet as pq

    sample = plan.lock["samples"]["train"][0]  # a rendered pair: its prompt turns, as a request gives them
    row = next(r for r in pq.read_table(plan.artifact("tokens", "train")).to_pylist() if r["row_id"] == sample["row_id"])
    code, stdout, err = cli("infer", out, "--input", json.dumps({"prompt": sample["prompt"]}), "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[0])["prompt_ids"][-len(row["prompt_ids"]):] == row["prompt_ids"]
    code, _, err = cli("export", out, "--merged", tmp_path / "merged")
    assert code == 0, err and (tmp_path / "merged" / "model.safetensors").exists()


@pytest.mark.parametrize("method,key", [("orpo", "rewards/margins"), ("simpo", "rewards/margins")])
def test_orpo_and_simpo_train_and_widen_their_margin(tmp_path, method, key):
    plan = plan_for(tmp_path, "dpo", 10, method=method)
    facts = train(plan, tmp_path / "run")
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert facts["method"] == method and facts["preference"]["reference"] == "none (reference-free)"
    assert mean(lines[-4:], key) > mean(lines[:2], key)
    assert mean(lines[-4:], "loss") < mean(lines[:2], "loss")


def test_kto_trains_and_separates_desirable_from_undesirable(tmp_path):
    # one batch of all six rows (4 desirable, 2 not): TRL logs a batch's margin only when it holds both labels
    plan = plan_for(tmp_path, "kto", 10, "train.kto.beta=0.5", "train.per_device_train_batch_size=6", "split.eval=0")
    facts = train(plan, tmp_path / "run")
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert facts["method"] == "kto" and all("kl" in m for m in lines) and facts["data"]["train"]["desirable"] == 4
    assert mean(lines[-3:], "rewards/margins") > mean(lines[:2], "rewards/margins")
    assert mean(lines[-4:], "loss") < mean(lines[:2], "loss")
