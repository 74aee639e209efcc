"""The lock's schedule counts what the Trainer counts.

First the arithmetic of `compiler/schedule.py` on hand-picked counts (uneven batches, a short
last step, GRPO's completions, warmup ratios), checked against TRL's own sampler and
transformers' own warmup rounding where those can run alone. Then the oracle: tiny plans
compiled by the real compiler and trained by `ftc run` (the demo's random-init model, a
handful of steps), whose run.json holds the Trainer's own `state.max_steps` and
`state.epoch`; the lock must have said exactly those, for SFT (rows and packs) and GRPO,
trained by epochs and by max_steps.
"""

from __future__ import annotations

import json

import pytest

from conftest import DEMO_TOKENIZER, ROOT, write_recipe
from fixtures import one_torch_thread  # noqa: F401 (autouse)
from ftc.errors import FtcError

DEMO = ROOT / "recipes" / "demo"


def sft(**kw) -> dict:
    """A resolved SFT `train` section (the keys the schedule reads)."""
    return {"method": "sft", "num_train_epochs": 1, "max_steps": -1, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 4, "warmup_ratio": 0.0, "packing": False, **kw}


def grpo(num_generations: int = 8, **kw) -> dict:
    return {**sft(**kw), "method": "grpo", "grpo": {"num_generations": num_generations}}


# ---------------------------------------------------------------- arithmetic

def test_sft_counts_micro_batches_with_a_short_last_step():
    from ftc.compiler.schedule import derive_schedule

    # 9 rows in batches of 2: 5 micro-batches, 3 optimizer steps of 2 accumulated (the last has 1)
    s = derive_schedule(sft(gradient_accumulation_steps=2), 9)
    assert (s["batches_per_epoch"], s["optimizer_steps_per_epoch"], s["total_steps"], s["epochs"]) == (5, 3, 3, 1.0)
    assert s["counts"] == "rows" and s["effective_batch_size"] == 4 and s["warnings"] == []
    # a step budget ending mid-epoch is a fraction of micro-batches (2 of 5), not of steps (1 of 3)
    assert derive_schedule(sft(gradient_accumulation_steps=2, max_steps=1), 9)["epochs"] == 0.4
    assert derive_schedule(sft(gradient_accumulation_steps=2, max_steps=4), 9)["epochs"] == 1.4
    # fractional epochs: ceil(1.5 x 3) = 5 steps, ending 4 micro-batches into the second epoch
    s = derive_schedule(sft(gradient_accumulation_steps=2, num_train_epochs=1.5), 9)
    assert (s["total_steps"], s["epochs"]) == (5, 1.8)
    # packing: the items are the packed sequences the compiler counted
    s = derive_schedule(sft(packing=True), 17)
    assert s["counts"] == "packed sequences" and (s["batches_per_epoch"], s["optimizer_steps_per_epoch"]) == (9, 3)


def test_grpo_counts_completions_not_prompts():
    from ftc.compiler.schedule import derive_schedule

    # the shipped GSM8K recipe: 8 completions a step are one prompt's 8 generations
    s = derive_schedule(grpo(per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=250, warmup_ratio=0.1), 7273)
    assert s["counts"] == "completions" and (s["completions_per_step"], s["prompts_per_step"]) == (8, 1)
    assert s["optimizer_steps_per_epoch"] == 7273 and s["total_steps"] == 250  # not 910 (prompts / 8)
    assert s["epochs"] == 250 / 7273 and s["warmup_steps"] == 25
    # 4 x 2 = 8 completions a step = 2 prompts of 4; 11 prompts: 5 whole generation batches, 1 prompt left out
    s = derive_schedule(grpo(4, per_device_train_batch_size=4, gradient_accumulation_steps=2), 11)
    assert (s["prompts_per_step"], s["prompts_per_epoch"], s["prompts_left_out_per_epoch"]) == (2, 10, 1)
    assert (s["batches_per_epoch"], s["optimizer_steps_per_epoch"], s["steps_per_generation"]) == (10, 5, 2)
    assert derive_schedule(grpo(4, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=7), 11)["epochs"] == 1.4


