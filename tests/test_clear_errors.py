"""Issue 12: inputs that were taken silently or named wrongly now get an error that says what and where.

Duplicate keys and NaN in a recipe, --set errors blamed on the file, a recipe given where a lock is
expected, `preview -n -1`, and the noise lines of `ftc diff`. Every case runs the real CLI."""

from __future__ import annotations

import json

import pytest

from conftest import write_recipe


def refused(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 2 and "Traceback" not in err, (code, out, err)
    return err


def recipe(tmp_path, **extra):
    (tmp_path / "d.jsonl").write_text('{"q": "hello", "a": "world"}\n{"q": "hi", "a": "there"}\n')
    return write_recipe(tmp_path, {"sources": {"s": {"path": "d.jsonl"}},
                                   "template": {"format": "prompt_completion", "prompt": "Q: {{ q }}", "completion": " {{ a }}"},
                                   **extra})


# ---- 1. ftc diff prints only what changed

def test_diff_of_locks_differing_only_in_learning_rate_prints_that_line_alone(cli, tmp_path):
    from ftc.compiler.lock import canonical, seal

    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    assert cli("compile", recipe(tmp_path), "-o", a, "-q")[0] == 0
    lock = json.loads(a.read_text(encoding="utf-8"))
    lr = lock["settings"]["train"]["learning_rate"]
    lock["settings"]["train"]["learning_rate"] = lr / 2
    b.write_text(canonical(seal(lock)), encoding="utf-8")  # the same plan but for the one setting
    code, out, _ = cli("diff", a, b)
    assert code == 1
    ha, hb = json.loads(a.read_text())["plan_hash"], json.loads(b.read_text())["plan_hash"]
    assert out.splitlines() == [f"{a} ({ha[:12]}) → {b} ({hb[:12]})", "settings:",
                                f"  train.learning_rate: {lr} → {lr / 2}"]


def test_diff_after_a_set_names_the_setting_and_the_override_and_no_noise(cli, tmp_path):
    r = recipe(tmp_path)
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    assert cli("compile", r, "-o", a, "-q")[0] == 0
    assert cli("compile", r, "-o", b, "-q", "--set", "train.learning_rate=1e-4")[0] == 0
    code, out, _ = cli("diff", a, b)
    assert code == 1
    assert out.splitlines()[1:] == ["settings:", "  train.learning_rate: 0.0002 → 0.0001",
                                    "recipe:", '  overrides: [] → ["train.learning_rate=0.0001"]']
    assert "changed" not in out


# ---- 2. duplicate keys

def test_duplicate_key_names_the_key_its_path_and_both_lines(cli, tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{\n  "name": "x",\n  "train": {"learning_rate": 1e-4},\n  "model": {"name": "m"},\n'
                 '  "train": {"learning_rate": 2e-4}\n}\n', encoding="utf-8")
    err = refused(cli, "validate", p)
    assert err.startswith(f"error[FTC140]: {p}: at train: duplicate key 'train' (lines 3 and 5)")
    assert "keep one" in err
    # nested, and a key inside an array's object
    p.write_text('{"name": "x",\n "train": {"method": "sft",\n   "grpo": {"rewards": [{"kind": "regex",\n'
                 '     "kind": "length"}]}}}', encoding="utf-8")
    err = refused(cli, "validate", p)
    assert err.startswith(f"error[FTC140]: {p}: at train.grpo.rewards[0].kind: duplicate key 'kind' (lines 3 and 4)")


def test_equal_keys_in_different_objects_are_not_duplicates(cli, tmp_path):
    r = recipe(tmp_path, train={"seed": 1}, split={"seed": 2})
    code, _, err = cli("validate", r)
    assert code == 0, err


# ---- 3. NaN, Infinity, and floats where an integer is meant

@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_recipe_are_refused_with_their_path(cli, tmp_path, text):
    p = recipe(tmp_path)
    p.write_text(p.read_text().replace('"name": "t"', f'"name": "t", "train": {{"learning_rate": {text}}}'))
    err = refused(cli, "validate", p)
    assert err.startswith(f"error[FTC141]: {p}: at train.learning_rate: ") and "not a finite number" in err


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999", "[1, NaN]"])
def test_non_finite_numbers_in_a_set_value_are_refused_naming_the_argument(cli, tmp_path, text):
    err = refused(cli, "validate", recipe(tmp_path), "--set", f"train.learning_rate={text}")
    assert err.startswith(f"error[FTC142]: --set 'train.learning_rate={text}': ") and "not a finite number" in err


@pytest.mark.parametrize("key,value", [("train.max_steps", "1e308"), ("train.per_device_train_batch_size", "4.0")])
def test_a_float_where_an_integer_is_meant_is_a_schema_error(cli, tmp_path, key, value):
    err = refused(cli, "validate", recipe(tmp_path), "--set", f"{key}={value}")
    assert "FTC102" in err and f"at {key}: expected integer, got {value if value != '1e308' else '1e+308'}" in err


# ---- 4. an error a --set caused names the --set

def test_unknown_key_from_set_names_the_argument_not_the_file(cli, tmp_path):
    p = recipe(tmp_path)
    err = refused(cli, "validate", p, "--set", "no.such.key=1")
    assert err.startswith("error[FTC103]: --set no.such.key=1: at no: unknown key 'no'"), err
    assert str(p) not in err.splitlines()[0]
    err = refused(cli, "validate", p, "--set", "train.learning_rate=fast")
    assert err.startswith("error[FTC102]: --set train.learning_rate=fast: at train.learning_rate: expected number")
    err = refused(cli, "compile", p, "--set", "split.eval=1.5", "-o", tmp_path / "p.lock")  # a resolver rule
    assert err.startswith("error[FTC106]: --set split.eval=1.5: at split.eval: split.eval is 1.5")


def test_an_error_of_the_file_still_names_the_file_when_a_set_is_given(cli, tmp_path):
    p = recipe(tmp_path, trian={"seed": 1})
    err = refused(cli, "validate", p, "--set", "train.seed=3")
    assert err.startswith(f"error[FTC103]: {p}: at trian: unknown key 'trian'")


# ---- 5. a recipe where a lock is expected

@pytest.mark.parametrize("command", [["run"], ["diff", "LOCK"], ["score", "--completions", "c.jsonl"]])
def test_a_recipe_given_for_a_lock_is_named_and_not_overwritten(cli, tmp_path, command):
    p = recipe(tmp_path)
    lock = tmp_path / "p.lock"
    assert cli("compile", p, "-o", lock, "-q")[0] == 0
    before = p.read_bytes()
    args = [command[0], p] + [str(lock) if a == "LOCK" else a for a in command[1:]]
    err = refused(cli, *args)
    assert err.startswith(f"error[FTC508]: {p} is a recipe, not a plan.lock")
    assert f"that is a recipe; compile it first: ftc compile {p} -o plan.lock" in err
    assert f"-o {p}" not in err and p.read_bytes() == before


# ---- 6. preview -n

@pytest.mark.parametrize("n", ["-1", "0"])
def test_preview_needs_a_positive_row_count(cli, tmp_path, n):
    err = refused(cli, "preview", recipe(tmp_path), "-n", n)
    assert err.startswith(f"error[FTC777]: -n {n}: preview shows at least one row") and "-n 3" in err
