"""Declared GRPO rewards on real GSM8K rows: what compiles, what scores, what is refused."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftc.errors import FtcError
from ftc.compiler.reward_check import check_rewards
from ftc.compiler.rewards import REWARD_SCHEMA, check_drift
from ftc.runtime.rewards_trl import build_reward_funcs, completion_text, reward_weights

from conftest import ROOT, SHARED, write_recipe  # noqa: E402

GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
FIELDS = {"question", "answer", "answer_number"}

# The GSM8K reasoning recipe's rewards: the correctness and format rewards of the seed
# article, declared instead of coded.
FORMAT = r"^<reasoning>[\s\S]+?</reasoning>\s*最终答案[:：]\s*-?[\d,.]+\s*$"
GSM8K_REWARDS = [
    {"kind": "answer", "name": "correct", "pattern": r"最终答案[:：]\s*(-?[\d,.]+)", "field": "answer_number",
     "compare": "numeric", "weight": 2.0},
    {"kind": "regex", "name": "format", "pattern": FORMAT},
]


def gsm8k_rows(n: int = 40) -> list[dict]:
    """Real rows, with answer_number taken from the '#### N' line (commas removed),
    as the recipe's derive step does."""
    if not GSM8K.exists():
        pytest.skip(f"needs the shared GSM8K data at {GSM8K} (the ../shared folder beside the checkout)")
    rows = []
    with GSM8K.open(encoding="utf-8") as f:
        for i, line in zip(range(n), f):
            row = json.loads(line)
            steps, final = row["answer"].rsplit("####", 1)
            rows.append({"row_id": i, "prompt": row["question"], "question": row["question"], "answer": row["answer"],
                         "answer_number": final.strip().replace(",", ""), "steps": steps.strip()})
    return rows


def wellformed(row: dict, number: str | None = None) -> str:
    return f"<reasoning>{row['steps']}</reasoning>\n最终答案: {row['answer_number'] if number is None else number}"


def trl_call(func, rows: list[dict], completions: list) -> list:
    """Call a reward function the way GRPOTrainer._calculate_rewards (trl 1.16) does:
    keyword arguments only, every dataset column but prompt as a list, plus its extras."""
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
    return func(prompts=[r["prompt"] for r in rows], completions=completions,
                completion_ids=[[0] for _ in rows], trainer_state=None,
                log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **columns)


@pytest.fixture
def funcs(tmp_path):
    resolved = check_rewards(GSM8K_REWARDS, fields=FIELDS, allow_python=False, recipe_dir=tmp_path)
    return {f.__name__: f for f in build_reward_funcs(resolved, tmp_path)}


def raises(specs, *, fields=FIELDS, allow_python=False, recipe_dir=Path(".")) -> FtcError:
    with pytest.raises(FtcError) as info:
        check_rewards(specs, fields=fields, allow_python=allow_python, recipe_dir=recipe_dir, file="recipes/gsm8k.json")
    return info.value


# --------------------------------------------------------------------------- GSM8K scoring


def test_wellformed_correct_completions_get_the_full_reward(funcs):
    rows = gsm8k_rows()
    completions = [wellformed(r) for r in rows]
    assert trl_call(funcs["correct"], rows, completions) == [1.0] * len(rows)
    assert trl_call(funcs["format"], rows, completions) == [1.0] * len(rows)


def test_wrong_numbers_lose_correctness_but_keep_format(funcs):
    rows = gsm8k_rows()
    completions = [wellformed(r, str(int(r["answer_number"]) + 1)) for r in rows]
    assert trl_call(funcs["correct"], rows, completions) == [0.0] * len(rows)
    assert trl_call(funcs["format"], rows, completions) == [1.0] * len(rows)


def test_missing_reasoning_loses_format_but_keeps_correctness(funcs):
    rows = gsm8k_rows()
    completions = [f"{r['steps']}\n最终答案: {r['answer_number']}" for r in rows]
    assert trl_call(funcs["format"], rows, completions) == [0.0] * len(rows)
    assert trl_call(funcs["correct"], rows, completions) == [1.0] * len(rows)


