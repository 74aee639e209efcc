"""`ftc run` end to end on the shipped demo, and every bad input it must refuse (exit 2, nothing overwritten)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


pytest.importorskip("torch")
pytest.importorskip("trl")


def refused(cli, code: str, *args) -> str:
    """`ftc ARGS` fails the way a person's mistake should: exit 2, error[CODE], no traceback; its stderr."""
    rc, _, err = cli(*args)
    assert rc == 2 and f"error[{code}]" in err and "Traceback" not in err, err
    return err


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
    rows = artifact_rows(lock)  # what --dry-run prints is what training saw, row by row and in order
    shown = dry_run(cli, out, [{"question": d["question"]} for d, _ in rows], tmp_path)
    assert [s["prompt"] for s in shown] == [d["prompt"] for d, _ in rows]
    assert [s["prompt_ids"] for s in shown] == [prompt_part(t["input_ids"], t["labels"]) for _, t in rows]
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
    err = refused(cli, "FTC704", "run", other, "--output", out)
    assert "holds the run of another plan" in err and json.loads(other.read_text())["plan_hash"][:12] in err
    err = refused(cli, "FTC706", "run", lock, "--output", tmp_path / "fresh", "--resume")
    assert "--resume: no checkpoint in" in err and "without --resume" in err
    assert not (tmp_path / "fresh" / "run.json").exists()
    # a random-init base that rebuilds to other weights than the adapter was trained on is refused
    doc = json.loads((out / "run.json").read_text())
    doc["model"]["fingerprint"] = "0" * 64
    (out / "run.json").write_text(json.dumps(doc))
    err = refused(cli, "FTC714", "infer", out, "--input", json.dumps({"question": "2 + 2?"}), "--max-new-tokens", "1")
    assert "is not the one this adapter was trained on (000000000000)" in err and "torch version" in err


def prompt_part(input_ids: list[int], labels: list[int]) -> list[int]:
    n = next((i for i, lab in enumerate(labels) if lab != -100), len(labels))
    return input_ids[:n]


def artifact_rows(lock_path: Path, split: str = "train") -> list[tuple[dict, dict]]:
    """(data row, token row) pairs of a compiled split, in the token artifact's order."""
    import pyarrow.parquet as pq

    lock = json.loads(lock_path.read_text())
    data = {r["row_id"]: r for r in pq.read_table(lock_path.parent / lock["artifacts"]["data"][split]["path"]).to_pylist()}
    return [(data[t["row_id"]], t) for t in pq.read_table(lock_path.parent / lock["artifacts"]["tokens"][split]["path"]).to_pylist()]


