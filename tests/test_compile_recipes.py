"""The seed's three cases compile against the real data in ../shared."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import NEEDS_SHARED, ROOT, TOKENIZER

pytestmark = NEEDS_SHARED


def compile_lock(cli, recipe: Path, out: Path, *sets: str, tokenizer: Path = TOKENIZER) -> dict:
    sets = (f"model.tokenizer={tokenizer}",) + sets
    args = ["compile", recipe, "-o", out, "-q"] + [x for s in sets for x in ("--set", s)]
    code, _, err = cli(*args)
    assert code == 0, err
    return json.loads(out.read_text(encoding="utf-8"))


def rows(lock_path: Path, lock: dict, split: str = "train") -> list[dict]:
    from ftc.compiler.lock import Plan

    return pq.read_table(Plan.load(lock_path).artifact("data", split)).to_pylist()


def test_alpaca_uses_both_standard_prompts(cli, tmp_path):
    out = tmp_path / "alpaca.lock"
    lock = compile_lock(cli, ROOT / "recipes/alpaca.json", out)
    data = rows(out, lock)
    with_input = [r for r in data if r["input"]]
    without = [r for r in data if not r["input"]]
    assert with_input and without
    r = with_input[0]
    assert r["prompt"].startswith("Below is an instruction that describes a task, paired with an input")
    assert r["prompt"].endswith(f"### Input:\n{r['input']}\n\n### Response:\n")
    r = without[0]
    assert r["prompt"].startswith("Below is an instruction that describes a task. Write a response")
    assert "### Input:" not in r["prompt"] and r["prompt"].endswith("### Response:\n")
    assert all(r["completion"] == r["output"] for r in data)
    # 999 rows read, 14 duplicates dropped and counted, the rest split
    dedup = next(s for s in lock["stages"] if s["stage"].endswith("dedup"))
    assert dedup["dropped"] == {"duplicate (instruction, input)": dedup["rows_in"] - dedup["rows_out"]}
    total = lock["artifacts"]["data"]["train"]["rows"] + lock["artifacts"]["data"]["eval"]["rows"]
    assert total == dedup["rows_out"]
    assert lock["templates"]["template.prompt"]["rendered_by"] == "sql"


def test_medical_gb18030_folders(cli, tmp_path):
    out = tmp_path / "medical.lock"
    lock = compile_lock(cli, ROOT / "recipes/medical.json", out)
    (f,) = lock["sources"]["medical"]["files"]
    assert f["encoding"] == "gb18030"
    assert f["columns"]["input"] == "ask" and f["columns"]["output"] == "answer"
    assert f["captured"] == {"department_en": "IM", "department": "内科"}
    assert f["rows"] == 3822
    data = rows(out, lock)
    assert {r["department"] for r in data} == {"内科"}
    assert data[0]["prompt"].startswith("你是一个专业的医疗助手。")
    assert data[0]["prompt"].endswith(f"### 问题:\n{data[0]['input']}\n\n### 回答:\n")
    assert "高血压" in data[0]["input"]  # decoded, not mojibake


def test_gsm8k_answer_number_and_chat_prompt(cli, tmp_path):
    out = tmp_path / "gsm8k.lock"
    lock = compile_lock(cli, ROOT / "recipes/gsm8k_grpo.json", out)
    data = {r["row_id"]: r for r in rows(out, lock) + rows(out, lock, "eval")}
    first = data["gsm8k:train.jsonl:1"]  # Natalia's clips: #### 72
    assert first["answer_number"] == "72"
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert "<reasoning>" in first["prompt"][0]["content"] and first["prompt"][1]["content"] == first["question"]
    assert lock["artifacts"]["data"]["eval"]["rows"] == 200
    assert all("," not in r["answer_number"] for r in data.values())
    assert lock["settings"]["train"]["method"] == "grpo"


def test_recompile_and_copied_project_give_identical_locks(cli, tmp_path, shared):
    # a project copied to another folder, with the data beside it
    for name in ("a", "b"):
        proj = tmp_path / name / "proj"
        (proj / "recipes").mkdir(parents=True)
        (proj / ".git").mkdir()  # a checkout: recipes/'s ../templates/ lie in the project (FTC156)
        shutil.copytree(ROOT / "templates", proj / "templates")
        shutil.copy(ROOT / "recipes/medical.json", proj / "recipes")
        shutil.copytree(shared / "data" / "medical", tmp_path / name / "shared" / "data" / "medical")
        shutil.copytree(TOKENIZER, tmp_path / name / "shared" / "tokenizers" / "qwen2.5-bpe")
    la = tmp_path / "a/proj/plan.lock"
    lb = tmp_path / "b/proj/plan.lock"
    # --set paths are relative to the current directory; the lock stores them relative to the recipe
    tok = {n: os.path.relpath(tmp_path / n / "shared/tokenizers/qwen2.5-bpe") for n in "ab"}
    compile_lock(cli, tmp_path / "a/proj/recipes/medical.json", la, tokenizer=tok["a"])
    first = la.read_bytes()
    compile_lock(cli, tmp_path / "a/proj/recipes/medical.json", la, tokenizer=tok["a"])
    assert la.read_bytes() == first
    compile_lock(cli, tmp_path / "b/proj/recipes/medical.json", lb, tokenizer=tok["b"])
    assert lb.read_bytes() == first
    text = first.decode("utf-8")
    assert str(tmp_path) not in text and '"/' not in text  # no absolute paths


def test_parquet_loads_with_datasets(cli, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "alpaca.lock"
    lock = compile_lock(cli, ROOT / "recipes/alpaca.json", out)
    from ftc.compiler.lock import Plan

    path = Plan.load(out).artifact("data", "train")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.num_rows == lock["artifacts"]["data"]["train"]["rows"]
    assert {"row_id", "instruction", "prompt", "completion"} <= set(ds.column_names)


def test_set_overrides_are_validated_and_recorded(cli, tmp_path):
    out = tmp_path / "a.lock"
    lock = compile_lock(cli, ROOT / "recipes/alpaca.json", out, "train.learning_rate=1e-4", "split.eval=100")
    assert lock["settings"]["train"]["learning_rate"] == 1e-4
    assert lock["artifacts"]["data"]["eval"]["rows"] == 100
    assert lock["recipe"]["overrides"][1:] == ["train.learning_rate=0.0001", "split.eval=100"]
    code, _, err = cli("compile", ROOT / "recipes/alpaca.json", "-o", out, "--set", "train.learning_rate=fast")  # fails before tokenizing
    assert code == 2 and "train.learning_rate" in err and "expected number" in err
    code, _, err = cli("compile", ROOT / "recipes/alpaca.json", "-o", out, "--set", "train.learningrate=1")
    assert code == 2 and "unknown key 'learningrate'" in err and "did you mean 'learning_rate'" in err


def test_schedule_is_derived(cli, tmp_path):
    out = tmp_path / "m.lock"
    lock = compile_lock(cli, ROOT / "recipes/medical.json", out)
    s = lock["schedule"]
    n = lock["tokens"]["packing"]["sequences"]  # packing: the trainer steps over packed sequences, not rows
    assert n < lock["artifacts"]["data"]["train"]["rows"] and s["train_items"] == n and s["counts"] == "packed sequences"
    assert s["effective_batch_size"] == 8 and s["batches_per_epoch"] == -(-n // 2)
    assert s["optimizer_steps_per_epoch"] == -(-(-(-n // 2)) // 4)
    assert s["total_steps"] == s["optimizer_steps_per_epoch"] and s["epochs"] == 1.0
    assert s["warmup_steps"] == 5 and s["warnings"] == []


def test_grpo_schedule_counts_completions(cli, tmp_path):
    """The GSM8K lock: 8 completions a step are one prompt's 8 generations, so an epoch is one
    step per prompt (TRL's count), and max_steps 250 is a small fraction of it."""
    lock = compile_lock(cli, ROOT / "recipes/gsm8k_grpo.json", tmp_path / "g.lock")
    s, prompts = lock["schedule"], lock["artifacts"]["data"]["train"]["rows"]
    assert s["counts"] == "completions" and s["train_items"] == prompts
    assert (s["completions_per_step"], s["prompts_per_step"], s["num_generations"]) == (8, 1, 8)
    assert s["optimizer_steps_per_epoch"] == prompts and s["total_steps"] == 250
    assert s["epochs"] == 250 / prompts and s["warmup_steps"] == 25  # warmup_ratio 0.1 of the 250 steps


def test_changing_the_tokenizer_file_changes_the_lock(cli, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(TOKENIZER, tok)
    a = compile_lock(cli, ROOT / "recipes/alpaca.json", tmp_path / "a.lock", tokenizer=tok)
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 12345  # same name, same vocabulary, different file
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    b = compile_lock(cli, ROOT / "recipes/alpaca.json", tmp_path / "b.lock", tokenizer=tok)
    assert a["tokens"]["tokenizer"]["name"] == b["tokens"]["tokenizer"]["name"]
    assert a["tokens"]["tokenizer"]["fingerprint"]["tokenizer_config.json"] != b["tokens"]["tokenizer"]["fingerprint"]["tokenizer_config.json"]
    assert a["plan_hash"] != b["plan_hash"]
    code, out, _ = cli("diff", tmp_path / "a.lock", tmp_path / "b.lock")
    assert code == 1 and "fingerprint.tokenizer_config.json" in out


def test_score_gsm8k_completions(cli, tmp_path):
    out = tmp_path / "g.lock"
    lock = compile_lock(cli, ROOT / "recipes/gsm8k_grpo.json", out)
    evals = rows(out, lock, "eval")[:20]
    good = [{"row_id": r["row_id"], "completion": f"<reasoning>\n{r['answer'].split('####')[0].strip()}\n</reasoning>\n最终答案: {r['answer_number']}"}
            for r in evals]
    wrong = [{**g, "completion": g["completion"].rsplit(":", 1)[0] + f": {int(float(r['answer_number'])) + 1}"} for g, r in zip(good, evals)]
    bare = [{**g, "completion": f"最终答案: {r['answer_number']}"} for g, r in zip(good, evals)]
    results = {}
    for name, comps in (("good", good), ("wrong", wrong), ("bare", bare)):
        f = tmp_path / f"{name}.jsonl"
        f.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in comps), encoding="utf-8")
        code, stdout, err = cli("score", out, "--completions", f)
        assert code == 0, err
        results[name] = {l.split()[0]: l.split() for l in stdout.splitlines() if l.split()}
    assert results["good"]["correctness"][3] == "1.000" and results["good"]["format"][3] == "1.000"
    assert results["wrong"]["correctness"][3] == "0.000" and results["wrong"]["format"][3] == "1.000"
    assert results["bare"]["correctness"][3] == "1.000" and results["bare"]["format"][3] == "0.000"