def test_no_answer_line_scores_zero_not_an_error(funcs):
    rows = gsm8k_rows(3)
    assert trl_call(funcs["correct"], rows, ["I don't know."] * 3) == [0.0] * 3


def test_commas_in_large_numbers_and_the_full_width_colon(funcs):
    rows = [r for r in gsm8k_rows(400) if int(r["answer_number"]) >= 1000][:5]
    assert rows, "GSM8K's first 400 rows hold answers of 1,000 or more"
    completions = [f"<reasoning>{r['steps']}</reasoning>\n最终答案：{int(r['answer_number']):,}" for r in rows]
    assert all("," in c.rsplit("：", 1)[1] for c in completions)
    assert trl_call(funcs["correct"], rows, completions) == [1.0] * len(rows)
    assert trl_call(funcs["format"], rows, completions) == [1.0] * len(rows)


def test_numeric_tolerance(tmp_path):
    row = gsm8k_rows(1)[0]  # 72 clips
    base = {"kind": "answer", "pattern": r"最终答案[:：]\s*(-?[\d,.]+)", "field": "answer_number", "compare": "numeric"}
    strict, loose = check_rewards([base, {**base, "tolerance": 0.5}], fields=FIELDS, allow_python=False, recipe_dir=tmp_path)
    assert strict["tolerance"] == 1e-6 and loose["tolerance"] == 0.5
    f_strict, f_loose = build_reward_funcs([strict, loose], tmp_path)
    completions = [wellformed(row, n) for n in ("72.0", "72.4", "72.6", "71.5")]
    assert trl_call(f_strict, [row] * 4, completions) == [1.0, 0.0, 0.0, 0.0]
    assert trl_call(f_loose, [row] * 4, completions) == [1.0, 1.0, 0.0, 1.0]


def test_reference_that_is_not_a_number_is_none_not_zero(funcs):
    """A row whose reference is unusable is a data problem: TRL reads None as NaN and
    leaves it out of the means instead of teaching the model it was wrong."""
    row = {**gsm8k_rows(1)[0], "answer_number": "seventy-two"}
    assert trl_call(funcs["correct"], [row], [wellformed(row, "72")]) == [None]


def test_numbers_in_the_field_compare_as_numbers(funcs):
    row = {**gsm8k_rows(1)[0], "answer_number": 72}  # a DuckDB-derived integer column
    assert trl_call(funcs["correct"], [row, row], [wellformed(row, "72"), wellformed(row, "27")]) == [1.0, 0.0]


def test_chat_completions_are_scored_on_the_assistant_content(funcs):
    rows = gsm8k_rows(5)
    chats = [[{"role": "assistant", "content": wellformed(r)}] for r in rows]
    assert trl_call(funcs["correct"], rows, chats) == [1.0] * 5
    assert trl_call(funcs["format"], rows, chats) == [1.0] * 5
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": wellformed(r)}]}] for r in rows]
    assert trl_call(funcs["format"], rows, parts) == [1.0] * 5


def test_completion_text_takes_the_last_assistant_message():
    chat = [{"role": "assistant", "content": "first"}, {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "final"}]
    assert completion_text(chat) == "final"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text("plain") == "plain"


def test_exact_compare_and_last_occurrence(tmp_path):
    spec = {"kind": "answer", "pattern": r"answer: (\w+)", "field": "city", "occurrence": "last"}
    (resolved,) = check_rewards([spec], fields={"city"}, allow_python=False, recipe_dir=tmp_path)
    assert resolved["compare"] == "exact" and "tolerance" not in resolved and resolved["remove"] == ""
    (f,) = build_reward_funcs([resolved], tmp_path)
    out = f(prompts=["q"] * 3, completions=["answer: Rome ... answer: Paris", "answer: Paris, answer: Rome", "Paris"],
            city=["Paris"] * 3)
    assert out == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- TRL compatibility