def dry_run(cli, run_dir: Path, requests: list[dict], tmp_path: Path) -> list[dict]:
    """`ftc infer RUN --input FILE --dry-run --json`: one {prompt, prompt_ids} a line, in order."""
    file = tmp_path / "requests.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in requests), encoding="utf-8")
    code, out, err = cli("infer", run_dir, "--input", file, "--dry-run", "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_infer_feeds_the_training_prompt_ids(cli, demo):
    """The prompt ids at inference are exactly the trained prompt part's ids, row by row."""
    from ftc.compiler.request import prompt_of_request
    from ftc.runtime.run import plan_tokenizer

    lock_path = compile_demo(cli, demo)
    lock = json.loads(lock_path.read_text())
    from ftc.compiler.lock import Plan, canonical

    run = demo / "elsewhere" / "run"  # a run folder's copy of the lock, anchored there as `ftc run` writes it
    run.mkdir(parents=True)
    (run / "plan.lock").write_text(canonical(Plan.load(lock_path).anchored_at(run / "plan.lock")))
    tok = plan_tokenizer(run)
    rows = artifact_rows(lock_path) + artifact_rows(lock_path, "eval")
    assert len(rows) == 64
    for data, t in rows:
        _, ids = prompt_of_request(lock, {"question": data["question"]}, tok)
        assert ids == prompt_part(t["input_ids"], t["labels"]), t["row_id"]


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
    lock = compile_demo(cli, demo, "model.name=no/such-model", "model.init=pretrained", "model.config={}")
    err = refused(cli, "FTC713", "run", lock, "--output", tmp_path / "r")
    assert "at model.name: cannot load model" in err and "no/such-model" in err and "with transformers" in err


def test_unsloth_backend_without_cuda_is_a_clear_error(cli, demo, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    lock = compile_demo(cli, demo)
    err = refused(cli, "FTC701", "run", lock, "--output", tmp_path / "r", "--backend", "unsloth")
    assert "--backend unsloth needs a CUDA GPU" in err and "use --backend hf" in err


def test_missing_artifact_with_missing_source_is_refused(cli, demo, tmp_path):
    lock = compile_demo(cli, demo)
    shutil.rmtree(demo / ".ftc")
    (demo / "demo" / "gsm8k_64.jsonl").unlink()
    code, _, err = cli("run", lock, "--output", tmp_path / "r")
    assert code == 2 and "gsm8k_64.jsonl" in err and "missing" in err and "ftc compile" in err


def test_dry_run_feeds_the_bos_that_training_put_in_the_prompt(cli, tmp_path):
    """A Llama-style tokenizer adds a BOS: compile puts it in every row's prompt part, and
    `ftc infer --dry-run` of a trained run feeds the very same ids, BOS first."""
    from test_encode_prompt import bos_recipe

    recipe = bos_recipe(tmp_path / "proj", rows=4)
    lock = tmp_path / "proj" / "plan.lock"
    code, _, err = cli("compile", recipe, "-o", lock, "-q", "--set", "split.eval=0")
    assert code == 0, err
    code, _, err = cli("run", lock, "--output", tmp_path / "run", "--max-steps", "1")
    assert code == 0, err
    rows = artifact_rows(lock)
    shown = dry_run(cli, tmp_path / "run", [{"question": d["question"]} for d, _ in rows], tmp_path)
    assert [s["prompt_ids"] for s in shown] == [prompt_part(t["input_ids"], t["labels"]) for _, t in rows]
    assert all(s["prompt_ids"][0] == 0 and s["prompt_ids"].count(0) == 1 for s in shown)  # the BOS, once


def test_dry_run_refuses_a_tokenizer_changed_since_compile_and_json_alone(cli, tmp_path):
    from test_encode_prompt import bos_recipe

    recipe = bos_recipe(tmp_path / "proj", rows=4)
    lock = tmp_path / "proj" / "plan.lock"
    code, _, err = cli("compile", recipe, "-o", lock, "-q", "--set", "split.eval=0")
    assert code == 0, err
    from ftc.compiler.lock import Plan, canonical

    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.lock").write_text(canonical(Plan.load(lock).anchored_at(run / "plan.lock")))
    code, _, err = cli("infer", run, "--input", json.dumps({"question": "2 + 2?"}), "--json")
    assert code == 2 and "--json is the output of --dry-run" in err
    code, out, err = cli("infer", run, "--input", json.dumps({"question": "2 + 2?"}), "--dry-run")
    assert code == 0 and "── request 1:" in out and "Question: 2 + 2?" in out and "ids: [0, " in out
    config = tmp_path / "proj" / "bos" / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length": 512', '"model_max_length": 513'))
    code, _, err = cli("infer", run, "--input", json.dumps({"question": "2 + 2?"}), "--dry-run", "--json")
    assert code == 2 and "FTC506" in err and "(tokenizer_config.json changed)" in err and "Traceback" not in err


# ---------------------------------------------------------------- refusals before any training step


def test_an_output_folder_that_holds_something_else_is_refused(cli, demo, tmp_path):
    lock = compile_demo(cli, demo)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    err = refused(cli, "FTC705", "run", lock, "--output", tmp_path / "r")
    assert "is not empty and holds no ftc run" in err and "--output" in err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["notes.txt"]


def test_a_folder_that_is_not_a_run_is_named_as_such(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    for args in (("infer", tmp_path / "empty", "--input", json.dumps({"question": "2 + 2?"})), ("eval", tmp_path / "empty")):
        err = refused(cli, "FTC708", *args)
        assert "is not a run folder: it has no plan.lock" in err and "output folder of `ftc run`" in err
    err = refused(cli, "FTC708", "export", tmp_path / "empty", "--merged", tmp_path / "merged")
    assert "it has no run.json" in err and not (tmp_path / "merged").exists()


def test_4bit_with_a_random_init_model_is_refused(cli, demo, tmp_path):
    """Refused when compiling now (the demo's model is init=random), so no lock for `ftc run` exists."""
    err = refused(cli, "FTC710", "compile", demo / "demo.json", "-o", tmp_path / "p.lock", "--set", "model.load_in_4bit=true")
    assert "at model.load_in_4bit: 4-bit quantization needs trained weights" in err and "model.init=pretrained" in err
    assert not (tmp_path / "p.lock").exists()


def test_4bit_without_a_gpu_is_refused(cli, demo, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    lock = compile_demo(cli, demo, "model.init=pretrained", "model.config={}", "model.load_in_4bit=true")  # config: init=random's
    err = refused(cli, "FTC712", "run", lock, "--output", tmp_path / "r")
    assert "model.load_in_4bit needs a CUDA GPU" in err and "model.load_in_4bit=false" in err


def test_a_random_init_model_without_a_config_is_refused(cli, demo, tmp_path):
    (demo / "no-config").mkdir()
    lock = compile_demo(cli, demo, "model.name=no-config")
    err = refused(cli, "FTC711", "run", lock, "--output", tmp_path / "r")
    assert "at model.name: cannot read the config of model" in err and "no-config" in err and "config.json" in err


def test_token_ids_outside_the_models_vocabulary_are_refused(cli, demo, tmp_path):
    lock = compile_demo(cli, demo, 'model.config={"initializer_range": 0.2, "vocab_size": 64}')
    err = refused(cli, "FTC715", "run", lock, "--output", tmp_path / "r")
    assert "is outside the model's vocabulary (64 ids)" in err and "tokens" in err and "tokenizer" in err
    assert not (tmp_path / "r" / "checkpoints").exists()
