"""Templates (sandbox, strict, errors with line and row), schema errors, the lock, diff, preview, start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from conftest import NEEDS_SHARED, ROOT, write_recipe


def make(tmp_path, template, rows=None, **extra):
    rows = rows or [{"q": "hello", "a": "world", "n": 3}, {"q": "", "a": "x", "n": None}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write_recipe(tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": template, **extra})


def err_of(cli, recipe, *args) -> str:
    code, _, err = cli("compile", recipe, "-o", recipe.parent / "p.lock", *args)
    assert code == 2
    assert "Traceback" not in err
    return err


def test_template_syntax_error_names_file_and_line(cli, tmp_path):
    (tmp_path / "t.jinja").write_text("line one\n{% if q %}\n{{ q }\n")
    err = err_of(cli, make(tmp_path, {"format": "text", "text": {"file": "t.jinja"}}))
    assert "FTC400" in err and "template t.jinja line 3" in err


def test_undefined_variable_is_caught_before_rendering(cli, tmp_path):
    err = err_of(cli, make(tmp_path, {"format": "prompt_completion", "prompt": "Q: {{ question }}", "completion": "{{ a }}"}))
    assert "FTC401" in err and "template.prompt" in err and "'question' is undefined" in err and "available fields: a, n, q" in err


def test_render_error_names_row(cli, tmp_path):
    err = err_of(cli, make(tmp_path, {"format": "text", "text": "{{ q }}\n{{ n + 1 }}"}))
    assert "FTC401" in err and "line 2" in err and "row s:d.jsonl:2" in err


def test_sandbox_blocks_python_internals(cli, tmp_path):
    err = err_of(cli, make(tmp_path, {"format": "text", "text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}))
    assert "FTC401" in err and "unsafe" in err


def test_jinja_fallback_matches_lowered_sql(cli, tmp_path):
    """Same text whether a template is lowered to SQL or rendered by Jinja."""
    rows = [{"q": f"q{i}" if i % 3 else "", "a": f"a {i}\n"} for i in range(50)] + [{"q": None, "a": "z"}]
    lowered = "{% if q %}Q: {{ q }}\n{% else %}no question\n{% endif %}A: {{ a }}"
    jinja = lowered + "{{ '' | upper }}"  # a filter is not lowerable
    out = {}
    for name, tpl in (("sql", lowered), ("jinja", jinja)):
        d = tmp_path / name
        d.mkdir()
        r = make(d, {"format": "text", "text": tpl}, rows=rows)
        code, _, err = cli("compile", r, "-o", d / "p.lock", "-q")
        assert code == 0, err
        lock = json.loads((d / "p.lock").read_text())
        assert lock["templates"]["template.text"]["rendered_by"] == name
        import pyarrow.parquet as pq

        out[name] = [r["text"] for r in pq.read_table(d / lock["artifacts"]["data"]["train"]["path"]).to_pylist()]
    assert out["sql"] == out["jinja"]
    assert out["sql"][0] == "no question\nA: a 0\n" and out["sql"][1] == "Q: q1\nA: a 1\n" and out["sql"][-1] == "no question\nA: z"


@NEEDS_SHARED
def test_alpaca_lowered_equals_jinja_on_real_rows(tmp_path):
    from ftc.compiler import render

    data = json.loads((ROOT.parent / "shared/data/alpaca/alpaca_en_demo.json").read_text())
    tpl = render.Template("alpaca.jinja", (ROOT / "templates/alpaca.jinja").read_text())
    sql = render.to_sql(tpl, {"instruction": "VARCHAR", "input": "VARCHAR", "output": "VARCHAR"})
    assert sql is not None
    import duckdb

    con = duckdb.connect()
    t = pa.Table.from_pylist(data)
    got = [r[0] for r in con.execute(f"SELECT {sql} FROM t").fetchall()]
    assert got == render.render_rows(tpl, data)


def test_unknown_keys_get_did_you_mean(cli, tmp_path):
    r = make(tmp_path, {"format": "text", "text": "{{ q }}"}, transforms=[{"dedupe": ["q"]}])
    err = err_of(cli, r)
    assert "FTC103" in err and "at transforms[0].dedupe" in err and "did you mean 'dedup'" in err and "keys allowed here: " in err
    r.write_text(json.dumps({"name": "t", "sourcse": {}, "template": {"format": "text", "text": "x"}}))
    err = err_of(cli, r)
    assert "unknown key 'sourcse'" in err and "did you mean 'sources'" in err


def test_schema_type_and_required_errors(cli, tmp_path):
    r = make(tmp_path, {"format": "text", "text": "{{ q }}"}, train={"learning_rate": "fast"})
    err = err_of(cli, r)
    assert "FTC102" in err and "train.learning_rate" in err and "expected number" in err
    r = make(tmp_path, {"format": "prompt_completion", "prompt": "{{ q }}"})
    err = err_of(cli, r)
    assert "FTC403" in err and "at template.completion: format 'prompt_completion' needs template.completion" in err
    assert 'an inline Jinja string or {"file": "templates/....jinja"}' in err


@pytest.mark.parametrize("patch,code,words", [
    ({"split": {"eval": 1.5}}, "FTC106",
     ["at split.eval: split.eval is 1.5: neither a share below 1 nor a whole row count", "hint: use e.g. 0.05"]),
    ({"train": {"method": "grpo"}}, "FTC108",
     ["at template.format: GRPO trains on prompts; template.format is 'text'", 'hint: use "format": "prompt"']),
    ({"template": {"format": "prompt", "prompt": "{{ q }}"}}, "FTC109",
     ['at template.format: format "prompt" has nothing to learn with SFT', 'or set train.method to "grpo"']),
    ({"template": {"format": "text", "text": "{{ q }}", "prompt": "{{ q }}"}}, "FTC404",
     ["at template.prompt: format 'text' does not use template.prompt", "hint: format 'text' takes: text"]),
])
def test_settings_that_contradict_each_other(cli, tmp_path, patch, code, words):
    template = patch.pop("template", {"format": "text", "text": "{{ q }}"})
    r = make(tmp_path, template, **patch)
    err = err_of(cli, r)
    assert err.startswith(f"error[{code}]: {r}: ") and all(w in err for w in words), err


def test_bad_json_names_line(cli, tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{\n  "name": "x",\n  "sources": {,}\n}')
    code, _, err = cli("validate", p)
    assert code == 2 and "FTC101" in err and "line 3" in err


def test_bad_set_argument(cli, tmp_path):
    r = make(tmp_path, {"format": "text", "text": "{{ q }}"})
    err = err_of(cli, r, "--set", "nonsense")
    assert "FTC104" in err and "KEY=VALUE" in err
    err = err_of(cli, r, "--set", "name.x=1")
    assert "FTC104" in err


def test_schema_command_and_recipes_validate(cli):
    import jsonschema

    code, out, _ = cli("schema")
    schema = json.loads(out)
    for p in (ROOT / "recipes").glob("*.json"):
        recipe = json.loads(p.read_text(encoding="utf-8"))
        assert recipe["$schema"] == "../compiler/recipe.schema.json"
        jsonschema.validate(recipe, schema)


def test_reward_checks_read_the_reward_schema_that_ftc_schema_prints(cli, tmp_path):
    """The reward fragment is defined once, in recipe.schema.json: what `ftc schema` prints
    is what the compiler checks rewards with, and its defaults are what the lock records."""
    from ftc.compiler.reward_check import check_rewards
    from ftc.compiler.rewards import KINDS, REWARD_SCHEMA

    code, out, _ = cli("schema")
    assert code == 0
    fragment = json.loads(out)["$defs"]["reward"]
    assert fragment == REWARD_SCHEMA
    assert KINDS == tuple(fragment["properties"]["kind"]["enum"])
    declared = [{"kind": "regex", "pattern": "x"}, {"kind": "answer", "pattern": "(x)", "field": "f", "compare": "numeric"},
                {"kind": "length", "max": 9}, {"kind": "contains", "text": "t"}]
    resolved = check_rewards(declared, fields={"f"}, allow_python=False, recipe_dir=tmp_path)
    props = fragment["properties"]
    filled = {(d["kind"], k): v for spec, d in zip(declared, resolved) for k, v in d.items() if k not in spec}
    stated = {(kind, k): props[k]["default"] for kind, k in filled if "default" in props[k]}
    assert stated and all(filled[key] == value for key, value in stated.items()), (filled, stated)


def test_lock_checks_and_diff(cli, tmp_path):
    r = make(tmp_path, {"format": "prompt_completion", "prompt": "Q: {{ q }}", "completion": "{{ a }}"})
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    assert cli("compile", r, "-o", a, "-q")[0] == 0
    assert cli("diff", a, a)[0] == 0
    r2 = make(tmp_path, {"format": "prompt_completion", "prompt": "Question: {{ q }}", "completion": "{{ a }}"},
              train={"learning_rate": 1e-4}, transforms=[{"drop_empty": ["q"]}])
    assert cli("compile", r2, "-o", b, "-q")[0] == 0
    code, out, _ = cli("diff", a, b)
    assert code == 1
    assert "train.learning_rate: 0.0002 → 0.0001" in out
    assert "-Q: {{ q }}" in out and "+Question: {{ q }}" in out
    assert "transforms[0]: drop_empty: step added" in out
    assert "train: 2 → 1 (-1)" in out or "rows: 2 → 1 (-1)" in out
    # tampered and future locks
    lock = json.loads(a.read_text())
    lock["settings"]["train"]["learning_rate"] = 1.0
    a.write_text(json.dumps(lock))
    code, _, err = cli("diff", a, b)
    assert code == 2 and "FTC502" in err and "edited by hand" in err
    lock = json.loads(b.read_text())
    lock["ftc_version"] = "99.0.0"
    from ftc.compiler.lock import seal

    a.write_text(json.dumps(seal(lock)))
    code, _, err = cli("diff", a, b)
    assert code == 2 and "FTC501" in err and "newer" in err
    lock["ftc_version"], lock["lock_version"] = json.loads(b.read_text())["ftc_version"], 99  # an unknown lock format
    a.write_text(json.dumps(seal(lock)))
    code, _, err = cli("diff", a, b)
    assert code == 2 and f"error[FTC501]: {a}: at lock_version: 99 (written by" in err, err


def test_preview_json_lines(cli, tmp_path):
    r = make(tmp_path, {"format": "prompt_completion", "prompt": "Q: {{ q }}", "completion": "{{ a }}"})
    code, out, err = cli("preview", r, "--json", "-n", "5")
    assert code == 0, err
    rows = [json.loads(l) for l in out.splitlines()]
    assert rows[0] == {"row_id": "s:d.jsonl:1", "q": "hello", "a": "world", "n": 3, "prompt": "Q: hello", "completion": "world"}
    assert len(rows) == 2


def test_cli_start_does_not_import_heavy_libraries():
    code = ("import sys; from ftc.cli import _parser; _parser().format_help(); "
            "heavy = [m for m in ('torch', 'transformers', 'duckdb', 'pyarrow', 'datasets', 'trl') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_exit_code_two_and_no_traceback_from_subprocess(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ftc", "compile", str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert res.returncode == 2
    assert "FTC100" in res.stderr and "Traceback" not in res.stderr


def test_preview_tokens_json_shows_what_trains(cli, tmp_path):
    from transformers import AutoTokenizer

    from conftest import DEMO_TOKENIZER

    r = make(tmp_path, {"format": "prompt_completion", "prompt": "Q: {{ q }}\nA: ", "completion": "{{ a }}"})
    lock = tmp_path / "p.lock"
    assert cli("compile", r, "-o", lock, "-q")[0] == 0
    code, out, err = cli("preview", lock, "--tokens", "--json", "-n", "1")
    assert code == 0, err
    (row,) = [json.loads(l) for l in out.splitlines()]
    tok = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))
    trained = [t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]
    assert row["labels"][0] == -100 and tok.decode(row["input_ids"]) == "Q: hello\nA: world<|im_end|>"
    assert tok.decode(trained).strip() == "world<|im_end|>"


def test_more_bad_inputs_are_named(cli, tmp_path):
    # a template file that does not exist
    err = err_of(cli, make(tmp_path, {"format": "text", "text": {"file": "nope.jinja"}}))
    assert "FTC402" in err and "nope.jinja" in err and "relative to the recipe" in err
    # a file whose format cannot be inferred
    (tmp_path / "d.xml").write_text("<a/>")
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "d.xml"}}, "template": {"format": "text", "text": "x"}})
    err = err_of(cli, r)
    assert "FTC207" in err and "d.xml" in err and "sources.s.format" in err
    # a Hugging Face dataset that cannot be loaded offline
    r = write_recipe(tmp_path, {"sources": {"s": {"hf": {"name": "no-such/dataset"}}}, "template": {"format": "text", "text": "x"}})
    err = err_of(cli, r)
    assert "FTC205" in err and "no-such/dataset" in err and "sources.s.name" in err
    # a lock that is not JSON
    bad = tmp_path / "bad.lock"
    bad.write_text("{not json")
    code, _, err = cli("diff", bad, bad)
    assert code == 2 and "FTC500" in err and "bad.lock" in err and "ftc compile" in err


def _run_folder(cli, tmp_path, template, rows=None, *sets) -> tuple:
    """A compiled plan and its lock in a folder of its own, as `ftc run` leaves it (no weights:
    the commands below refuse before any would load)."""
    from ftc.compiler.lock import Plan, canonical

    lock = tmp_path / "p.lock"
    code, _, err = cli("compile", make(tmp_path, template, rows), "-o", lock, "-q", *sets)
    assert code == 0, err
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.lock").write_text(canonical(Plan.load(lock).anchored_at(run / "plan.lock")))
    return run, lock


def refused(cli, *args) -> str:
    code, _, err = cli(*args)
    assert code == 2 and "Traceback" not in err, err
    return err


def test_infer_eval_score_and_preview_name_the_bad_input(cli, tmp_path):
    from ftc.compiler.lock import Plan

    run, lock = _run_folder(cli, tmp_path, {"format": "prompt_completion", "prompt": "Q: {{ q }}\nA: ", "completion": "{{ a }}"})
    err = refused(cli, "infer", run, "--input", "{oops", "--dry-run")
    assert err.startswith("error[FTC770]: --input is not JSON: Expecting property name") and """--input '{"question": "..."}'""" in err
    err = refused(cli, "infer", run, "--input", "[1, 2]", "--dry-run")
    assert err.startswith("error[FTC771]: --input must be a JSON object") and "it gives an array" in err
    assert "give the prompt fields by name" in err
    err = refused(cli, "infer", run, "--input", '{"q": "x"}', "--json")
    assert err.startswith("error[FTC772]: --json is the output of --dry-run") and "add --dry-run, or leave out --json" in err
    err = refused(cli, "infer", run, "--input", '{"question": "x"}', "--dry-run")
    assert err.startswith("error[FTC775]: the request lacks q") and "give a JSON object with the fields q" in err
    for args in (["eval", run], ["preview", lock, "--split", "eval"]):  # split.eval is 0: no eval split
        err = refused(cli, *args)
        assert err.startswith("error[FTC773]: ") and "the plan has no eval split" in err and "set split.eval in the recipe" in err
    (tmp_path / "c.jsonl").write_text('{"row_id": "x", "completion": "y"}\n')
    err = refused(cli, "score", lock, "--completions", tmp_path / "c.jsonl", "--split", "train")
    assert err.startswith(f"error[FTC774]: {lock}: the plan declares no rewards to score with")
    assert "declare train.grpo.rewards in the recipe" in err
    Plan.load(lock).artifact("data", "train").unlink()  # an artifact removed after compile
    err = refused(cli, "preview", lock)
    assert err.startswith("error[FTC503]: artifact ") and "is missing or changed" in err and "ftc compile" in err


def test_infer_request_without_turns_for_a_chat_plan(cli, tmp_path):
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 2
    run, _ = _run_folder(cli, tmp_path, {"format": "messages", "messages": {"field": "messages"}}, chats,
                         "--set", "train.assistant_only_loss=false")
    err = refused(cli, "infer", run, "--input", '{"messages": []}', "--dry-run")
    assert err.startswith("error[FTC776]: the request gives no turns in 'messages'")
    assert """give {"messages": [{"role": "user", "content": "..."}]}""" in err
