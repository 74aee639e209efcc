"""DPO from an SFT run's adapter (`model.adapter`): the usual path, SFT first and a preference stage after it.

A tiny SFT run on real pairs (prompt -> chosen), then recipes/dpo.json with `model.adapter` set
to that run's folder. ftc merges the SFT adapter into the base (runtime/model.py merge_adapter)
and trains the DPO LoRA on top, the reference being that merged model with the DPO adapter off.
So before any update policy = reference = base + SFT, and the first loss is ln 2; the policy's
log-probabilities TRL logs at the first step are those of base + SFT (PEFT's own loading is the
oracle), not those of the bare base. `ftc infer`/`eval` of the DPO run load base + SFT + DPO (PEFT
stacking both adapters is the oracle, and `ftc eval`'s margins are recomputed from it), and an
adapter folder changed after compile is refused by `ftc run` with the key named.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from conftest import NEEDS_SHARED, SHARED, TOKENIZER  # noqa: E402
from fixtures import ALL_LINEAR, compile_plan, one_torch_thread, train, write_jsonl, write_tiny_model_dir  # noqa: E402,F401
from test_preference_train import ROWS, metrics, plan_for  # noqa: E402

pytestmark = NEEDS_SHARED

PAIRS = SHARED / "data" / "preference" / "dpo_en_demo.json"
BETA = 0.5


def sft_recipe() -> dict:
    """Prompt -> chosen answer of the first real pairs, in the tiny shape the DPO test trains."""
    return {
        "name": "sft-before-dpo",
        "sources": {"qa": {"path": "qa.jsonl"}},
        "split": {"eval": 0},
        "template": {"format": "prompt_completion", "prompt": "{{ prompt }}", "completion": "{{ completion }}"},
        "model": {"name": "tiny", "init": "random", "tokenizer": str(TOKENIZER), "max_seq_length": 48, "dtype": "float32"},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ALL_LINEAR},
        "train": {"learning_rate": 1e-2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                  "max_steps": 6, "warmup_steps": 0, "lr_scheduler_type": "constant", "overlong": "truncate",
                  "save_steps": 100, "gradient_checkpointing": False},
    }


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft")
    pairs = json.loads(PAIRS.read_text(encoding="utf-8"))[:8]
    write_jsonl(folder / "qa.jsonl", [{"prompt": p["conversations"][-1]["value"], "completion": p["chosen"]["value"]}
                                      for p in pairs])
    write_tiny_model_dir(folder / "tiny")
    recipe = sft_recipe()
    recipe["model"]["name"] = str(folder / "tiny")
    train(compile_plan(folder, recipe), folder / "run")
    return folder / "run"


def dpo_plan(folder: Path, adapter: Path, steps: int, *extra: str):
    """recipes/dpo.json on a few real pairs, on the SFT run's base, starting from its adapter; one
    batch holds every training pair, so the first step's logged means are over known pairs."""
    base = json.loads((adapter / "run.json").read_text())["settings"]["model"]["name"]
    return plan_for(folder, "dpo", steps, f"train.dpo.beta={BETA}", f"model.name={base}", f"model.adapter={adapter}",
                    f"train.per_device_train_batch_size={ROWS}", *extra)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, sft_run):
    folder = tmp_path_factory.mktemp("dpo")
    plan = dpo_plan(folder, sft_run, 3)
    from ftc.cli import main

    assert main(["run", str(plan.lock_path), "--output", str(folder / "run")]) == 0  # as a user runs it: eval reads its lock
    return plan, json.loads((folder / "run" / "run.json").read_text()), folder / "run"


def completion_logps(model, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
    """Summed log-probability of each completion after its prompt, one sequence at a time (no padding)."""
    out = []
    for p, c in zip(prompts, completions):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].double()
        out.append(logits.log_softmax(-1).gather(-1, torch.tensor(c)[:, None]).sum())
    return torch.stack(out)


def side_logps(model, table, side: str) -> torch.Tensor:
    return completion_logps(model, table.column("prompt_ids").to_pylist(), table.column(f"{side}_ids").to_pylist())


def base_model(facts: dict, adapter: Path | None = None):
    """The run's base without its `model.adapter`, with `adapter` put on by PEFT itself when given."""
    from peft import PeftModel

    from ftc.runtime.model import load_base_model

    plain = dict(facts["settings"]["model"], adapter=None)
    model = load_base_model(plain, seed=facts["settings"]["train"]["seed"], device="cpu").model
    return (PeftModel.from_pretrained(model, str(adapter)) if adapter else model).eval()


