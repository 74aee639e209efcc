"""SFT through the run skeleton on the CPU, as `ftc run` calls it: a tiny random-init Qwen2
learns a handful of prompt/completion rows that the real compiler tokenized from a recipe.

One training run (module fixture) feeds the checks of the user's day after `ftc run`:
the loss fell, greedy generation repeats what was trained, the prompt was not learned,
the folder holds adapter, metrics, run.json and report, the merged export loads without
PEFT, and the eval loss matches `ftc eval`'s. The token ids and labels every check compares
against are read from the compiled artifact, not re-made by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from fixtures import ALL_LINEAR, compile_plan, train, write_jsonl, write_tiny_model_dir  # noqa: E402

from conftest import TOKENIZER  # noqa: E402

needs_tokenizer = pytest.mark.skipif(
    not (TOKENIZER / "tokenizer.json").exists(), reason=f"needs the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)"
)

EXAMPLES = [
    ("Q: What is the capital of France?\nA:", " Paris is the capital."),
    ("Q: What is two plus two?\nA:", " four, of course."),
    ("Q: What color is the sky?\nA:", " blue on a clear day."),
    ("Q: What is the opposite of hot?\nA:", " cold, usually."),
]


def recipe() -> dict:
    """Two copies of the examples, split by `copy`: the eval split is the second copy of the same
    four rows, so its loss shows what training learned."""
    return {
        "name": "tiny-sft",
        "sources": {"qa": {"path": "qa.jsonl"}},
        "split": {"eval": 4, "key": ["copy"], "seed": 0},
        "template": {"format": "prompt_completion", "prompt": "{{ prompt }}", "completion": "{{ completion }}"},
        "model": {"name": "tiny", "init": "random", "tokenizer": str(TOKENIZER), "max_seq_length": 64, "dtype": "auto"},
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ALL_LINEAR},
        "train": {"learning_rate": 1e-2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                  "max_steps": 40, "warmup_steps": 0, "lr_scheduler_type": "linear", "optim": "adamw_torch",
                  "seed": 7, "logging_steps": 5, "save_steps": 100, "gradient_checkpointing": False},
    }


def run(tmp: Path, *overrides: str) -> tuple[dict, Path]:
    """Compile the tiny recipe (with `--set` overrides) and train it; (facts, run folder)."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp / "qa.jsonl", [{"prompt": p, "completion": c, "copy": copy} for copy in "ab" for p, c in EXAMPLES])
    write_tiny_model_dir(tmp / "tiny")
    plan = compile_plan(tmp, recipe(), *overrides)
    return train(plan, tmp / "run"), tmp / "run"


def plan_of(out: Path):
    from ftc.compiler.lock import Plan

    return Plan.load(out.parent / "plan.lock")  # `run` compiled it beside the run folder


