"""`ftc run` end to end on the shipped demo, and every bad input it must refuse (exit 2, nothing overwritten)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("trl")


@pytest.fixture
def demo(tmp_path) -> Path:
    """A copy of the demo recipe and its assets, compiled small."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "recipes" / "demo", proj / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", proj / "demo.json")
    return proj


def compile_demo(cli, proj: Path, *sets: str) -> Path:
    lock = proj / "plan.lock"
    args = ["compile", proj / "demo.json", "-o", lock, "-q", "--set", "transforms.2.extract.required=false"]
    for s in sets:
        args += ["--set", s]
    code, _, err = cli(*args)
    assert code == 0, err
    return lock


def test_run_trains_writes_outputs_and_infers(cli, demo, tmp_path, capsys):
    lock = compile_demo(cli, demo, "train.num_train_epochs=1", "train.save_steps=2", "train.logging_steps=1")
    out = tmp_path / "run"
    code, stdout, err = cli("run", lock, "--output", out, "--max-steps", "3")
    assert code == 0, err
    facts = json.loads((out / "run.json").read_text())
    assert facts["plan_hash"] == json.loads(lock.read_text())["plan_hash"]
    assert facts["backend"] == "hf" and facts["backend_reason"].startswith(("auto:", "asked"))
    assert facts["train"]["global_step"] == 3
    assert (out / "adapter_config.json").exists() and (out / "report.md").exists()
    steps = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "loss" in m] == [1, 2, 3]
    assert all(m["tokens_per_second"] > 0 for m in steps if "loss" in m)
    from peft import PeftModel  # the adapter loads with plain PEFT

    assert PeftModel is not None
    code, stdout, err = cli("infer", out, "--input", json.dumps({"question": "What is 2 + 2?"}), "--max-new-tokens", "5")
    assert code == 0, err
    code, stdout, err = cli("eval", out)
    assert code == 0, err
    assert f"eval: loss {facts['eval']['loss']:.4f}" in stdout  # the same figure the run recorded
    code, stdout, err = cli("export", out, "--merged", tmp_path / "merged")
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert merged.config.model_type == "qwen2" and (tmp_path / "merged" / "model.safetensors").exists()
    # the same run folder refuses a different plan, and a resume without checkpoints is refused
    other = compile_demo(cli, demo, "train.learning_rate=1e-3")
    code, _, err = cli("run", other, "--output", out)
    assert code == 2 and "holds the run of another plan" in err
    code, _, err = cli("run", lock, "--output", tmp_path / "fresh", "--resume")
    assert code == 2 and "no checkpoint" in err
    assert not (tmp_path / "fresh" / "run.json").exists()


def test_infer_uses_the_training_template(cli, demo, tmp_path):
    """The prompt ids at inference are exactly the trained prompt's ids."""
    from transformers import AutoTokenizer

    from ftc.runtime.run import format_request

    lock_path = compile_demo(cli, demo)
    lock = json.loads(lock_path.read_text())
    tok = AutoTokenizer.from_pretrained(str(demo / "demo" / "tokenizer"))
    row = lock["samples"]["train"][0]
    import pyarrow.parquet as pq

    data = {r["row_id"]: r for r in pq.read_table(lock_path.parent / lock["artifacts"]["data"]["train"]["path"]).to_pylist()}
    ids = format_request(lock, {"question": data[row["row_id"]]["question"]}, tok)
    assert tok.decode(ids) == row["prompt"]


def test_changed_source_is_refused(cli, demo, tmp_path):
    lock = compile_demo(cli, demo)
    data = demo / "demo" / "gsm8k_64.jsonl"
    data.write_text(data.read_text().replace("Natalia", "Natalie", 1))
    code, _, err = cli("run", lock, "--output", tmp_path / "r")
    assert code == 2
    assert "gsm8k_64.jsonl changed since the plan was compiled" in err and "ftc compile" in err
    assert not (tmp_path / "r").exists()


def test_missing_artifact_is_rebuilt_from_matching_sources(cli, demo):
    from ftc.runtime.verify import verify

    lock = compile_demo(cli, demo)
    shutil.rmtree(demo / ".ftc")
    plan = verify(lock)
    assert set(plan.rebuilt) == {"data/train", "data/eval", "tokens/train", "tokens/eval"}
    assert all(plan.path(art["path"]).exists() for _, _, art in plan.artifacts())


def test_tampered_and_newer_locks_are_refused(cli, demo, tmp_path):
    lock = compile_demo(cli, demo)
    doc = json.loads(lock.read_text())
    doc["settings"]["train"]["learning_rate"] = 1.0
    lock.write_text(json.dumps(doc))
    code, _, err = cli("run", lock, "--output", tmp_path / "r")
    assert code == 2 and "FTC502" in err


def test_missing_model_is_a_clear_error(cli, demo, tmp_path):
    lock = compile_demo(cli, demo, "model.name=no/such-model", "model.init=pretrained")
    code, _, err = cli("run", lock, "--output", tmp_path / "r")
    assert code == 2 and "no/such-model" in err and "Traceback" not in err


def test_unsloth_backend_without_cuda_is_a_clear_error(cli, demo, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    lock = compile_demo(cli, demo)
    code, _, err = cli("run", lock, "--output", tmp_path / "r", "--backend", "unsloth")
    assert code == 2 and "--backend unsloth needs a CUDA GPU" in err


def test_missing_artifact_with_missing_source_is_refused(cli, demo, tmp_path):
    lock = compile_demo(cli, demo)
    shutil.rmtree(demo / ".ftc")
    (demo / "demo" / "gsm8k_64.jsonl").unlink()
    code, _, err = cli("run", lock, "--output", tmp_path / "r")
    assert code == 2 and "gsm8k_64.jsonl" in err and "missing" in err and "ftc compile" in err