def test_trl_grpo_trainer_calculates_these_rewards(tmp_path):
    """Run trl 1.16's own GRPOTrainer._calculate_rewards over our functions (a stand-in
    trainer object carries only what that method reads), so a change in how TRL calls
    reward functions breaks this test rather than a training run."""
    pytest.importorskip("trl")
    from types import SimpleNamespace as NS

    from trl import GRPOTrainer
    from trl.trainer.utils import get_callable_name

    rows = gsm8k_rows(4)
    resolved = check_rewards(GSM8K_REWARDS, fields=FIELDS, allow_python=False, recipe_dir=tmp_path)
    funcs = build_reward_funcs(resolved, tmp_path)
    assert [get_callable_name(f) for f in funcs] == ["correct", "format"]  # logged as rewards/<name>/mean
    trainer = NS(accelerator=NS(device="cpu", is_main_process=True), reward_funcs=funcs,
                 reward_processing_classes=[None, None], reward_func_names=[get_callable_name(f) for f in funcs],
                 state=NS(global_step=0), args=NS(report_to=[]), environments=None,
                 _log_completion_extra=lambda *a, **k: None, _log_metric=lambda *a, **k: None)
    inputs = [{k: v for k, v in r.items() if k != "steps"} for r in rows]
    completions = [wellformed(rows[0]), wellformed(rows[1], "-1"), rows[2]["steps"],
                   [{"role": "assistant", "content": wellformed(rows[3])}]]
    out = GRPOTrainer._calculate_rewards(trainer, inputs, [r["prompt"] for r in rows], completions, [[0]] * 4)
    assert out.tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert reward_weights(resolved) == [2.0, 1.0]  # for GRPOConfig(reward_weights=...)


def test_a_missing_dataset_column_is_named(funcs):
    with pytest.raises(FtcError, match=r"needs dataset column\(s\) answer_number.*it passed: question") as err:
        funcs["correct"](prompts=["q"], completions=["最终答案: 1"], question=["q"])
    assert err.value.code == "FTC752" and "reward 'correct'" in str(err.value) and "recompile" in err.value.hint


# --------------------------------------------------------------------------- the other kinds


def test_length_window_with_linear_ramps(tmp_path):
    (resolved,) = check_rewards([{"kind": "length", "min": 10, "max": 20, "ramp": 5}], fields=FIELDS,
                                allow_python=False, recipe_dir=tmp_path)
    (f,) = build_reward_funcs([resolved], tmp_path)
    lengths = [0, 5, 8, 10, 15, 20, 22, 25, 40]
    assert f(prompts=None, completions=["x" * n for n in lengths]) == pytest.approx(
        [0.0, 0.0, 0.6, 1.0, 1.0, 1.0, 0.6, 0.0, 0.0])
    (hard,) = check_rewards([{"kind": "length", "max": 3}], fields=FIELDS, allow_python=False, recipe_dir=tmp_path)
    assert hard == {"kind": "length", "name": "length", "weight": 1.0, "min": 0, "max": 3, "ramp": 0}
    assert build_reward_funcs([hard], tmp_path)[0](prompts=None, completions=["abc", "abcd"]) == [1.0, 0.0]


