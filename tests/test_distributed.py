"""Several processes for one plan (torchrun; gloo on the CPU): the global batch is the lock's."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("trl")


def demo_lock(cli, tmp_path, *sets: str):
    """The demo recipe compiled in tmp_path with 2 accumulation steps (so 2 processes can split it) and `sets`."""
    shutil.copytree(ROOT / "recipes" / "demo", tmp_path / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", tmp_path / "demo.json")
    lock = tmp_path / "plan.lock"
    code, _, err = cli("compile", tmp_path / "demo.json", "-o", lock, "-q", "--set", "train.gradient_accumulation_steps=2",
                       *[a for x in sets for a in ("--set", x)])
    assert code == 0, err
    return lock


def test_per_rank_accumulation_keeps_the_global_batch():
    from ftc.errors import FtcError
    from ftc.runtime.launch import per_rank_accumulation, torchrun_command

    train = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8}
    assert per_rank_accumulation(train, 4)["gradient_accumulation_steps"] == 2
    assert per_rank_accumulation(train, 1) is train
    with pytest.raises(FtcError) as e:
        per_rank_accumulation(train, 3)
    assert e.value.code == "FTC760" and "(2 x 8 accumulation = 16) cannot be split evenly over 3 processes" in str(e.value)
    assert "<a multiple of 3>" in e.value.hint
    cmd = torchrun_command(["run", "p.lock"], gpus=8, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--nnodes=2", "--node-rank=1",
                       "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500", "-m", "ftc", "run", "p.lock"]
    with pytest.raises(FtcError) as e:
        torchrun_command([], gpus=8, nnodes=2, node_rank=0, rdzv_endpoint=None)
    assert e.value.code == "FTC761" and "--nnodes 2 needs --rdzv-endpoint HOST:PORT" in str(e.value)


def test_several_processes_are_refused_before_any_starts(cli, tmp_path):
    """`ftc run --gpus/--nnodes` checks the plan before launching torchrun: nothing starts."""
    lock = demo_lock(cli, tmp_path)
    code, _, err = cli("run", lock, "--gpus", "3", "--output", tmp_path / "r3")
    assert code == 2 and "error[FTC760]" in err and "cannot be split evenly over 3 processes" in err and "Traceback" not in err
    code, _, err = cli("run", lock, "--nnodes", "2", "--output", tmp_path / "r2")
    assert code == 2 and "error[FTC761]" in err and "--rdzv-endpoint" in err and "Traceback" not in err
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r2").exists()
    # the backend's refusal too: said once, exit 2, not from each rank through torchrun (no CUDA here: FTC701)
    code, _, err = cli("run", lock, "--gpus", "2", "--backend", "unsloth", "--output", tmp_path / "u")
    assert code == 2 and err.count("error[FTC701]") == 1 and "launching" not in err and not (tmp_path / "u").exists(), err


@pytest.mark.slow
def test_two_processes_shard_the_data_and_keep_the_global_batch(cli, tmp_path):
    lock = demo_lock(cli, tmp_path, "train.logging_steps=1")
    facts = {}
    for n in (1, 2):
        code, _, err = cli("run", lock, "--gpus", str(n), "--max-steps", "2", "--output", tmp_path / f"r{n}")
        if code != 0 and n == 2:
            # Known flake, about 1 run in 50 on the 2-core CI box: a gloo rank aborts at start-up
            # ("terminate called without an active exception") before any step. One fresh retry;
            # every assertion below still applies to the run that succeeds.
            shutil.rmtree(tmp_path / "r2", ignore_errors=True)
            code, _, err = cli("run", lock, "--gpus", "2", "--max-steps", "2", "--output", tmp_path / "r2")
        assert code == 0, err
        facts[n] = json.loads((tmp_path / f"r{n}" / "run.json").read_text())
    one, two = facts[1], facts[2]
    assert two["distributed"]["world_size"] == 2 and two["distributed"]["gradient_accumulation_steps_per_rank"] == 1
    assert one["distributed"]["world_size"] == 1 and one["distributed"]["gradient_accumulation_steps_per_rank"] == 2
    assert two["distributed"]["global_batch"] == one["distributed"]["global_batch"] == 8
    # the same number of optimizer steps covers the same share of an epoch: each rank read half the packs
    assert two["train"]["epoch"] == pytest.approx(one["train"]["epoch"], rel=0.35)
    assert abs(two["train"]["first_loss"] - one["train"]["first_loss"]) / one["train"]["first_loss"] < 0.05
    assert (tmp_path / "r2" / "adapter_model.safetensors").exists()
    # what the Trainer applied, read from it: DDP on two ranks, no wrapper in one process, FSDP on neither
    assert two["distributed"]["wrapper"] == "DistributedDataParallel" and two["distributed"]["fsdp"] is False
    assert one["distributed"]["wrapper"] == "PeftModelForCausalLM" and one["distributed"]["fsdp"] is False


@pytest.mark.slow
def test_grpo_on_two_processes_takes_the_fast_path_on_each_rank(cli, tmp_path):
    """GRPO under DDP (gloo on the CPU): `generation: auto` builds a merged copy on every rank, each
    generating for its own prompts; the global batch (whole groups) and the step count are the lock's."""
    from test_grpo import GSM8K, compile_gsm8k

    from conftest import TOKENIZER

    if not (GSM8K.exists() and (TOKENIZER / "tokenizer.json").exists()):
        pytest.skip(f"needs GSM8K at {GSM8K} and the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)")
    plan = compile_gsm8k(tmp_path, "train.gradient_accumulation_steps=2", "train.per_device_train_batch_size=2")
    facts = {}
    for n in (1, 2):
        code, _, err = cli("run", plan.lock_path, "--gpus", str(n), "--max-steps", "2", "--output", tmp_path / f"r{n}")
        if code != 0 and n == 2:  # the known gloo start-up flake of the test above: one fresh retry
            shutil.rmtree(tmp_path / "r2", ignore_errors=True)
            code, _, err = cli("run", plan.lock_path, "--gpus", "2", "--max-steps", "2", "--output", tmp_path / "r2")
        assert code == 0, err
        facts[n] = json.loads((tmp_path / f"r{n}" / "run.json").read_text())
    one, two = facts[1]["grpo"], facts[2]["grpo"]
    assert two["generation"]["path"] == one["generation"]["path"] == "fast"
    assert "each of the 2 processes" in two["generation"]["reason"]
    assert two["generation"]["merges"] == one["generation"]["merges"] == 2  # rank 0's copy followed both steps
    assert two["generation_batch_size"] == one["generation_batch_size"] == 4  # the global batch: 2 whole groups
    assert facts[2]["distributed"]["world_size"] == 2 and facts[2]["distributed"]["global_batch"] == 4
    assert (tmp_path / "r2" / "adapter_model.safetensors").exists()


