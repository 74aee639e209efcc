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


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished demo run (two steps) the infer tests share."""
    import shutil

    from ftc.cli import main

    proj = tmp_path_factory.mktemp("infer")
    shutil.copytree(ROOT / "recipes" / "demo", proj / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", proj / "demo.json")
    lock = proj / "plan.lock"
    assert main(["compile", str(proj / "demo.json"), "-o", str(lock), "-q", "--set", "transforms.2.extract.required=false",
                 "--set", "train.max_steps=2", "--set", "train.logging_steps=1"]) == 0
    assert main(["run", str(lock), "--output", str(proj / "run")]) == 0
    return proj / "run"


QUESTIONS = ["What is 2 + 2?", "Tom has 3 apples and eats one. How many are left?", "What is 7 times 6?"]


def test_infer_answers_a_file_of_requests_as_json_lines(cli, trained, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS), encoding="utf-8")
    answers = tmp_path / "answers.jsonl"
    code, stdout, err = cli("infer", trained, "--input", requests, "--output", answers, "--max-new-tokens", "6")
    assert code == 0, err
    rows = [json.loads(l) for l in answers.read_text(encoding="utf-8").splitlines()]
    assert [r["request"] for r in rows] == [{"question": q} for q in QUESTIONS]  # one line a request, in order
    code, shown, _ = cli("infer", trained, "--input", requests, "--dry-run", "--json")
    assert [r["prompt_tokens"] for r in rows] == [len(json.loads(l)["prompt_ids"]) for l in shown.splitlines()]
    for r in rows:
        assert r["completion_tokens"] == len(r["completion_ids"]) and 0 < len(r["completion_ids"]) <= 6
        assert r["stop"] == ("length" if len(r["completion_ids"]) == 6 else "eos")
    assert "answered 3/3" in err and stdout == ""
    # without --output, a file of requests answers as JSON lines on stdout, the same ids
    code, stdout, err = cli("infer", trained, "--input", requests, "--max-new-tokens", "6")
    assert code == 0, err
    assert [json.loads(l)["completion_ids"] for l in stdout.splitlines()] == [r["completion_ids"] for r in rows]
    err = cli("infer", trained, "--input", requests, "--dry-run", "--output", answers)[2]
    assert "error[FTC778]" in err and "--dry-run generates none" in err


def test_interactive_infer_loads_the_model_once(cli, trained, tmp_path, monkeypatch):
    import ftc.runtime.infer as infer_module

    loads = []
    real = infer_module.load_trained
    monkeypatch.setattr(infer_module, "load_trained", lambda *a, **k: loads.append(a) or real(*a, **k))
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(q + "\n" for q in QUESTIONS)))
    answers = tmp_path / "session.jsonl"
    code, stdout, err = cli("infer", trained, "--max-new-tokens", "6", "--output", answers)
    assert code == 0, err
    assert len(loads) == 1  # three answers, one load
    rows = [json.loads(l) for l in answers.read_text(encoding="utf-8").splitlines()]
    assert [r["request"] for r in rows] == [{"question": q} for q in QUESTIONS]
    # the same ids as answering each request on its own
    for q, r in zip(QUESTIONS, rows):
        code, out, _ = cli("infer", trained, "--input", json.dumps({"question": q}), "--max-new-tokens", "6",
                           "--output", tmp_path / "one.jsonl")
        assert json.loads((tmp_path / "one.jsonl").read_text())["completion_ids"] == r["completion_ids"]


def test_report_to_tensorboard_writes_the_loss_offline(cli, demo, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lock = compile_demo(cli, demo, "train.report_to=tensorboard")
    assert json.loads(lock.read_text())["settings"]["train"]["report_to"] == "tensorboard"  # recorded in the lock
    out = tmp_path / "run"
    code, stdout, err = cli("run", lock, "--output", out)
    assert code == 0, err
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.iterdir())
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in metrics if "loss" in m]
    facts = json.loads((out / "run.json").read_text())
    plan_hash = json.loads(lock.read_text())["plan_hash"]
    assert facts["tracking"]["run_name"] == f"demo-{plan_hash[:8]}"
    assert f"tensorboard: {out / 'tensorboard'}" in stdout.replace("tensorboard:  ", "tensorboard: ")
    import os

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set for that run only
    # the default is no tracker; one whose package is absent is refused before anything loads
    assert json.loads(compile_demo(cli, demo, lock="plain.lock").read_text())["settings"]["train"]["report_to"] == "none"
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        code, _, err = cli("run", compile_demo(cli, demo, 'train.report_to=["mlflow"]', lock="ml.lock"), "--output",
                           tmp_path / "ml")
        assert code == 2 and "error[FTC779]" in err and "needs the mlflow package" in err
        assert not (tmp_path / "ml").exists()
    code, _, err = cli("compile", demo / "demo.json", "-o", tmp_path / "x.lock", "--set", "train.report_to=comet")
    assert code == 2 and "report_to" in err


def test_a_hub_name_missing_from_the_cache_fails_in_seconds_without_network(cli, demo, tmp_path):
    """Without HF_HUB_OFFLINE, transformers retries for 28-77 s on a box without network before it
    gives up; the probe (compiler/tokenizer.py hub_offline) makes the loaders read the cache only."""
    import os
    import subprocess
    import sys

    from ftc.compiler.tokenizer import _hub_address, _reachable

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    offline = not _reachable(_hub_address(), 2.0)

    def ftc(*args) -> tuple[float, str]:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ftc", *map(str, args)], env=env, cwd=demo, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        return time.perf_counter() - t0, proc.stderr

    took, err = ftc("compile", "demo.json", "-o", tmp_path / "t.lock", "-q", "--set", "model.tokenizer=ftc-test/no-such-tokenizer")
    assert "error[FTC600]" in err and took < 20, (took, err)
    if offline:
        assert "not in the local Hugging Face cache, and the Hub cannot be reached (offline)" in err
    lock = compile_demo(cli, demo, "model.name=ftc-test/no-such-model", "model.init=pretrained", "model.config={}")
    took, err = ftc("run", lock, "--output", tmp_path / "r")
    assert "error[FTC713]" in err and took < 25, (took, err)
    assert not (tmp_path / "r").exists()
    if offline:
        assert "the Hub cannot be reached (offline)" in err


def test_summary_tables_line_up_with_chinese_file_names(cli, tmp_path):
    import unicodedata

    from conftest import write_recipe

    def display_width(text: str) -> int:  # the terminal's columns, by the Unicode East Asian Width property
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    rows = [{"question": f"问题 {i}", "answer": f"答案 {i}"} for i in range(3)]
    for name in ("医疗问答数据.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"zh": {"path": "医疗问答数据.jsonl"}, "en": {"path": "b.jsonl"}},
                                     "template": {"format": "prompt_completion", "prompt": "{{ question }}",
                                                  "completion": "{{ answer }}"}})
    code, stdout, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 0, err
    block = stdout.split("\n\n")[1].splitlines()  # the source-file table
    assert block[0].startswith("source file") and any("医疗问答数据" in l for l in block)
    assert len({display_width(l) for l in block}) == 1, block  # every line as wide on screen
    starts = {display_width(l[: l.index("jsonl", l.index(".jsonl") + 6)]) for l in block[2:]}  # the format column
    assert len(starts) == 1, block


def png_text(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text)


def test_loss_png_has_a_title_and_the_learning_rate(trained):
    text = png_text(trained / "loss.png")
    plan_hash = json.loads((trained / "run.json").read_text())["plan_hash"]
    assert text["Title"] == f"demo ({plan_hash[:12]}): loss and learning rate"
    assert text["Description"].split("; ") == ["train loss", "eval loss", "learning rate"]


def test_length_histogram_spreads_short_rows_and_shows_the_eval_split(cli, demo):
    import numpy as np
    import pyarrow.parquet as pq

    from ftc.compiler.lock import Plan
    from ftc.compiler.views import length_histogram_png

    lock = compile_demo(cli, demo, "model.max_seq_length=4096")  # short rows, a long limit: the medical set's shape
    plan = Plan.load(lock)
    lengths = {s: pq.read_table(plan.artifact("tokens", s)).column("length").to_pylist() for s in ("train", "eval")}
    title = png_text(lock.with_suffix(".lengths.png"))["Title"]
    assert title == f"tokens per row: eval {len(lengths['eval'])} rows, train {len(lengths['train'])} rows"
    bins = length_histogram_png(lengths, demo / "again.png", 4096)
    used = np.count_nonzero(np.histogram(lengths["train"], bins=bins)[0])
    assert bins[-1] >= max(lengths["train"]) and used >= 20, (used, bins)