def test_the_lock_fingerprints_the_sft_adapter(dpo_run, sft_run):
    plan, _, _ = dpo_run
    record = plan.lock["adapter"]
    assert record["kind"] == "run" and record["lora"]["r"] == 8
    assert {f["path"] for f in record["files"]} == {"adapter_config.json", "adapter_model.safetensors"}
    assert plan.settings["model"]["adapter"] and plan.path(plan.settings["model"]["adapter"]) == sft_run


def test_the_first_dpo_loss_is_ln2_and_its_policy_is_base_plus_the_sft_adapter(dpo_run, sft_run):
    import pyarrow.parquet as pq

    plan, facts, run = dpo_run
    lines = [m for m in metrics(run) if "loss" in m]
    assert len(lines) == 3 and facts["train"]["global_step"] == 3
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference = base + SFT
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert lines[-1]["loss"] < lines[0]["loss"]  # and it trains from there
    table = pq.read_table(plan.artifact("tokens", "train"))
    assert table.num_rows == ROWS  # one batch: the logged means are over these pairs
    with_sft, bare = base_model(facts, sft_run), base_model(facts)
    for side in ("chosen", "rejected"):
        want = float(side_logps(with_sft, table, side).mean())
        assert lines[0][f"logps/{side}"] == pytest.approx(want, rel=1e-4, abs=1e-3)
        assert abs(float(side_logps(bare, table, side).mean()) - want) > 1.0  # the SFT adapter counts
    assert facts["preference"]["first_loss"] == lines[0]["loss"]


def test_infer_and_eval_of_the_dpo_run_apply_both_adapters(dpo_run, sft_run, cli):
    """PEFT's own stacking is the oracle: base + SFT adapter + DPO adapter, both active, unmerged;
    `ftc eval`'s margins recomputed from it with the SFT-only model as the reference."""
    import pyarrow.parquet as pq
    from peft import PeftModel

    from ftc.runtime.infer import load_trained

    plan, facts, run = dpo_run
    stacked = PeftModel.from_pretrained(base_model(facts), str(sft_run), adapter_name="sft")
    stacked.load_adapter(str(run), adapter_name="dpo")
    stacked.base_model.set_adapter(["sft", "dpo"])
    stacked.eval()
    ids = torch.tensor([[5, 17, 99, 4, 250, 31, 7, 8]])
    with torch.no_grad():
        want, sft_only = stacked(input_ids=ids).logits, base_model(facts, sft_run)(input_ids=ids).logits
        got = load_trained(run, device="cpu").model(input_ids=ids).logits  # what `ftc infer` and `ftc eval` load
    assert not torch.allclose(want, sft_only, atol=1e-4)  # the DPO adapter counts, so the check can fail
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    request = json.dumps({"prompt": plan.lock["samples"]["train"][0]["prompt"]})  # a rendered pair's prompt turns
    code, stdout, err = cli("infer", run, "--input", request, "--dry-run", "--json")
    assert code == 0, err
    prompt_ids = json.loads(stdout.splitlines()[0])["prompt_ids"]
    code, _, err = cli("infer", run, "--input", request, "--max-new-tokens", 6, "--temperature", 0,
                       "--output", run.parent / "answers.jsonl")
    assert code == 0, err
    answer = json.loads((run.parent / "answers.jsonl").read_text().splitlines()[0])
    with torch.no_grad():
        greedy = stacked.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=6, do_sample=False)
    assert answer["completion_ids"] == greedy[0, len(prompt_ids):].tolist()[: len(answer["completion_ids"])]
    assert len(answer["completion_ids"]) >= 1

    code, stdout, err = cli("eval", run)
    assert code == 0, err
    table, reference = pq.read_table(plan.artifact("tokens", "eval")), base_model(facts, sft_run)
    margins = BETA * ((side_logps(stacked, table, "chosen") - side_logps(reference, table, "chosen"))
                      - (side_logps(stacked, table, "rejected") - side_logps(reference, table, "rejected")))
    accuracy, margin = float((margins > 0).double().mean()), float(margins.mean())
    assert f"eval: preference accuracy {accuracy:.3f}, mean margin {margin:.4f}" in stdout, (stdout, margins)
    assert facts["eval"]["mean_margin"] == pytest.approx(margin, abs=1e-4)


def test_a_changed_sft_adapter_is_refused_by_ftc_run_naming_the_key(tmp_path, sft_run, cli):
    adapter = Path(shutil.copytree(sft_run, tmp_path / "sft_copy"))
    plan = dpo_plan(tmp_path / "p", adapter, 1)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    code, _, err = cli("run", plan.lock_path, "--output", tmp_path / "run")
    assert code == 2 and "FTC520" in err and "model.adapter" in err and "adapter_model.safetensors" in err, err
    assert "Traceback" not in err and not (tmp_path / "run" / "run.json").exists()