def test_contains_any_all_negate_ignore_case(tmp_path):
    specs = [{"kind": "contains", "text": ["</reasoning>", "最终答案"]},
             {"kind": "contains", "text": ["</reasoning>", "最终答案"], "mode": "all"},
             {"kind": "contains", "text": "sorry", "negate": True, "ignore_case": True}]
    resolved = check_rewards(specs, fields=FIELDS, allow_python=False, recipe_dir=tmp_path)
    assert [r["name"] for r in resolved] == ["contains", "contains_2", "contains_3"]
    texts = ["</reasoning> 最终答案: 1", "最终答案: 1", "Sorry, I cannot"]
    assert [f(prompts=None, completions=texts) for f in build_reward_funcs(resolved, tmp_path)] == [
        [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]


def test_regex_fullmatch(tmp_path):
    (r,) = check_rewards([{"kind": "regex", "pattern": r"\d+", "fullmatch": True}], fields=FIELDS,
                         allow_python=False, recipe_dir=tmp_path)
    assert build_reward_funcs([r], tmp_path)[0](prompts=None, completions=["123", "a123"]) == [1.0, 0.0]


# --------------------------------------------------------------------------- the lock entry


def test_resolved_rewards_fill_every_default_and_are_deterministic(tmp_path):
    a = check_rewards(GSM8K_REWARDS, fields=FIELDS, allow_python=False, recipe_dir=tmp_path)
    b = check_rewards(json.loads(json.dumps(GSM8K_REWARDS)), fields=set(sorted(FIELDS)), allow_python=False,
                      recipe_dir=tmp_path)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a[0] == {"kind": "answer", "name": "correct", "weight": 2.0, "pattern": GSM8K_REWARDS[0]["pattern"],
                    "field": "answer_number", "compare": "numeric", "remove": ",", "occurrence": "first",
                    "tolerance": 1e-6}
    assert a[1] == {"kind": "regex", "name": "format", "weight": 1.0, "pattern": FORMAT, "fullmatch": False}


def test_derived_names_never_collide_with_declared_ones(tmp_path):
    specs = [{"kind": "regex", "pattern": "a"}, {"kind": "regex", "pattern": "b", "name": "regex_2"},
             {"kind": "regex", "pattern": "c"}]
    names = [r["name"] for r in check_rewards(specs, fields=FIELDS, allow_python=False, recipe_dir=tmp_path)]
    assert names == ["regex", "regex_2", "regex_3"]


# --------------------------------------------------------------------------- compile errors


def test_bad_regex_shows_the_regex_where_and_that_python_re_runs_it():
    err = raises([GSM8K_REWARDS[0], {"kind": "regex", "pattern": r"^<reasoning>([\s\S]+?</reasoning>"}])
    assert err.code == "FTC303"
    assert err.path == "train.grpo.rewards[1].pattern"
    text = str(err)
    assert "recipes/gsm8k.json" in text
    assert r"regex: ^<reasoning>([\s\S]+?</reasoning>" in text
    assert "missing ), unterminated subpattern at position 12" in text
    assert "Python `re`" in text and "RE2" in text
    caret = text.splitlines()[2]
    assert caret.index("^") == text.splitlines()[1].index("(")  # the caret points at the open group


def test_answer_pattern_needs_a_group():
    err = raises([{"kind": "answer", "pattern": r"最终答案: \d+", "field": "answer_number"}])
    assert err.code == "FTC126" and err.path == "train.grpo.rewards[0].pattern"
    assert "answer pattern has no group to extract the answer with: 最终答案: \\d+" in err.message
    assert "put parentheses around the answer part" in err.hint


def test_unknown_dataset_field_suggests_the_right_one():
    err = raises([{"kind": "answer", "pattern": r"(\d+)", "field": "answer_num"}])
    assert err.code == "FTC301"
    assert err.path == "train.grpo.rewards[0].field"
    assert "unknown field 'answer_num'" in str(err)
    assert "did you mean 'answer_number'?" in str(err)
    assert "known fields: answer, answer_number, question" in str(err)


def test_python_reward_needs_allow_python(tmp_path):
    (tmp_path / "rewards.py").write_text("def my_reward(completion):\n    return 1.0\n")
    err = raises([{"kind": "python", "function": "rewards.py:my_reward"}], recipe_dir=tmp_path)
    assert err.code == "FTC130"
    assert err.path == "train.grpo.rewards[0].function"
    assert "reward runs Python (rewards.py:my_reward), and the recipe does not allow Python" in err.message
    assert "train.grpo.allow_python: true" in err.hint


def test_unknown_kind_and_key_and_missing_key():
    """The recipe schema catches these first in a recipe; check_rewards says the same to any other caller."""
    err = raises(["answer"])
    assert err.code == "FTC121" and err.path == "train.grpo.rewards[0]" and "a reward is a JSON object, not str" in err.message
    assert '"kind": "regex"' in err.hint
    err = raises([{"pattern": "x"}])
    assert err.code == "FTC122" and err.path == "train.grpo.rewards[0].kind" and "reward has no 'kind'" in err.message
    assert err.hint == "kind is one of: regex, answer, length, contains, python"
    err = raises([{"kind": "regexp", "pattern": "x"}])
    assert err.code == "FTC123" and err.path == "train.grpo.rewards[0].kind" and "unknown reward kind 'regexp'" in err.message
    assert "did you mean 'regex'?" in err.hint
    err = raises([{"kind": "regex", "patern": "x"}])
    assert err.code == "FTC103" and err.path == "train.grpo.rewards[0].patern"
    assert "did you mean 'pattern'?" in str(err)
    err = raises([{"kind": "contains", "text": "x", "pattern": "y"}])  # a key of another kind
    assert err.code == "FTC103" and err.hint == "keys allowed here: kind, name, weight, text, mode, negate, ignore_case"
    err = raises([{"kind": "answer", "pattern": "(x)"}])
    assert err.code == "FTC124" and err.path == "train.grpo.rewards[0]" and "answer reward needs 'field'" in err.message
    assert err.hint.startswith('e.g. {"kind": "answer"')


def test_types_and_ranges_come_from_the_schema():
    err = raises([{"kind": "length", "min": -1}])
    assert err.code == "FTC102" and err.path == "train.grpo.rewards[0].min"
    err = raises([{"kind": "regex", "pattern": "x", "weight": "high"}])
    assert err.path == "train.grpo.rewards[0].weight" and "'high' is not of type 'number'" in str(err)


def test_semantic_checks_of_length_answer_and_names():
    err = raises([{"kind": "length", "min": 10, "max": 5}])
    assert err.code == "FTC128" and err.path == "train.grpo.rewards[0].max" and "max (5) is below min (10)" in err.message
    assert "min <= max" in err.hint
    err = raises([{"kind": "length"}])
    assert err.code == "FTC125" and "length reward needs min, max or both" in err.message and '"kind": "length"' in err.hint
    err = raises([{"kind": "answer", "pattern": "(x)", "field": "answer", "tolerance": 0.1}])
    assert err.code == "FTC127" and err.path == "train.grpo.rewards[0].tolerance"
    assert 'tolerance only applies to compare "numeric" (this reward compares \'exact\')' in err.message
    assert 'set "compare": "numeric", or drop tolerance' in err.hint
    err = raises([{"kind": "regex", "pattern": "a", "name": "fmt"}, {"kind": "regex", "pattern": "b", "name": "fmt"}])
    assert err.code == "FTC129" and err.path == "train.grpo.rewards[1].name"
    assert "reward name 'fmt' is also used by train.grpo.rewards[0]" in err.message and "rewards/<name>/mean" in err.hint
    err = raises([])
    assert err.code == "FTC120" and err.path == "train.grpo.rewards" and "GRPO needs at least one reward" in err.message
    assert err.hint.startswith('declare one in train.grpo.rewards, e.g. {"kind": "answer"')


# --------------------------------------------------------------------------- python rewards


REWARD_PY = '''\
def has_number(completion, answer_number):
    """1.0 when the reference number appears anywhere in the completion."""
    return float(str(answer_number) in completion)


def helper():
    return 0
'''


def python_reward(tmp_path: Path, source: str = REWARD_PY, function: str = "rewards.py:has_number") -> list[dict]:
    (tmp_path / "rewards.py").write_text(source, encoding="utf-8")
    return check_rewards([{"kind": "python", "function": function}], fields=FIELDS, allow_python=True,
                         recipe_dir=tmp_path)


def test_python_reward_locks_its_sha256_and_runs(tmp_path):
    (resolved,) = python_reward(tmp_path)
    assert resolved == {"kind": "python", "name": "has_number", "weight": 1.0, "function": "rewards.py:has_number",
                        "sha256": hashlib.sha256(REWARD_PY.encode()).hexdigest(), "args": ["answer_number"]}
    rows = gsm8k_rows(3)
    (f,) = build_reward_funcs([resolved], tmp_path)
    assert f.__name__ == "has_number"
    completions = [f"最终答案: {rows[0]['answer_number']}", "最终答案: -1", f"{rows[2]['answer_number']} apples"]
    assert trl_call(f, rows, completions) == [1.0, 0.0, 1.0]


def test_python_reward_file_changed_after_compile_is_drift(tmp_path):
    resolved = python_reward(tmp_path)
    check_drift(resolved, tmp_path)  # unchanged: fine
    (tmp_path / "rewards.py").write_text(REWARD_PY.replace("float(", "2 * float("), encoding="utf-8")
    with pytest.raises(FtcError) as info:
        check_drift(resolved, tmp_path)
    assert info.value.code == "FTC507" and "rewards.py changed" in str(info.value) and "has_number" in str(info.value)
    assert "ftc compile" in info.value.hint
    with pytest.raises(FtcError, match="drift"):  # the changed code never runs
        build_reward_funcs(resolved, tmp_path)
    (tmp_path / "rewards.py").unlink()
    with pytest.raises(FtcError, match="rewards.py is missing"):
        check_drift(resolved, tmp_path)


def test_python_reward_compile_never_executes_the_file(tmp_path):
    source = "raise SystemExit('executed at compile time')\n\ndef r(completion):\n    return 1.0\n"
    (resolved,) = python_reward(tmp_path, source, "rewards.py:r")  # parsed, not imported
    assert resolved["args"] == []


def test_python_parameter_that_is_not_a_field_is_the_seed_bug(tmp_path):
    """The seed read a `reference` key that nothing passes; here that is a compile error."""
    source = "def correctness(completion, reference):\n    return float(reference in completion)\n"
    with pytest.raises(FtcError) as info:
        python_reward(tmp_path, source, "rewards.py:correctness")
    assert info.value.code == "FTC301" and "unknown field 'reference'" in str(info.value)
    assert info.value.path == "train.grpo.rewards[0].function"


def test_python_kwargs_receive_every_field_and_the_prompt(tmp_path):
    source = "def r(completion, **row):\n    return float(row['question'] == row['prompt'])\n"
    (resolved,) = python_reward(tmp_path, source, "rewards.py:r")
    assert resolved["args"] == ["answer", "answer_number", "prompt", "question"]
    rows = gsm8k_rows(2)
    assert trl_call(build_reward_funcs([resolved], tmp_path)[0], rows, ["x", "y"]) == [1.0, 1.0]


def test_python_missing_file_and_function(tmp_path):
    (tmp_path / "rewards.py").write_text(REWARD_PY)
    err = raises([{"kind": "python", "function": "reward.py:has_number"}], allow_python=True, recipe_dir=tmp_path)
    assert err.code == "FTC133" and err.path == "train.grpo.rewards[0].function"
    assert "cannot read reward file reward.py (No such file or directory)" in err.message
    assert err.hint == f"the path is relative to the recipe folder: {tmp_path}"
    err = raises([{"kind": "python", "function": "rewards.py:has_numbr"}], allow_python=True, recipe_dir=tmp_path)
    assert err.code == "FTC135" and "rewards.py defines no top-level function 'has_numbr'" in err.message
    assert err.hint == "functions defined there: has_number, helper; did you mean 'has_number'?"
    err = raises([{"kind": "python", "function": "rewards:has_number"}], allow_python=True, recipe_dir=tmp_path)
    assert err.code == "FTC131" and "cannot read 'rewards:has_number' as FILE.py:function" in err.message
    assert "e.g. rewards.py:my_reward" in err.hint
    err = raises([{"kind": "python", "function": "/abs/rewards.py:has_number"}], allow_python=True, recipe_dir=tmp_path)
    assert err.code == "FTC132" and "reward file /abs/rewards.py is an absolute path" in err.message
    assert "relative to the recipe folder" in err.hint


@pytest.mark.parametrize("source,code,message,hint", [
    ("def r(completion:\n    return 1\n", "FTC134", "reward file rewards.py line 1: ", "fix the Python syntax"),
    ("async def r(completion):\n    return 1.0\n", "FTC136", "rewards.py:r is async", "write it as a plain def"),
    ("def r():\n    return 1.0\n", "FTC137", "rewards.py:r takes no completion parameter",
     "define it as def r(completion, **fields) -> float"),
])
def test_python_reward_file_that_cannot_score_is_refused(tmp_path, source, code, message, hint):
    (tmp_path / "rewards.py").write_text(source, encoding="utf-8")
    err = raises([{"kind": "python", "function": "rewards.py:r"}], allow_python=True, recipe_dir=tmp_path)
    assert err.code == code and err.path == "train.grpo.rewards[0].function"
    assert message in err.message and err.hint == hint


@pytest.mark.parametrize("grpo,code,words", [
    ({}, "FTC120", ["at train.grpo.rewards: GRPO needs at least one reward", "declare one in train.grpo.rewards"]),
    ({"rewards": [{"kind": "python", "function": "rewards.py:r"}]}, "FTC130",
     ["at train.grpo.rewards[0].function: reward runs Python (rewards.py:r)", "train.grpo.allow_python: true"]),
    ({"allow_python": True, "rewards": [{"kind": "python", "function": "rewards.py:has_numbr"}]}, "FTC135",
     ["rewards.py defines no top-level function 'has_numbr'", "did you mean 'has_number'?"]),
    ({"rewards": [{"kind": "answer", "pattern": "=(.*)", "field": "answer_number", "tolerance": 1}]}, "FTC127",
     ["at train.grpo.rewards[0].tolerance: tolerance only applies", 'set "compare": "numeric"']),
])
def test_a_recipes_bad_reward_is_an_error_of_ftc_compile(cli, tmp_path, grpo, code, words):
    """Through the CLI: exit 2, the recipe file and JSON path, the rule's message and hint, no traceback."""
    (tmp_path / "d.jsonl").write_text('{"question": "1+1?", "answer_number": "2"}\n', encoding="utf-8")
    (tmp_path / "rewards.py").write_text(REWARD_PY, encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "d.jsonl"}},
                                     "template": {"format": "prompt", "prompt": "{{ question }}"},
                                     "train": {"method": "grpo", "grpo": grpo}})
    status, _, err = cli("compile", recipe, "-o", tmp_path / "p.lock")
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"error[{code}]: {recipe}: ") and all(w in err for w in words), err


