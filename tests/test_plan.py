"""The Plan view's one path rule: the plan hash is the plan, not where its lock lies; a run folder works
from any directory; drift of any input the lock fingerprints is refused at `ftc run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_recipe

pytest.importorskip("torch")


def compile_to(cli, recipe: Path, lock: Path, *sets: str) -> dict:
    args = ["compile", recipe, "-o", lock, "-q"] + [x for s in sets for x in ("--set", s)]
    code, _, err = cli(*args)
    assert code == 0, err
    return json.loads(lock.read_text(encoding="utf-8"))


def test_plan_hash_does_not_depend_on_where_the_lock_is_written(cli, demo):
    a = compile_to(cli, demo / "demo.json", demo / "plan.lock")
    b = compile_to(cli, demo / "demo.json", demo / "locks" / "deep" / "plan.lock")
    assert a["recipe"]["path"] != b["recipe"]["path"]  # where the lock is...
    assert a["plan_hash"] == b["plan_hash"]  # ...is not what the plan is
    assert {k: v for k, v in a.items() if k != "recipe"} == {k: v for k, v in b.items() if k != "recipe"}
    from ftc.compiler.lock import Plan

    pa, pb = Plan.load(demo / "plan.lock"), Plan.load(demo / "locks" / "deep" / "plan.lock")
    assert pa.artifact("tokens", "train") == pb.artifact("tokens", "train")  # one rule: relative to the recipe
    assert pa.artifact("tokens", "train").is_file()


def test_a_run_folder_is_usable_from_any_directory(cli, demo, tmp_path, monkeypatch):
    compile_to(cli, demo / "demo.json", demo / "plan.lock")
    monkeypatch.chdir(demo)  # relative paths on the command line, as people type them
    code, _, err = cli("run", "plan.lock", "--output", "runs/r", "--max-steps", "1")
    assert code == 0, err
    facts = json.loads((demo / "runs/r/run.json").read_text())
    assert Path(facts["settings"]["model"]["name"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = demo / "runs" / "r"
    code, out, err = cli("infer", run_dir, "--input", json.dumps({"question": "What is 2 + 2?"}), "--max-new-tokens", "3")
    assert code == 0, err
    code, out, err = cli("eval", run_dir)
    assert code == 0, err
    assert out.startswith("eval: loss ")


def test_a_lock_moved_away_from_its_recipe_is_named_as_such(cli, demo, tmp_path):
    compile_to(cli, demo / "demo.json", demo / "plan.lock")
    (tmp_path / "moved").mkdir()
    shutil.copy(demo / "plan.lock", tmp_path / "moved" / "plan.lock")
    code, _, err = cli("run", tmp_path / "moved" / "plan.lock", "--output", tmp_path / "r")
    assert code == 2 and "Traceback" not in err
    assert "FTC505" in err and "moved away from its project" in err and "changed" not in err
    assert not (tmp_path / "r").exists()


def test_a_changed_tokenizer_is_refused(cli, demo, tmp_path):
    compile_to(cli, demo / "demo.json", demo / "plan.lock")
    config = demo / "demo" / "tokenizer" / "tokenizer_config.json"
    doc = json.loads(config.read_text())
    doc["chat_template"] = "{{ messages[0]['content'] }}"
    config.write_text(json.dumps(doc))
    code, _, err = cli("run", demo / "plan.lock", "--output", tmp_path / "r")
    assert code == 2 and "Traceback" not in err
    assert "FTC506" in err and "chat_template" in err and "ftc compile" in err
    assert not (tmp_path / "r").exists()


def test_a_changed_hf_data_file_is_refused(cli, tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"q": f"q{i}", "a": f"a{i}"}) + "\n" for i in range(6)))
    recipe = write_recipe(tmp_path, {"sources": {"h": {"hf": {"name": "json", "data_files": "d.jsonl", "split": "train"}}},
                                     "template": {"format": "prompt_completion", "prompt": "{{ q }} ", "completion": "{{ a }}"}})
    compile_to(cli, recipe, tmp_path / "plan.lock")
    (tmp_path / "d.jsonl").write_text((tmp_path / "d.jsonl").read_text().replace("a3", "b3"))
    code, _, err = cli("run", tmp_path / "plan.lock", "--output", tmp_path / "r")
    assert code == 2 and "Traceback" not in err
    assert "FTC504" in err and "d.jsonl" in err and "sha256 differs" in err
    assert not (tmp_path / "r").exists()


def test_intact_artifacts_train_without_the_raw_data_but_a_rebuild_needs_it(cli, demo, tmp_path):
    """A GPU box may hold the lock and its content-addressed artifacts without the sources: nothing can
    drift there unseen (the artifacts' sha256 is checked); a rebuild, though, needs every input."""
    compile_to(cli, demo / "demo.json", demo / "plan.lock")
    (demo / "demo" / "gsm8k_64.jsonl").unlink()
    code, _, err = cli("run", demo / "plan.lock", "--output", tmp_path / "r", "--max-steps", "1")
    assert code == 0, err
    assert "not here, so not re-checked" in err and "gsm8k_64.jsonl" in err
    shutil.rmtree(demo / ".ftc")
    code, _, err = cli("run", demo / "plan.lock", "--output", tmp_path / "r2")
    assert code == 2 and "FTC504" in err and "gsm8k_64.jsonl" in err and "missing" in err
