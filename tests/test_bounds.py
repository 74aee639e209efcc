"""Untrusted recipe input runs under a bound, and an interrupted run is no dead end.

A regex reward runs on every generated completion and a template on every row: a pattern
that backtracks exponentially or a template with nested loops must fail fast with the row
or completion named, not hang `ftc score`, training or compile. A python reward that raises
is an error naming the reward, the completion and the exception. A checkpoint left half
written by a kill is skipped (and said so) by --resume, and does not block a fresh start.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ftc.errors import FtcError

from conftest import write_recipe  # noqa: E402

EVIL = r"^(a+)+$"
EVIL_TEXT = "a" * 34 + "b"  # Python re: about 2^34 steps (hours)


def grpo_plan(cli, folder: Path, rewards: list[dict], *, allow_python: bool = False) -> Path:
    """A compiled GRPO plan over 24 prompts, 4 of them in the eval split; returns the lock."""
    (folder / "s.jsonl").write_text("".join(json.dumps({"q": f"question {i}?"}) + "\n" for i in range(24)), encoding="utf-8")
    grpo = {"rewards": rewards, **({"allow_python": True} if allow_python else {})}
    recipe = write_recipe(folder, {"sources": {"s": {"path": "s.jsonl"}}, "template": {"format": "prompt", "prompt": "{{ q }}"},
                                   "split": {"eval": 4}, "train": {"method": "grpo", "grpo": grpo}})
    code, _, err = cli("compile", recipe, "-o", folder / "plan.lock", "-q")
    assert code == 0, err
    return folder / "plan.lock"


def eval_row_ids(lock: Path) -> list:
    plan = json.loads(lock.read_text(encoding="utf-8"))
    art = plan["artifacts"]["data"]["eval"]
    return pq.read_table(lock.parent / art["path"], columns=["row_id"]).column("row_id").to_pylist()


def write_completions(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- regex rewards: linear time


@pytest.mark.parametrize("fullmatch", [False, True])
def test_catastrophic_regex_is_scored_in_linear_time_by_ftc_score(cli, tmp_path, fullmatch):
    lock = grpo_plan(cli, tmp_path, [{"kind": "regex", "name": "evil", "pattern": EVIL, "fullmatch": fullmatch},
                                     {"kind": "answer", "name": "ans", "pattern": r"(a+)+b", "field": "q", "compare": "exact"}])
    ids = eval_row_ids(lock)
    done = write_completions(tmp_path / "c.jsonl", [{"row_id": ids[0], "completion": EVIL_TEXT},
                                                   {"row_id": ids[1], "completion": "a" * 20000}])
    t0 = time.perf_counter()
    code, out, err = cli("score", lock, "--completions", done)
    assert code == 0, err
    assert time.perf_counter() - t0 < 20  # Python re would take hours on the first completion
    assert "evil" in out and "0.50" in out  # the 'a'*20000 completion matches, the other does not


def test_the_same_patterns_score_the_same_on_re2(tmp_path):
    """What RE2 scores agrees with Python re on patterns both run quickly (the GSM8K ones)."""
    from ftc.compiler.reward_check import check_rewards
    from ftc.compiler.rewards import reward_from_dict

    specs = [{"kind": "regex", "pattern": r"^<reasoning>[\s\S]+?</reasoning>\s*最终答案[:：]\s*-?[\d,.]+\s*$"},
             {"kind": "answer", "pattern": r"最终答案[:：]\s*(-?[\d,.]+)", "field": "n", "occurrence": "last"}]
    rewards = [reward_from_dict(d) for d in check_rewards(specs, fields={"n"}, allow_python=False, recipe_dir=tmp_path)]
    texts = ["<reasoning>2+2</reasoning>\n最终答案: 4", "最终答案：1 最终答案: 1,234", "<reasoning>x</reasoning> nothing", ""]
    for text in texts:
        want_match = re.search(specs[0]["pattern"], text) is not None
        assert rewards[0].score(text, {}) == float(want_match)
        found = re.findall(specs[1]["pattern"], text)
        assert rewards[1].extract(text) == (found[-1] if found else None)


@pytest.mark.parametrize("pattern, says", [
    (r"(a)\1", "invalid escape sequence"),
    (r"(?=x)x", "invalid perl operator: (?="),
    (r"(?<!no)yes", "invalid perl operator: (?<"),
])
def test_a_pattern_re2_cannot_run_is_refused_at_compile(cli, tmp_path, pattern, says):
    (tmp_path / "s.jsonl").write_text('{"q": "1?"}\n', encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "s.jsonl"}}, "template": {"format": "prompt", "prompt": "{{ q }}"},
                                     "train": {"method": "grpo", "grpo": {"rewards": [{"kind": "regex", "pattern": pattern}]}}})
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error[FTC166]: {recipe}: at train.grpo.rewards[0].pattern: reward pattern {pattern!r} cannot run on RE2")
    assert says in err and "no backreferences" in err, err


def test_re2_prints_nothing_of_its_own_on_a_refused_pattern(tmp_path):
    """RE2 logs parse errors to stderr by default; the error says it once, as FTC166."""
    code = ("from ftc.compiler.reward_check import check_rewards\n"
            "try:\n    check_rewards([{'kind': 'regex', 'pattern': '(a)\\\\1'}], fields=set(), allow_python=False, recipe_dir='.')\n"
            "except Exception as e:\n    print(e.code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.strip() == "FTC166" and out.stderr == ""


# --------------------------------------------------------------------------- templates: a budget per row


NESTED = "{{ q }}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize("template, code, says", [
    (NESTED, "FTC420", "line 1, row {row}: rendering takes more than 1,000,000 loop steps"),
    ("{{ q }}\n{{ q * 100000000 }}", "FTC421", "line 2, row {row}: str * 100000000 would build"),
    ("{{ q }}\n{% for c in q %}{% for d in q %}{% for e in q %}{% for f in q %}{{ f }}{% endfor %}{% endfor %}{% endfor %}"
     "{% endfor %}", "FTC420", "row {row}: rendering takes more than 1,000,000 loop steps"),
    ("{{ 7 ** 100000000 }}{{ q }}", "FTC421", "7 ** 100000000 would build 84,509,805 items"),
])
def test_a_runaway_template_fails_fast_naming_the_row(cli, tmp_path, template, code, says):
    """Nested loops within the sandbox's range limit (10^10 steps), a huge repeat, loops over the row's
    own text (40^4 steps on the long row only), a huge power: compile stops at the row that overruns."""
    rows = [{"q": "short"}, {"q": "x" * 40}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "s.jsonl"}},
                                     "template": {"format": "prompt_completion", "prompt": {"file": "p.jinja"}, "completion": "ok"}})
    (tmp_path / "p.jinja").write_text(template, encoding="utf-8")
    t0 = time.perf_counter()
    status, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock", "-q")
    assert time.perf_counter() - t0 < 60
    assert status == 2 and "Traceback" not in err, err
    row = re.search(r"row (\S+):", err)[1]
    assert err.startswith(f"error[{code}]: template p.jinja ") and says.format(row=row) in err, err
    assert row != "?"


def test_loops_within_the_budget_render_as_jinja_renders_them():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from ftc.compiler.render import Template, render_rows, variables

    src = ("{% for m in ms %}{{ loop.index }}:{{ m }}{% if not loop.last %},{% endif %}{% else %}none{% endfor %}"
           "|{{ 'ab' * 3 }}{{ 2 ** 10 }}{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}")
    rows = [{"ms": ["a", "b"], "d": {"x": 1}}, {"ms": [], "d": {}}]
    plain = ImmutableSandboxedEnvironment().from_string(src)
    assert render_rows(Template("t", src), rows) == [plain.render(r) for r in rows] == ["1:a,2:b|ababab1024x=1", "none|ababab1024"]
    assert variables(Template("t", src)) == {"ms", "d"}  # the loop counter is no field


# --------------------------------------------------------------------------- a python reward that raises


RAISES = "def picky(completion, q):\n    if 'boom' in completion:\n        return 1 / 0\n    return 1.0\n"


def test_a_python_reward_that_raises_names_reward_completion_and_exception(cli, tmp_path):
    (tmp_path / "rewards.py").write_text(RAISES, encoding="utf-8")
    lock = grpo_plan(cli, tmp_path, [{"kind": "python", "function": "rewards.py:picky"}], allow_python=True)
    ids = eval_row_ids(lock)
    done = write_completions(tmp_path / "c.jsonl", [{"row_id": ids[0], "completion": "fine"},
                                                   {"row_id": ids[1], "completion": "it goes boom here"}])
    code, _, err = cli("score", lock, "--completions", done)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error[FTC762]: at train.grpo.rewards: python reward 'picky' (rewards.py:picky) raised "
                          "ZeroDivisionError: division by zero at rewards.py line 3, on completion 1 of the batch "
                          f"(row {ids[1]})"), err
    assert "return None for a completion" in err and "'it goes boom here'" in err


# --------------------------------------------------------------------------- incomplete checkpoints


def fake_checkpoint(folder: Path, step: int, *, complete: bool) -> Path:
    """A checkpoint folder as the Trainer leaves it: complete (its trainer_state.json, written last,
    is there) or as a kill -9 during saving leaves it (weights written, no trainer_state.json)."""
    path = folder / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    return path


def test_last_checkpoint_skips_incomplete_ones(tmp_path):
    from ftc.runtime.session import checkpoint_state, last_checkpoint, open_run_folder

    two = fake_checkpoint(tmp_path, 2, complete=True)
    four = fake_checkpoint(tmp_path, 4, complete=False)
    torn = fake_checkpoint(tmp_path, 6, complete=True)
    (torn / "trainer_state.json").write_text('{"global_st', encoding="utf-8")  # killed while writing it
    assert last_checkpoint(tmp_path / "checkpoints") == str(two)
    assert "no trainer_state.json" in checkpoint_state(four) and "unreadable" in checkpoint_state(torn)
    folder = open_run_folder(tmp_path, resume=True)
    assert folder.last_checkpoint == str(two) and folder.resumed_from == 2
    assert two.is_dir() and not four.exists() and not torn.exists()


def test_only_incomplete_checkpoints_refuse_resume_and_a_fresh_start_removes_them(tmp_path, capsys):
    from ftc.runtime.session import open_run_folder

    four = fake_checkpoint(tmp_path, 4, complete=False)
    with pytest.raises(FtcError) as err:
        open_run_folder(tmp_path, resume=True)
    assert err.value.code == "FTC763" and "checkpoint-4 (no trainer_state.json" in str(err.value)
    assert "run without --resume" in err.value.hint and four.is_dir()  # refused: nothing removed
    folder = open_run_folder(tmp_path, resume=False)
    assert folder.last_checkpoint is None and not four.exists()
    assert "removed the incomplete checkpoint-4" in capsys.readouterr().err


def test_ftc_run_resume_says_the_checkpoint_is_incomplete(cli, demo, tmp_path):
    lock = tmp_path / "plan.lock"
    code, _, err = cli("compile", demo / "demo.json", "-o", lock, "-q")
    assert code == 0, err
    out = tmp_path / "run"
    out.mkdir()
    fake_checkpoint(out, 3, complete=False)
    code, _, err = cli("run", lock, "--output", out, "--resume")
    assert code == 2 and "error[FTC763]" in err and "checkpoint-3" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- sizes, output places, leftovers


@pytest.mark.parametrize("setting, code, says", [
    ("train.per_device_train_batch_size=1000000000000000000000000000000", "FTC167",
     "at train.per_device_train_batch_size: 1000000000000000000000000000000 is larger than 2147483647, the largest number"),
    ("train.seed=18446744073709551616", "FTC167", "at train.seed: 18446744073709551616 is larger than 4294967295, the largest seed"),
    ("train.num_train_epochs=1e308", "FTC167", "at train.num_train_epochs: 1e+308 is larger than 2147483647"),
    ("model.max_seq_length=1e308", "FTC102", "at model.max_seq_length: expected integer, got 1e+308"),
])
def test_absurd_numbers_are_refused_at_validate(cli, demo, setting, code, says):
    status, _, err = cli("validate", demo / "demo.json", "--set", setting)
    assert status == 2 and "Traceback" not in err and f"error[{code}]" in err and says in err, err


def test_the_largest_seed_numpy_takes_is_accepted(cli, demo):
    status, out, err = cli("validate", demo / "demo.json", "--set", f"train.seed={2**32 - 1}")
    assert status == 0, err


def test_output_that_is_a_folder_or_unwritable_is_refused_before_reading(cli, demo, tmp_path):
    recipe = demo / "demo.json"
    status, _, err = cli("compile", recipe, "-o", tmp_path, "-q")
    assert status == 2 and err.startswith(f"error[FTC169]: cannot write the lock {tmp_path}: it is a folder"), err
    assert not (tmp_path.parent / f"{tmp_path.name}.tmp").exists()
    (tmp_path / "afile").write_text("x")
    status, _, err = cli("compile", recipe, "-o", tmp_path / "afile" / "plan.lock", "-q")
    assert status == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in err and "Traceback" not in err, err
    status, _, err = cli("compile", recipe, "-o", tmp_path / "p.lock", "-q", "--set", f"output.cache_dir={tmp_path / 'afile'}")
    assert status == 2 and err.startswith(f"error[FTC168]: {recipe}: at output.cache_dir: cannot use {tmp_path / 'afile'}"), err
    assert "is a file, not a folder" in err


def test_a_killed_compiles_tmp_files_are_gone_after_the_next_compile(cli, demo):
    lock = demo / "plan.lock"
    assert cli("compile", demo / "demo.json", "-o", lock, "-q")[0] == 0
    data = next(demo.rglob("train-*.parquet")).parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    left = [data / f".train-{dead}.parquet.tmp", data.parent / "tokens" / f".eval-{dead}.parquet.tmp"]
    for f in left:
        f.write_bytes(b"half a parquet file")
    assert cli("compile", demo / "demo.json", "-o", lock, "-q")[0] == 0
    assert [f for f in left if f.exists()] == [] and not list(demo.rglob("*.tmp"))


# --------------------------------------------------------------------------- the Trainer's own choices


def test_an_optimizer_the_trainer_does_not_know_is_refused(cli, demo):
    status, _, err = cli("validate", demo / "demo.json", "--set", "train.optim=adamw_9bit")
    assert status == 2 and "error[FTC195]" in err and "at train.optim: train.optim 'adamw_9bit' is not an optimizer" in err, err
    assert "did you mean 'adamw_8bit'?" in err and "adamw_torch_fused" in err


def test_the_optimizer_names_are_the_installed_trainers():
    from transformers.training_args import OptimizerNames

    from ftc.compiler.trainer_choices import optimizer_names

    assert optimizer_names() == tuple(o.value for o in OptimizerNames)


def test_an_8bit_optimizer_without_bitsandbytes_warns_at_compile_and_is_refused_by_run(cli, demo, tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    lock = tmp_path / "plan.lock"
    status, _, err = cli("compile", demo / "demo.json", "-o", lock, "-q", "--set", "train.optim=adamw_8bit")
    assert status == 0 and "warning: train.optim 'adamw_8bit' needs the bitsandbytes package" in err, err
    assert "bitsandbytes" not in lock.read_text(encoding="utf-8").replace('"adamw_8bit"', "")  # a machine fact, not the plan's
    status, _, err = cli("run", lock, "--output", tmp_path / "run")
    assert status == 2 and "error[FTC764]" in err and "'adamw_8bit' needs the bitsandbytes module" in err, err
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoints").exists()


# --------------------------------------------------------------------------- tokenizer_revision and trust_remote_code at run time


MARKED = "from transformers import PreTrainedTokenizerFast\n\n\nclass MarkedTokenizer(PreTrainedTokenizerFast):\n    ran_remote_code = True\n"


def test_ftc_run_loads_the_tokenizer_revision_and_remote_code_the_plan_names(demo, tmp_path):
    """A hub tokenizer (an offline cache, as a training box has it) with two revisions: the plan names
    the older one, whose tokenizer is custom code (model.trust_remote_code). Compile and the run both
    load that revision through it; dropping either key at run time loads main's (151k ids) or fails."""
    import shutil

    from conftest import DEMO_TOKENIZER, TOKENIZER

    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip(f"needs the Qwen2.5 tokenizer at {TOKENIZER}")
    old, main = "a" * 40, "b" * 40
    repo = tmp_path / "hub" / "models--ftc--tok"
    for rev, source in ((old, DEMO_TOKENIZER), (main, TOKENIZER)):
        shutil.copytree(source, repo / "snapshots" / rev)
        shutil.copy(demo / "demo" / "model" / "config.json", repo / "snapshots" / rev / "config.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    config = json.loads((DEMO_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(tokenizer_class="MarkedTokenizer", auto_map={"AutoTokenizer": [None, "marked.MarkedTokenizer"]})
    (repo / "snapshots" / old / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (repo / "snapshots" / old / "marked.py").write_text(MARKED, encoding="utf-8")

    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HUB_OFFLINE": "1"}
    ftc = [sys.executable, "-m", "ftc"]
    lock, run = tmp_path / "plan.lock", tmp_path / "run"
    done = subprocess.run([*ftc, "compile", demo / "demo.json", "-o", lock, "-q", "--set", "model.tokenizer=ftc/tok",
                           "--set", f"model.tokenizer_revision={old}", "--set", "model.trust_remote_code=true"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*ftc, "run", lock, "--output", run, "--max-steps", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(run), trust_remote_code=True)  # what the run trained with and saved
    assert len(saved) == len(AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))) == 1024  # main's has 151,665
    assert json.loads((run / "tokenizer_config.json").read_text())["tokenizer_class"] == "MarkedTokenizer"