@pytest.mark.parametrize("prompts,batch,accum,g", [(11, 4, 2, 4), (7, 2, 2, 2), (13, 6, 1, 3), (9, 2, 3, 2)])
def test_grpo_batches_are_the_length_of_trls_dataloader(prompts, batch, accum, g):
    """TRL's RepeatSampler and the dataloader GRPOTrainer builds on it (one process)."""
    pytest.importorskip("trl")
    from torch.utils.data import DataLoader
    from trl.trainer.utils import RepeatSampler

    from ftc.compiler.schedule import derive_schedule

    s = derive_schedule(grpo(g, per_device_train_batch_size=batch, gradient_accumulation_steps=accum), prompts)
    spg = accum  # GRPOConfig's steps_per_generation when unset
    sampler = RepeatSampler(list(range(prompts)), mini_repeat_count=g, batch_size=batch * spg // g, repeat_count=spg, seed=0)
    loader = DataLoader(list(range(prompts)), batch_size=batch * spg, sampler=sampler)
    assert s["batches_per_epoch"] == len(loader)
    assert s["prompts_per_epoch"] == len({i for b in loader for i in b.tolist()})


def test_fewer_prompts_than_one_generation_batch_are_refused():
    from ftc.compiler.schedule import derive_schedule

    with pytest.raises(FtcError) as err:
        derive_schedule(grpo(4, per_device_train_batch_size=8, gradient_accumulation_steps=2), 3)
    assert err.value.code == "FTC112" and "3 prompts, fewer than one generation batch takes (16 completions = 4 prompts" in str(err.value)
    with pytest.raises(FtcError, match="not a multiple of train.grpo.num_generations") as err:
        derive_schedule(grpo(4, per_device_train_batch_size=3, gradient_accumulation_steps=1), 30)
    assert err.value.code == "FTC111" and "set per_device_train_batch_size to 4 (or another multiple of 4)" in err.value.hint


def test_warmup_is_whole_steps_rounded_as_the_trainer_rounds_a_ratio():
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from ftc.compiler.schedule import derive_schedule

    def trainer_warmup(value: float, total: int) -> int:
        return TrainingArguments(output_dir="unused", warmup_steps=value, report_to="none").get_warmup_steps(total)

    for ratio, total in [(0.1, 250), (0.1, 3), (0.05, 7), (0.0, 5)]:
        s = derive_schedule(sft(max_steps=total, warmup_ratio=ratio), 100)
        assert s["warmup_steps"] == trainer_warmup(ratio, total) == trainer_warmup(s["warmup_steps"], total)
    # a ratio of 1.0 is every step; handed to transformers 5 as a float it would be one step
    s = derive_schedule(sft(max_steps=12, warmup_ratio=1.0), 100)
    assert s["warmup_steps"] == 12 and trainer_warmup(1.0, 12) == 1 and trainer_warmup(12, 12) == 12
    assert s["warnings"] == []  # warming up over the whole run is what was asked
    s = derive_schedule(sft(num_train_epochs=1, warmup_ratio=0.5), 9)  # 9 rows / (2 x 4): 2 steps
    assert s["warmup_steps"] == 1


def test_warmup_longer_than_training_is_a_warning_in_the_lock_and_the_summary(cli, tmp_path):
    from ftc.compiler.schedule import derive_schedule

    s = derive_schedule({**sft(max_steps=2), "warmup_steps": 5}, 100)
    assert s["warmup_steps"] == 5 and s["warnings"] == [
        "warmup (5 steps) is longer than the training (2 steps): the learning rate never reaches train.learning_rate"]
    recipe = write_recipe(tmp_path, sft_recipe(rows=12, warmup={"warmup_steps": 5}, max_steps=2))
    code, out, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 0, err
    lock = json.loads((tmp_path / "plan.lock").read_text())
    assert lock["schedule"]["warnings"] == s["warnings"]
    assert "warning: warmup (5 steps) is longer than the training (2 steps)" in out
    assert "2 total steps (0.3333 epochs), 5 warmup steps" in out  # 2 steps of 2 rows, of 12


def _batch_of_3(recipe: dict) -> dict:
    recipe["train"]["per_device_train_batch_size"], recipe["train"]["gradient_accumulation_steps"] = 3, 1
    return recipe


@pytest.mark.parametrize("recipe,code,words", [
    (lambda: sft_recipe(rows=12, max_steps=0), "FTC110",
     ["at train.max_steps: train.max_steps 0 trains no step", "hint: use -1 to train num_train_epochs"]),
    (lambda: sft_recipe(rows=12, warmup={"warmup_steps": 2, "warmup_ratio": 0.1}), "FTC107",
     ["at train.warmup_ratio: train.warmup_steps (2) and train.warmup_ratio (0.1) are both set", "hint: keep one"]),
    (lambda: _batch_of_3(grpo_recipe(rows=7)), "FTC111",
     ["at train.per_device_train_batch_size: per_device_train_batch_size 3 x gradient_accumulation_steps 1 = 3 completions "
      "per generation, which is not a multiple of train.grpo.num_generations (2)", "set per_device_train_batch_size to 4"]),
    (lambda: grpo_recipe(rows=1), "FTC112",
     ["the train split has 1 prompts, fewer than one generation batch takes (4 completions = 2 prompts x 2 generations)",
      "hint: use more rows"]),
])
def test_plans_the_trainer_would_misread_are_refused(cli, tmp_path, recipe, code, words):
    path = write_recipe(tmp_path, recipe())
    status, _, err = cli("compile", path, "-o", tmp_path / "plan.lock")
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"error[{code}]: {path}: ") and all(w in err for w in words), err


