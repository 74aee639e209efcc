"""On a CUDA GPU only (skipped elsewhere, with the reason): the demo plan through both backends.

What the GPU path promises and the CPU tests cannot show: `--backend unsloth` trains the same
plan as `--backend hf` (same first losses, both falling), records what the memory plan chose,
saves an adapter `ftc infer` can use; QLoRA loads through bitsandbytes on the hf backend.
Every ftc call is a subprocess, as a user runs it, so unsloth (which patches TRL process-wide
on import) never enters the pytest process. The commands are those `tests/bench/gpu_e2e.py`
ran on the lent H200, at the demo's tiny size.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("GPU tests: needs a CUDA GPU (torch.cuda.is_available() is False here)", allow_module_level=True)
pytestmark = pytest.mark.gpu
needs_unsloth = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs the unsloth package (pip install '.[gpu]')")
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes for QLoRA")
STEPS = 8


def ftc(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "ftc.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("gpu")
    shutil.copytree(ROOT / "recipes" / "demo", proj / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", proj / "demo.json")
    return proj


@pytest.fixture(scope="module")
def lock(project) -> Path:
    lock = project / "plan.lock"
    ftc("compile", project / "demo.json", "-o", lock, "-q", "--set", "model.dtype=bfloat16",
        "--set", "train.logging_steps=1", "--set", "train.gradient_checkpointing=auto", cwd=project)
    return lock


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if m.get("loss") is not None]


@needs_unsloth
def test_unsloth_trains_the_plan_hf_trains(project, lock):
    hf, us = project / "hf", project / "unsloth"
    ftc("run", lock, "--backend", "hf", "--output", hf, "--max-steps", STEPS, cwd=project)
    ftc("run", lock, "--backend", "unsloth", "--output", us, "--max-steps", STEPS, cwd=project)
    a, b = json.loads((hf / "run.json").read_text()), json.loads((us / "run.json").read_text())
    assert (a["backend"], b["backend"]) == ("hf", "unsloth")
    assert b["backend_facts"]["import_unsloth_s"] > 0 and b["backend_facts"]["random_base"] == "random_base"
    assert a["model"]["fingerprint"] == b["model"]["fingerprint"]  # the same random base, rebuilt from config + seed
    # the same plan: same batches, the same first loss up to bf16 kernels, and both learn
    assert len(losses(hf)) == len(losses(us)) == STEPS
    assert losses(us)[0] == pytest.approx(losses(hf)[0], rel=2e-2)
    assert losses(hf)[-1] < losses(hf)[0] and losses(us)[-1] < losses(us)[0]
    for facts in (a, b):
        plan = facts["memory_plan"]
        assert plan["gpu_gib"] > 0 and plan["setting"]["gradient_checkpointing"] == "auto"
        used = plan["used"]
        assert used["per_device_train_batch_size"] * used["gradient_accumulation_steps"] == 4  # the demo's batch
        assert facts["flops"]["flops_per_token"] > 0 and facts["peak_memory"]["kind"] == "cuda_max_allocated"
    assert (us / "adapter_model.safetensors").exists() and (us / "unsloth_compiled_cache").is_dir()
    said = ftc("infer", us, "--max-new-tokens", 8, "--input", json.dumps({"question": "What is 2 + 3?"}), cwd=project)
    assert said.stdout.strip()


@needs_bnb
def test_qlora_on_the_hf_backend(project, tmp_path):
    """QLoRA needs trained weights on disk: the demo's random base is saved first, then loaded in 4 bit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(project / "demo" / "model")).save_pretrained(base)
    lock = tmp_path / "q.lock"
    ftc("compile", project / "demo.json", "-o", lock, "-q", "--set", f"model.name={base}", "--set", "model.init=pretrained", "--set", "model.config={}",
        "--set", "model.load_in_4bit=true", "--set", "model.dtype=bfloat16", "--set", "train.logging_steps=1", cwd=project)
    run = tmp_path / "run"
    ftc("run", lock, "--backend", "hf", "--output", run, "--max-steps", 4, cwd=project)
    facts = json.loads((run / "run.json").read_text())
    assert facts["model"]["load_in_4bit"] is True and facts["memory_plan"]["estimate"]["weights_gib"] >= 0
    assert len(losses(run)) == 4 and (run / "adapter_model.safetensors").exists()


@needs_unsloth
def test_unsloth_runs_grpo_through_the_same_skeleton(project):
    """A few GRPO steps of a tiny prompt plan on each backend: both finish, log the declared reward, save the
    adapter, and keep the reviewed batch (unsloth's GRPO config may not change it, FTC refuses that)."""
    recipe = json.loads((project / "demo.json").read_text())
    recipe.update(name="demo_grpo", template={"format": "prompt", "prompt": "Question: {{ question }}\nAnswer:"})
    recipe["train"] = {"method": "grpo", "learning_rate": 1e-4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                       "max_steps": 3, "logging_steps": 1, "seed": 0,
                       "grpo": {"num_generations": 4, "max_prompt_length": 128, "max_completion_length": 8,
                                "rewards": [{"kind": "regex", "name": "digit", "pattern": "[0-9]"}]}}
    (project / "grpo.json").write_text(json.dumps(recipe))
    lock = project / "grpo.lock"
    ftc("compile", project / "grpo.json", "-o", lock, "-q", "--set", "model.dtype=bfloat16", cwd=project)
    for backend in ("hf", "unsloth"):
        run = project / f"grpo-{backend}"
        ftc("run", lock, "--backend", backend, "--output", run, cwd=project)
        facts = json.loads((run / "run.json").read_text())
        assert facts["backend"] == backend and facts["method"] == "grpo" and facts["train"]["global_step"] == 3
        assert facts["grpo"]["num_generations"] == 4 and facts["grpo"]["rewards"][0]["name"] == "digit"
        assert (run / "adapter_model.safetensors").exists()


def test_an_fsdp_plan_on_one_gpu_trains_sharded_on_hf(project, tmp_path):
    """`ftc run` of a plan with train.fsdp launches torchrun even for one GPU (the Trainer takes FSDP only
    in distributed training), picks the hf backend (unsloth does not shard), and run.json says, from the
    Trainer, that FSDP was in force; the adapter it saves answers `ftc infer`."""
    lock = tmp_path / "fsdp.lock"
    ftc("compile", project / "demo.json", "-o", lock, "-q", "--set", "model.dtype=bfloat16", "--set", "train.logging_steps=1",
        "--set", "train.fsdp=full_shard auto_wrap", cwd=project)
    run = tmp_path / "run"
    out = ftc("run", lock, "--output", run, "--max-steps", 2, cwd=project)
    assert "ftc: launching" in out.stderr and "--nproc-per-node=1" in out.stderr
    facts = json.loads((run / "run.json").read_text())
    assert facts["distributed"]["fsdp"] is True and facts["distributed"]["wrapper"].startswith("FSDP"), facts["distributed"]
    assert facts["backend"] == "hf" and facts["train"]["global_step"] == 2 and len(losses(run)) == 2
    if importlib.util.find_spec("unsloth") is not None:
        assert "train.fsdp" in facts["backend_reason"]
        refused = subprocess.run([sys.executable, "-m", "ftc.cli", "run", lock, "--backend", "unsloth", "--output", tmp_path / "u"],
                                 cwd=project, capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and "error[FTC768]" in refused.stderr and not (tmp_path / "u").exists(), refused.stderr[-2000:]
    said = ftc("infer", run, "--max-new-tokens", 8, "--input", json.dumps({"question": "What is 2 + 3?"}), cwd=project)
    assert said.stdout.strip()