def test_python_reward_returning_garbage_is_an_error(tmp_path):
    source = "def r(completion):\n    return 'yes'\n"
    (f,) = build_reward_funcs(python_reward(tmp_path, source, "rewards.py:r"), tmp_path)
    with pytest.raises(FtcError, match=r"python reward 'r' \(rewards.py:r\) returned 'yes'") as err:
        f(prompts=["q"], completions=["a"])
    assert err.value.code == "FTC753" and "return a float" in err.value.hint


def test_compiler_checks_rewards_without_importing_the_runtime(tmp_path):
    """The compiler never imports the runtime: resolving rewards (a python one included)
    and checking their drift loads no ftc.runtime module, and no reward module of the
    compiler imports one, not even inside a function."""
    (tmp_path / "rewards.py").write_text(REWARD_PY, encoding="utf-8")
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from ftc.compiler.reward_check import check_rewards\n"
        "from ftc.compiler.rewards import check_drift\n"
        f"d = Path({str(tmp_path)!r})\n"
        "r = check_rewards([{'kind': 'python', 'function': 'rewards.py:has_number'}, {'kind': 'length', 'max': 9}],\n"
        "                  fields={'answer_number'}, allow_python=True, recipe_dir=d)\n"
        "check_drift(r, d)\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('ftc.runtime'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    modules = sorted((ROOT / "compiler").glob("reward*.py"))
    assert len(modules) >= 2
    for module in modules:
        text = module.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from\s+ftc\.runtime|import\s+ftc\.runtime|from\s+ftc\s+import\s+runtime)", text, re.M), module


# --------------------------------------------------------------------------- the schema fragment


def test_reward_schema_is_valid_2020_12_and_agrees_with_check_rewards():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator
    validator.check_schema(REWARD_SCHEMA)
    items = validator({"type": "array", "items": REWARD_SCHEMA})
    assert not list(items.iter_errors(GSM8K_REWARDS + [{"kind": "length", "max": 900, "ramp": 100},
                                                       {"kind": "contains", "text": ["a", "b"], "negate": True},
                                                       {"kind": "python", "function": "rewards.py:f"}]))
    for bad in ({"kind": "regex"}, {"kind": "regex", "pattern": "x", "text": "y"}, {"kind": "regex", "pattern": "x", "typo": 1},
                {"kind": "nope"}, {"pattern": "x"}, {"kind": "answer", "pattern": "(x)"}):
        assert list(validator(REWARD_SCHEMA).iter_errors(bad)), bad
    assert re.fullmatch(REWARD_SCHEMA["properties"]["name"]["pattern"], "correct_2")