def test_the_run_gets_whole_warmup_steps(tmp_path):
    pytest.importorskip("transformers")
    from ftc.compiler.schedule import derive_schedule, run_warmup_steps
    from ftc.runtime.trainer_config import training_arguments

    train = sft(max_steps=250, warmup_ratio=0.1)
    sched = derive_schedule(train, 1000)
    assert run_warmup_steps(sched, train) == 25
    assert run_warmup_steps(sched, train, 3) == 1  # `ftc run --max-steps 3`: the ratio of that budget
    assert run_warmup_steps(sched, train, -1) == 13  # by epochs: 125 steps
    args = dict(checkpoints=tmp_path, max_steps=3, dtype="float32", device="cpu", eval_steps=None)
    from ftc.compiler.recipe import load_recipe

    (tmp_path / "d.jsonl").write_text('{"q": "a", "a": "b"}\n')
    resolved = load_recipe(write_recipe(tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"},
                                                   "train": {"max_steps": 250, "warmup_ratio": 0.1}})).data["train"]
    assert training_arguments(resolved, warmup_steps=run_warmup_steps(sched, train), **args)["warmup_steps"] == 25


# ---------------------------------------------------------------- against the Trainer

def sft_recipe(*, rows: int, packing: bool = False, batch: int = 2, accum: int = 1, max_steps: int = -1,
               warmup: dict | None = None) -> dict:
    """The demo's rows, model and tokenizer as a small SFT recipe."""
    return {
        "sources": {"g": {"path": str(DEMO / "gsm8k_64.jsonl"), "columns": {"question": "question", "answer": "answer"}}},
        "transforms": [{"limit": rows}],
        "template": {"format": "prompt_completion", "prompt": "Question: {{ question }}\nAnswer: ", "completion": "{{ answer }}"},
        "model": {"name": str(DEMO / "model"), "init": "random", "tokenizer": str(DEMO_TOKENIZER), "max_seq_length": 256,
                  "dtype": "float32"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "train": {"method": "sft", "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
                  "num_train_epochs": 1, "max_steps": max_steps, "packing": packing, "gradient_checkpointing": False,
                  "micro_batch": "plan", "logging_steps": 1, "save_steps": 100, "seed": 0, **(warmup or {})},
    }


def grpo_recipe(*, rows: int, max_steps: int = -1) -> dict:
    """The demo's questions as GRPO prompts: 2 generations of 4 tokens, 2 prompts a step."""
    base = sft_recipe(rows=rows, batch=2, accum=2, max_steps=max_steps, warmup={"warmup_ratio": 1.0})
    base["template"] = {"format": "prompt", "prompt": "Question: {{ question }}\nAnswer: "}
    base["train"] = {**base["train"], "method": "grpo", "packing": False}
    base["train"]["grpo"] = {"num_generations": 2, "max_completion_length": 4, "max_prompt_length": 256,
                             "rewards": [{"kind": "regex", "name": "digit", "pattern": "[0-9]"}]}
    return base


CASES = {
    # 15 rows / 2 = 8 micro-batches, 3 a step: 3 steps an epoch, the last of 2
    "sft rows by epochs": lambda: sft_recipe(rows=15, accum=3, warmup={"warmup_ratio": 1.0}),
    "sft rows by max_steps": lambda: sft_recipe(rows=15, accum=3, max_steps=4, warmup={"warmup_ratio": 0.1}),
    "sft packs by epochs": lambda: sft_recipe(rows=24, packing=True),  # 21 packs: 11 steps, where rows would take 12
    "sft packs by max_steps": lambda: sft_recipe(rows=24, packing=True, accum=2, max_steps=3),
    # 7 prompts, 2 a step: 3 steps an epoch, one prompt left out
    "grpo by epochs": lambda: grpo_recipe(rows=7),
    "grpo by max_steps": lambda: grpo_recipe(rows=7, max_steps=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lock_says_the_steps_and_epochs_the_trainer_reports(case, cli, tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    recipe = write_recipe(tmp_path, CASES[case]())
    lock_path = tmp_path / "plan.lock"
    code, _, err = cli("compile", recipe, "-o", lock_path, "-q")
    assert code == 0, err
    sched = json.loads(lock_path.read_text())["schedule"]
    code, _, err = cli("run", lock_path, "--output", tmp_path / "run")
    assert code == 0, err
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (sched["total_steps"], sched["epochs"]) == (facts["train"]["max_steps"], facts["train"]["epoch"])
    assert facts["train"]["global_step"] == sched["total_steps"]
    if "by epochs" in case:
        assert sched["epochs"] == 1.0
    if case.startswith("grpo"):
        assert sched["prompts_left_out_per_epoch"] == 1
        assert facts["grpo"]["steps_per_generation"] == sched["steps_per_generation"]
        assert facts["grpo"]["prompts_per_generation"] == sched["prompts_per_step"]
    if sched["warmup_steps"] == sched["total_steps"]:  # warmup_ratio 1.0: the learning rate rises at every step
        rates = [m["learning_rate"] for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                 if m.get("learning_rate") is not None]
        assert len(rates) == sched["total_steps"] and rates == sorted(set(rates)), rates
