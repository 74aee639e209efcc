"""`ftc score`: the declared rewards over a completions file, before any GPU time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftc.errors import FtcError
from ftc.compiler.reward_check import check_rewards
from ftc.runtime.score import format_summary, read_completions, score_file, score_rows

from conftest import SHARED, write_recipe  # noqa: E402

GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
FIELDS = {"question", "answer", "answer_number"}
REWARDS = [
    {"kind": "answer", "name": "correct", "pattern": r"最终答案[:：]\s*(-?[\d,.]+)", "field": "answer_number",
     "compare": "numeric", "weight": 2.0},
    {"kind": "regex", "name": "format", "pattern": r"^<reasoning>[\s\S]+?</reasoning>\s*最终答案[:：]\s*-?[\d,.]+\s*$",
     "weight": 0.5},
]


@pytest.fixture
def rows() -> list[dict]:
    """Ten real GSM8K rows as the plan's eval split would hold them."""
    if not GSM8K.exists():
        pytest.skip(f"needs the shared GSM8K data at {GSM8K} (the ../shared folder beside the checkout)")
    out = []
    with GSM8K.open(encoding="utf-8") as f:
        for i, line in zip(range(10), f):
            r = json.loads(line)
            out.append({"row_id": f"r{i}", "prompt": r["question"], "question": r["question"], "answer": r["answer"],
                        "answer_number": r["answer"].rsplit("####", 1)[1].strip().replace(",", "")})
    return out


@pytest.fixture
def resolved(tmp_path) -> list[dict]:
    return check_rewards(REWARDS, fields=FIELDS, allow_python=False, recipe_dir=tmp_path)


def good(row: dict, n: str | None = None) -> str:
    return f"<reasoning>step by step</reasoning>\n最终答案: {row['answer_number'] if n is None else n}"


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


def test_score_file_means_totals_and_detail(tmp_path, rows, resolved):
    path = write_jsonl(tmp_path / "completions.jsonl", [
        {"row_id": "r0", "completion": good(rows[0])},                                  # correct, formatted: 2.5
        {"row_id": "r0", "completion": good(rows[0], "1")},                             # second sample, wrong: 0.5
        {"row_id": "r1", "completion": f"最终答案: {rows[1]['answer_number']}"},         # correct, unformatted: 2.0
        {"row_id": "r2", "completion": [{"role": "assistant", "content": good(rows[2])}]},  # chat, both: 2.5
        "",                                                                             # blank lines are fine
    ])
    result = score_file(resolved, rows, path, tmp_path)
    assert result["n"] == 4 and result["rows"] == 10 and result["rows_scored"] == 3
    by_name = {r["name"]: r for r in result["rewards"]}
    assert by_name["correct"]["mean"] == pytest.approx(3 / 4)
    assert by_name["format"]["mean"] == pytest.approx(3 / 4)
    assert result["total_mean"] == pytest.approx((2.5 + 0.5 + 2.0 + 2.5) / 4)
    assert result["total_max"] == 2.5
    assert [(d["row_id"], d["sample"], d["total"]) for d in result["detail"]] == [
        ("r0", 0, 2.5), ("r0", 1, 0.5), ("r1", 0, 2.0), ("r2", 0, 2.5)]

    text = format_summary(result)
    lines = text.splitlines()
    assert lines[0].split() == ["reward", "kind", "weight", "mean", "n", "skipped"]
    assert lines[2].split() == ["correct", "answer", "2", "0.750", "4", "0"]
    assert lines[3].split() == ["format", "regex", "0.5", "0.750", "4", "0"]
    assert "total (weighted): 1.875 of 2.5 possible" in text
    assert "4 completion(s) for 3 of 10 row(s); 7 row(s) have no completion" in text


def test_integer_row_ids_meet_their_rows(tmp_path, resolved, rows):
    rows = [{**r, "row_id": i} for i, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "c.jsonl", [{"row_id": 3, "completion": good(rows[3])},
                                              {"row_id": "4", "completion": good(rows[4], "0")}])
    result = score_file(resolved, rows, path, tmp_path)
    assert [(d["row_id"], d["scores"]["correct"]) for d in result["detail"]] == [(3, 1.0), (4, 0.0)]