def test_an_fsdp_plan_is_launched_through_torchrun_on_one_gpu_too(cli, tmp_path):
    """accelerate applies FSDP only to the ranks of a distributed launch, so `ftc run` of an FSDP plan
    starts torchrun whatever --gpus says; a plan without it trains in the process on one GPU."""
    from ftc.runtime.launch import needs_launch

    fsdp, plain = demo_lock(cli, tmp_path / "a", "train.fsdp=full_shard auto_wrap"), demo_lock(cli, tmp_path / "b")
    assert needs_launch(str(fsdp), gpus=1, nnodes=1) and not needs_launch(str(plain), gpus=1, nnodes=1)
    assert needs_launch(str(plain), gpus=2, nnodes=1) and needs_launch(str(plain), gpus=1, nnodes=2)


def test_fsdp_outside_a_distributed_launch_is_refused_on_a_gpu(monkeypatch):
    """On a CUDA machine, a process that is not a torchrun rank (no LOCAL_RANK) cannot train an FSDP
    plan (the Trainer raises once the model has loaded): refused before loading (FTC766); a rank, or
    the process about to launch the ranks, goes on. (CUDA is what the check asks torch; this
    machine's answer is replaced.)"""
    import torch

    from ftc.errors import FtcError
    from ftc.runtime.trainer_config import refuse_unsharded_fsdp

    train = {"fsdp": "full_shard auto_wrap"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(FtcError) as e:
        refuse_unsharded_fsdp(train)
    assert e.value.code == "FTC766" and "this process is not one" in str(e.value) and "ftc run PLAN" in e.value.hint
    refuse_unsharded_fsdp(train, launching=True)
    refuse_unsharded_fsdp({"fsdp": ""})
    monkeypatch.setenv("LOCAL_RANK", "0")
    refuse_unsharded_fsdp(train)


def test_fsdp_that_the_trainer_did_not_turn_on_stops_the_run(tmp_path):
    """The net behind the checks before loading: a real Trainer built without FSDP (one CPU process)
    and a plan that asks for it is refused (FTC767); without train.fsdp the same Trainer goes on."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from ftc.errors import FtcError
    from ftc.runtime.trainer_config import refuse_unapplied_fsdp

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    assert trainer.is_fsdp_enabled is False and next(model.parameters()).device == torch.device("cpu")
    with pytest.raises(FtcError) as e:
        refuse_unapplied_fsdp(trainer, {"fsdp": "full_shard auto_wrap"})
    assert e.value.code == "FTC767" and "is not in force" in str(e.value) and "distributed type is NO" in str(e.value)
    refuse_unapplied_fsdp(trainer, {"fsdp": ""})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_fsdp_without_cuda_is_refused_not_ignored(cli, tmp_path):
    """On the CPU accelerate does not turn FSDP on (gloo ranks get plain DDP): train.fsdp would be
    ignored without a word, so `ftc run` refuses it, with one process and with several, before any
    process starts or any folder is made."""
    lock = demo_lock(cli, tmp_path, "train.fsdp=full_shard auto_wrap")
    for extra in ([], ["--gpus", "2"]):
        code, _, err = cli("run", lock, *extra, "--output", tmp_path / "r")
        assert code == 2 and "error[FTC765]" in err and "train.fsdp 'full_shard auto_wrap' needs CUDA GPUs" in err, err
        assert "launching" not in err and "Traceback" not in err and not (tmp_path / "r").exists()
