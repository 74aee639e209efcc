"""Several processes for one plan (torchrun; gloo on the CPU): the global batch is the lock's."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("trl")


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
    shutil.copytree(ROOT / "recipes" / "demo", tmp_path / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", tmp_path / "demo.json")
    lock = tmp_path / "plan.lock"
    code, _, err = cli("compile", tmp_path / "demo.json", "-o", lock, "-q", "--set", "train.gradient_accumulation_steps=2")
    assert code == 0, err
    code, _, err = cli("run", lock, "--gpus", "3", "--output", tmp_path / "r3")
    assert code == 2 and "error[FTC760]" in err and "cannot be split evenly over 3 processes" in err and "Traceback" not in err
    code, _, err = cli("run", lock, "--nnodes", "2", "--output", tmp_path / "r2")
    assert code == 2 and "error[FTC761]" in err and "--rdzv-endpoint" in err and "Traceback" not in err
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_two_processes_shard_the_data_and_keep_the_global_batch(cli, tmp_path):
    shutil.copytree(ROOT / "recipes" / "demo", tmp_path / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", tmp_path / "demo.json")
    lock = tmp_path / "plan.lock"
    code, _, err = cli("compile", tmp_path / "demo.json", "-o", lock, "-q", "--set", "train.gradient_accumulation_steps=2",
                       "--set", "train.logging_steps=1")
    assert code == 0, err
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