def test_rows_without_a_reference_are_skipped_not_wrong(tmp_path, resolved, rows):
    rows[0] = {**rows[0], "answer_number": None}
    result = score_rows(resolved, rows, {"r0": good(rows[0], "72"), "r1": [good(rows[1]), good(rows[1], "3")]},
                        tmp_path)
    correct = result["rewards"][0]
    assert (correct["n"], correct["skipped"], correct["mean"]) == (2, 1, 0.5)
    assert result["detail"][0]["scores"] == {"correct": None, "format": 1.0}
    assert "skipped: correct could not judge" in format_summary(result)


def test_bad_json_line_names_its_line(tmp_path, resolved, rows):
    path = write_jsonl(tmp_path / "c.jsonl", [{"row_id": "r0", "completion": "x"}, "", '{"row_id": "r1", "completion": "x"'])
    with pytest.raises(FtcError) as info:
        score_file(resolved, rows, path, tmp_path)
    assert info.value.file == str(path) and info.value.code == "FTC742"
    assert "line 3: not valid JSON" in str(info.value)
    assert '{"row_id": ..., "completion": "..."}' in info.value.hint


@pytest.mark.parametrize("line, code, says", [
    ('["r0", "x"]', "FTC743", "line 1: expected a JSON object, got list"),
    ('{"row_id": "r0"}', "FTC744", "line 1: missing 'completion' (keys: row_id)"),
    ('{"id": "r0", "text": "x"}', "FTC744", "line 1: missing 'row_id' and 'completion'"),
    ('{"row_id": "r0", "completion": 7}', "FTC746", "line 1: completion must be a string or a list of chat messages, not int"),
    ('{"row_id": null, "completion": "x"}', "FTC745", "line 1: row_id must be a string or an integer, not null"),
])
def test_malformed_lines(tmp_path, line, code, says):
    path = write_jsonl(tmp_path / "c.jsonl", [line])
    with pytest.raises(FtcError) as info:
        read_completions(path)
    assert info.value.code == code and says in str(info.value) and '"completion"' in info.value.hint


def test_a_completion_given_in_code_is_checked_too(tmp_path, resolved, rows):
    with pytest.raises(FtcError) as info:
        score_rows(resolved, rows, {"r0": 7}, tmp_path)
    assert info.value.code == "FTC746" and "row_id 'r0': completion must be a string or a list of chat messages, not int" in str(info.value)


def test_unknown_row_ids_are_an_error_with_examples(tmp_path, resolved, rows):
    path = write_jsonl(tmp_path / "c.jsonl", [{"row_id": "r0", "completion": "x"}, {"row_id": "train-17", "completion": "x"}])
    with pytest.raises(FtcError) as info:
        score_file(resolved, rows, path, tmp_path)
    text = str(info.value)
    assert info.value.code == "FTC747" and "1 completion row_id(s) are not rows of this split: 'train-17'" in text
    assert "--split" in text and "'r0'" in text


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(FtcError, match="no completions in the file") as info:
        read_completions(write_jsonl(tmp_path / "empty.jsonl", [""]))
    assert info.value.code == "FTC741"
    with pytest.raises(FtcError, match="cannot read completions: No such file") as info:
        read_completions(tmp_path / "absent.jsonl")
    assert info.value.code == "FTC740"


@pytest.mark.parametrize("lines, code, says", [
    (None, "FTC740", "cannot read completions: No such file or directory"),
    ([""], "FTC741", "c.jsonl: no completions in the file"),
    (['{"row_id": "x", "completion": "a"', ], "FTC742", "c.jsonl: line 1: not valid JSON"),
    ([{"row_id": "nope", "completion": "a"}], "FTC747", "1 completion row_id(s) are not rows of this split: 'nope'"),
])
def test_ftc_score_refuses_a_bad_completions_file(cli, tmp_path, lines, code, says):
    """`ftc score` on a compiled GRPO plan: each bad file is exit 2 with its own rule, no traceback."""
    write_jsonl(tmp_path / "s.jsonl", [{"q": f"question {i}?"} for i in range(24)])
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "s.jsonl"}}, "template": {"format": "prompt", "prompt": "{{ q }}"},
                                     "split": {"eval": 4}, "train": {"method": "grpo", "grpo": {"rewards": [{"kind": "regex", "pattern": "x"}]}}})
    code_, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock", "-q")
    assert code_ == 0, err
    completions = tmp_path / "c.jsonl"
    if lines is not None:
        write_jsonl(completions, lines)
    rc, _, err = cli("score", tmp_path / "plan.lock", "--completions", completions)
    assert rc == 2 and f"error[{code}]" in err and says in err and "Traceback" not in err, err