def rows(out: Path, split: str = "train") -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each row, as the compiler wrote them for the plan that trained in `out`."""
    import pyarrow.parquet as pq

    table = pq.read_table(plan_of(out).artifact("tokens", split)).sort_by("row_id")
    return list(zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip(f"needs the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)")
    return run(tmp_path_factory.mktemp("sft"))


def prompt_and_completion_nll(model, data) -> tuple[float, float]:
    """Mean next-token NLL over prompt tokens and over completion tokens (labels = all ids)."""
    from ftc.runtime.evaluate import token_logprobs

    prompt_nll, completion_nll = [], []
    for ids, labels in data:
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                 "labels": torch.tensor([ids])}
        with torch.no_grad():
            logprobs, _ = token_logprobs(model, batch)
        is_prompt = torch.tensor(labels[1:]) == -100  # position p scores token p+1
        prompt_nll.append(-logprobs[0][is_prompt].mean())
        completion_nll.append(-logprobs[0][~is_prompt].mean())
    return float(torch.stack(prompt_nll).mean()), float(torch.stack(completion_nll).mean())


@needs_tokenizer
def test_loss_falls_and_greedy_generation_repeats_the_trained_completions(trained):
    from ftc.runtime.infer import generate, load_trained

    facts, out = trained
    assert facts["train"]["global_step"] == 40
    assert facts["train"]["first_loss"] / facts["train"]["last_loss"] > 5
    trained_model = load_trained(out)  # base rebuilt from config + seed, adapter loaded by PEFT
    model, eos = trained_model.model, trained_model.tokenizer.eos_token_id
    data = rows(out)
    assert len(data) == 4 and all(ids[-1] == eos for ids, _ in data)  # the compiler appended a trained eos
    for ids, labels in data:
        n_prompt = labels.index(next(l for l in labels if l != -100))
        completion = ids[n_prompt:]
        assert generate(model, ids[:n_prompt], max_new_tokens=len(completion) + 4, eos_token_id=eos) == completion


@needs_tokenizer
def test_completion_only_labels_leave_the_prompt_unlearned(trained):
    from ftc.runtime.infer import load_base_for_run, load_trained

    facts, out = trained
    data = rows(out)
    before = prompt_and_completion_nll(load_base_for_run(facts), data)
    after = prompt_and_completion_nll(load_trained(out).model, data)
    assert after[1] < 0.05 * before[1], (before, after)  # completion learned
    assert after[0] > 0.5 * before[0], (before, after)  # prompt not learned (a memorized prompt goes near 0)


@needs_tokenizer
def test_run_folder_holds_adapter_metrics_run_facts_and_report(trained):
    from peft import PeftConfig

    facts, out = trained
    assert PeftConfig.from_pretrained(str(out)).r == 16
    assert (out / "adapter_model.safetensors").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_lines] == list(range(5, 41, 5))
    for m in train_lines:
        assert set(m) >= {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"}
        assert m["tokens_per_second"] > 0
    assert "eval_loss" in metrics[-1]
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk["plan_hash"] == plan_of(out).plan_hash == facts["plan_hash"] and on_disk["backend"] == "hf"
    assert on_disk["name"] == "tiny-sft" and on_disk["method"] == "sft"
    assert set(on_disk["versions"]) >= {"torch", "transformers", "peft", "trl"}
    assert on_disk["model"]["random_init"] and on_disk["model"]["fingerprint"]
    # padded batches: every row is a slot as long as the batch's longest row
    assert on_disk["tokens"]["real"] < on_disk["tokens"]["slots"]
    assert on_disk["tokens"]["real"] == 40 * sum(len(ids) for ids, _ in rows(out))
    # the plan's settings as the resolver stored them reached the trainer (warmup from the lock's schedule)
    assert on_disk["settings"]["train"]["learning_rate"] == 1e-2 and on_disk["settings"]["train"]["seed"] == 7
    report = (out / "report.md").read_text()
    assert "Random weights" in report and facts["plan_hash"] in report and "![loss](loss.png)" in report
    assert "| memory plan | gradient checkpointing off, micro-batch 4 x 1 (about " in report and "of RAM (no GPU)) |" in report
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


@needs_tokenizer
def test_eval_loss_is_token_weighted_and_matches_ftc_eval(trained):
    from ftc.runtime.evaluate import eval_loss
    from ftc.runtime.infer import load_trained

    facts, out = trained
    trained_model = load_trained(out)
    again = eval_loss(trained_model.model, plan_of(out).artifact("tokens", "eval"),
                      pad_token_id=trained_model.tokenizer.pad_token_id, batch_size=1)
    assert again["tokens"] == facts["eval"]["tokens"] == sum(sum(l != -100 for l in labels[1:]) for _, labels in rows(out, "eval"))
    assert again["loss"] == pytest.approx(facts["eval"]["loss"], rel=1e-4)
    assert facts["eval"]["loss"] < 0.5


@needs_tokenizer
def test_export_merges_the_adapter_into_weights_transformers_loads(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from ftc.runtime.export import export_merged
    from ftc.runtime.infer import load_trained

    _, out = trained
    merged_dir = export_merged(out, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").exists() and (merged_dir / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    peft_model = load_trained(out).model
    ids = torch.tensor([rows(out)[0][0]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids.to(peft_model.device)).logits.cpu()
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-3 * float(expected.abs().max()), rtol=0)


@needs_tokenizer
@pytest.mark.slow
def test_control_full_labels_do_learn_the_prompt(trained, tmp_path):
    """The control of the completion-only test: the same run with every token labelled does
    drive the prompt NLL down, so that test's threshold can fail."""
    from ftc.runtime.infer import load_base_for_run, load_trained

    facts, out = run(tmp_path, "train.completion_only_loss=false")
    assert all(-100 not in labels for _, labels in rows(out))  # the compiler labelled the prompt too
    data = rows(trained[1])  # the completion-only labels: only to tell prompt from completion positions
    assert [ids for ids, _ in rows(out)] == [ids for ids, _ in data]
    before = prompt_and_completion_nll(load_base_for_run(facts), data)
    after = prompt_and_completion_nll(load_trained(out).model, data)
    assert after[0] < 0.5 * before[0], (before, after)


@needs_tokenizer
def test_the_same_batch_cut_into_other_micro_batches_trains_the_same(tmp_path):
    """What micro_batch "auto" relies on: 4 rows x 1 and 2 rows x 2 accumulation give each step
    the same rows and the same loss (normalized over the whole accumulated batch), so the
    adapters match. On the CPU the plan's split is used and run.json says so."""
    from safetensors.torch import load_file

    short = ("train.max_steps=3", "train.logging_steps=1")
    one, out_one = run(tmp_path / "a", *short, "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=1")
    two, out_two = run(tmp_path / "b", *short, "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=2")
    losses = lambda out: [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]  # noqa: E731
    assert len(losses(out_one)) == 3
    assert losses(out_one) == pytest.approx(losses(out_two), rel=1e-5)  # measured: 1e-7
    a, b = load_file(out_one / "adapter_model.safetensors"), load_file(out_two / "adapter_model.safetensors")
    # float32 sums in another order, through three Adam steps: equal to 1e-3 of each tensor's scale
    assert a.keys() == b.keys() and all(float((a[k] - b[k]).abs().max()) <= 1e-3 * float(a[k].abs().max()) for k in a)
    plan = two["memory_plan"]
    assert plan["setting"] == {"gradient_checkpointing": False, "micro_batch": "auto"} and "(no GPU)" in plan["reason"]
    assert plan["used"] == {"gradient_checkpointing": False, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
