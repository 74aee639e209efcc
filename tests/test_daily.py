"""The commands people run every day (issue 15, sections 4-6): a second `ftc run` of a finished
run, a run that fails before training, `ftc infer` sessions and files, experiment tracking,
offline failures and the tables and plots people read. The real compiler on the shipped demo."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("trl")


def compile_demo(cli, proj: Path, *sets: str, lock: str = "plan.lock") -> Path:
    """The shipped demo, two optimizer steps with a checkpoint at the last one."""
    out = proj / lock
    args = ["compile", proj / "demo.json", "-o", out, "-q", "--set", "transforms.2.extract.required=false",
            "--set", "train.max_steps=2", "--set", "train.save_steps=2", "--set", "train.logging_steps=1"]
    for s in sets:
        args += ["--set", s]
    code, _, err = cli(*args)
    assert code == 0, err
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_start_leaves_nothing_and_a_finished_run_is_not_trained_again(cli, demo, tmp_path):
    out = tmp_path / "run"
    (demo / "no-config").mkdir()
    broken = compile_demo(cli, demo, "model.name=no-config", lock="broken.lock")
    code, _, err = cli("run", broken, "--output", out)
    assert code == 2 and "error[FTC711]" in err
    assert not out.exists()  # the failed start left no folder to block the fixed plan

    lock = compile_demo(cli, demo)  # the fixed plan (another plan hash), into the same folder
    code, stdout, err = cli("run", lock, "--output", out)
    assert code == 0, err
    facts = json.loads((out / "run.json").read_text())
    assert facts["train"]["global_step"] == 2 and facts["eval"]["loss"] > 0
    # the losses rounded, the final eval loss, and where everything is
    first, last = facts["train"]["first_loss"], facts["train"]["last_loss"]
    assert f"loss {first:.4f} -> {last:.4f}" in stdout and str(first) not in stdout
    assert f"final eval loss {facts['eval']['loss']:.4f}" in stdout
    for name in ("report.md", "loss.png", "metrics.jsonl", "run.json"):
        assert re.search(rf"^\w[\w ]*: +{re.escape(str(out / name))}$", stdout, re.M), stdout

    before = snapshot(out)
    for extra in ([], ["--resume"]):  # `make demo` twice; --resume on a finished run
        code, stdout2, err = cli("run", lock, "--output", out, *extra)
        assert code == 0, err
        assert "holds the finished run of plan" in err and "nothing changed" in err
        assert f"final eval loss {facts['eval']['loss']:.4f}" in stdout2
        assert snapshot(out) == before  # not a byte of run.json, report.md or metrics.jsonl rewritten
    # a smoke run of the same plan is not the finished full run: resuming it is still refused without a checkpoint
    code, _, err = cli("run", lock, "--output", out, "--max-steps", "1")
    assert code == 2 and "error[FTC707]" in err and snapshot(out) == before
