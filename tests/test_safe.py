"""Issue 12, "unsafe": a recipe or lock from a pull request cannot run or read what it should not.

Each case was accepted before: a filter that runs a second statement (and redefines the
data), SQL that copies DuckDB's settings into the rows, an edited lock whose recomputed
plan_hash trains other settings, another model behind the same path, a corrupt cache entry
that compile never repaired, template and reward files from outside the project, and a
`ftc validate` that passed missing files, misspelled columns and bad SQL. Every case runs
the real CLI on a tiny recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import write_tiny_model_dir

from conftest import DEMO_TOKENIZER, ROOT, write_recipe

PC = {"format": "prompt_completion", "prompt": "Q: {{ q }}", "completion": " {{ a }}"}
ROWS = [{"q": "hello", "a": "world"}, {"q": "hi", "a": "there"}, {"q": "hey", "a": "you"}]


def recipe(tmp_path: Path, **extra) -> Path:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return write_recipe(tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": PC, **extra})


def refused(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 2 and "Traceback" not in err, (code, out, err)
    return err


# ---------------------------------------------------------------- 1. SQL: one row-wise expression

# Closes the normalizer's parentheses, redefines the source's view, and reopens them: before the
# check this compiled with exit 0, and the filter stage read 1 row where the source gave 3.
SECOND_STATEMENT = ("true)::BOOLEAN, false) LIMIT 0; CREATE OR REPLACE VIEW t1 AS SELECT 's:d.jsonl:1' AS row_id, "
                    "'pwned' AS q, 'pwned' AS a, 's' AS _source, 'd.jsonl' AS _file, 1::BIGINT AS _row, 0::BIGINT AS _ord; "
                    "SELECT count(*) FROM t1 WHERE coalesce((true")


@pytest.mark.parametrize("step, at, says", [
    ({"filter": SECOND_STATEMENT}, "transforms[0].filter", "SQL error in transforms[0].filter: Parser Error: syntax error"),
    ({"filter": "true; CREATE OR REPLACE VIEW t1 AS SELECT 1"}, "transforms[0].filter",
     "an expression is one SQL expression, and this is 2 SQL statements"),
    ({"derive": {"q": "q; DROP VIEW t1"}}, "transforms[0].derive.q", "an expression is one SQL expression, and this is 2 SQL statements"),
])
def test_a_second_statement_is_refused(cli, tmp_path, step, at, says):
    """Parsed on its own, an expression that closes the query around it does not parse."""
    r = recipe(tmp_path, transforms=[step])
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock", "-q")
    assert err.startswith(f"error[FTC3") and f"{r}: at {at}: {says}" in err, err
    assert not (tmp_path / "p.lock").exists()


@pytest.mark.parametrize("expr, what", [
    ("(SELECT value FROM duckdb_settings() WHERE name = 'home_directory')", "a subquery"),
    ("current_setting('home_directory')", "the function current_setting()"),
    ("getenv('HOME')", "the function getenv()"),
    ("(SELECT count(*) FROM read_csv('/etc/passwd'))", "a subquery"),
    ("version()", "the function version()"),
    ("random()::VARCHAR", "the function random()"),
    ("q || row_number() OVER ()", "a window function (OVER)"),
    ("unnest([q, q])", "the function unnest()"),
    ("main.lower(q)", "the qualified function main.lower"),
])
def test_sql_reaching_past_the_row_is_refused(cli, tmp_path, expr, what):
    r = recipe(tmp_path, transforms=[{"derive": {"a": expr}}])
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock", "-q")
    assert err.startswith(f"error[FTC321]: {r}: at transforms[0].derive.a: {what} is not allowed in a data expression")


@pytest.mark.parametrize("expr, what", [("q, a", "2 comma-separated expressions"),
                                        ("q FROM t1", "an expression followed by FROM"),
                                        ("true WHERE false", "an expression followed by where_clause"),
                                        ("q = 'hi' -- ", "an expression with an SQL comment"),
                                        ("q AS other", "an expression with an alias (AS other)")])
def test_more_than_one_expression_is_refused(cli, tmp_path, expr, what):
    r = recipe(tmp_path, transforms=[{"filter": expr}])
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock", "-q")
    assert err.startswith(f"error[FTC320]: {r}: at transforms[0].filter: an expression is one SQL expression, and this is {what}")


def test_ordinary_data_expressions_still_compile(cli, tmp_path):
    """The allow-list keeps what data expressions use: strings, CASE, casts, lists with lambdas, regexes."""
    steps = [{"derive": {"n": "length(q) + len(list_transform([q, a], lambda x: x || '!'))",
                         "a": "CASE WHEN regexp_matches(a, '^t') THEN upper(a) ELSE a END",
                         "k": "TRY_CAST(coalesce(NULL, '7') AS INTEGER)::VARCHAR"}},
             {"filter": "n > 3 AND q NOT IN ('x', 'y') AND a ILIKE '%E%'"}]
    r = recipe(tmp_path, transforms=steps)
    code, out, err = cli("compile", r, "-o", tmp_path / "p.lock", "-q")
    assert code == 0, err
    lock = json.loads((tmp_path / "p.lock").read_text())
    assert [s["completion"] for s in lock["samples"]["train"]] == [" THERE"]  # only "there" has an e


# ---------------------------------------------------------------- 2. the lock's settings are the recipe's

def compiled(cli, tmp_path: Path, *sets: str, **extra) -> Path:
    r = recipe(tmp_path, **extra)
    lock = tmp_path / "p.lock"
    args = [a for s in sets for a in ("--set", s)]
    code, _, err = cli("compile", r, "-o", lock, "-q", *args)
    assert code == 0, err
    return lock


def edit_lock(lock: Path, change) -> None:
    """What a hand edit that also recomputes the hash does: the lock stays well-formed and sealed."""
    from ftc.compiler.lock import write_lock

    doc = json.loads(lock.read_text(encoding="utf-8"))
    change(doc)
    write_lock(doc, lock)


def test_an_edited_lock_with_a_recomputed_hash_is_refused(cli, tmp_path):
    from ftc.runtime.verify import verify

    lock = compiled(cli, tmp_path, "train.learning_rate=0.005")
    verify(lock)  # the lock as compiled, with its recorded --set, is what the recipe resolves to
    edit_lock(lock, lambda d: d["settings"]["train"].update(learning_rate=0.05, num_train_epochs=9))
    err = refused(cli, "run", lock, "--output", tmp_path / "run")
    assert err.startswith(f"error[FTC509]: {lock}: the lock's settings are not what its recipe resolves to with the "
                          "lock's overrides (train.learning_rate, train.num_train_epochs differ)")
    assert "recompile with `ftc compile" in err and not (tmp_path / "run").exists()
    lock = compiled(cli, tmp_path)
    edit_lock(lock, lambda d: d["schedule"].update(warmup_steps=d["schedule"]["warmup_steps"] + 5))
    assert "(schedule.warmup_steps differ)" in refused(cli, "run", lock, "--output", tmp_path / "run")


def test_an_edited_override_or_reward_is_refused(cli, tmp_path):
    from ftc.errors import FtcError
    from ftc.runtime.verify import verify

    grpo = {"method": "grpo", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
            "grpo": {"num_generations": 2, "rewards": [{"kind": "regex", "pattern": "world"}]}}
    lock = compiled(cli, tmp_path, template={"format": "prompt", "prompt": "Q: {{ q }}"}, train=grpo)
    verify(lock)  # rewards resolved again over the artifact's columns give the lock's own
    edit_lock(lock, lambda d: d["settings"]["train"]["grpo"]["rewards"][0].update(pattern="."))
    with pytest.raises(FtcError) as e:
        verify(lock)
    assert e.value.code == "FTC509" and "train.grpo.rewards differ" in str(e.value)
    # the recorded overrides are re-applied, not trusted: a settings edit hidden as an override still differs
    lock = compiled(cli, tmp_path, "train.seed=1")
    edit_lock(lock, lambda d: d["settings"]["train"].update(seed=2))
    with pytest.raises(FtcError) as e:
        verify(lock)
    assert e.value.code == "FTC509" and "(train.seed differ)" in str(e.value)


# ---------------------------------------------------------------- 4. a corrupt cache entry is rebuilt

def test_a_corrupt_cached_artifact_is_rebuilt_by_compile_and_run(cli, tmp_path):
    from ftc.compiler.inputs import sha256_file
    from ftc.runtime.verify import verify

    lock = compiled(cli, tmp_path)
    arts = json.loads(lock.read_text())["artifacts"]
    for kind in ("data", "tokens"):
        path, sha = tmp_path / arts[kind]["train"]["path"], arts[kind]["train"]["sha256"]
        path.write_bytes(path.read_bytes()[:-9] + b"corrupted")  # same name, other bytes
        code, _, err = cli("compile", tmp_path / "recipe.json", "-o", lock, "-q")  # what FTC503's hint says
        assert code == 0, err
        assert sha256_file(path) == sha
        path.write_bytes(b"")
        plan = verify(lock)  # ftc run's own repair: rebuild from the matching sources
        assert sha256_file(path) == sha and plan.rebuilt


# ---------------------------------------------------------------- 3. the base model is fingerprinted

def test_another_model_behind_the_same_path_is_refused(cli, tmp_path):
    import shutil

    from ftc.errors import FtcError
    from ftc.runtime.verify import verify

    shutil.copytree(ROOT / "recipes" / "demo" / "model", tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\0" * 64)
    lock = compiled(cli, tmp_path, model={"name": "model", "tokenizer": str(DEMO_TOKENIZER)})
    recorded = json.loads(lock.read_text())["model"]
    assert recorded["kind"] == "local" and recorded["weights"] == {"model.safetensors": 64} and recorded["config.json"]
    verify(lock)
    original = (tmp_path / "model" / "config.json").read_bytes()
    config = json.loads(original)
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 7}))
    err = refused(cli, "run", lock, "--output", tmp_path / "run")
    assert err.startswith(f"error[FTC510]: model {tmp_path / 'model'} is not the one the plan was compiled with: "
                          "config.json changed")
    (tmp_path / "model" / "config.json").write_bytes(original)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\0" * 65)
    with pytest.raises(FtcError) as e:
        verify(lock)
    assert e.value.code == "FTC510" and str(e.value).splitlines()[0].endswith(": weights.model.safetensors changed")
    shutil.rmtree(tmp_path / "model")  # gone: its relative name must not be read as a hub id
    with pytest.raises(FtcError) as e:
        verify(lock)
    assert e.value.code == "FTC510" and str(e.value).splitlines()[0].endswith(": the folder is missing")


def test_a_hub_model_whose_cached_revision_moved_is_refused(cli, tmp_path, monkeypatch):
    """A hub id records the commit its revision resolved to in the local cache (no download)."""
    from huggingface_hub import constants

    from ftc.errors import FtcError
    from ftc.runtime.verify import verify

    cache = tmp_path / "hub"
    repo = cache / "models--org--base"

    def point_main_at(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    point_main_at("a" * 40)
    (tmp_path / "proj").mkdir()
    lock = compiled(cli, tmp_path / "proj", model={"name": "org/base", "tokenizer": str(DEMO_TOKENIZER)})
    assert json.loads(lock.read_text())["model"] == {"kind": "hub", "revision": None, "commit": "a" * 40}
    verify(lock)
    point_main_at("b" * 40)
    with pytest.raises(FtcError) as e:
        verify(lock)
    assert e.value.code == "FTC510" and str(e.value).splitlines()[0].endswith(": commit changed")


def test_a_model_compile_did_not_see_is_not_fingerprinted_and_not_refused(cli, tmp_path):
    """A plan compiled on a CPU box for a model folder that exists only on the training machine
    records nothing to compare (no folder, no cached snapshot), so the run is not refused there."""
    from ftc.runtime.verify import verify

    (tmp_path / "proj").mkdir()
    lock = compiled(cli, tmp_path / "proj", model={"name": str(tmp_path / "later"), "tokenizer": str(DEMO_TOKENIZER)})
    assert json.loads(lock.read_text())["model"] == {"kind": "hub", "revision": None, "commit": None}
    write_tiny_model_dir(tmp_path / "later")  # the folder appears where the run happens
    verify(lock)


# ---------------------------------------------------------------- 5. files a recipe reads lie in the project

@pytest.mark.parametrize("file", ["/etc/passwd", "../../../../../../../../etc/passwd", "sub/../../outside.jinja"])
def test_a_template_file_outside_the_project_is_refused(cli, tmp_path, file):
    (tmp_path / "outside.jinja").write_text("{{ q }}")
    proj = tmp_path / "proj"
    proj.mkdir()
    r = recipe(proj, template={**PC, "prompt": {"file": file}})
    err = refused(cli, "compile", r, "-o", proj / "p.lock", "-q")
    assert err.startswith(f"error[FTC156]: {r}: at template.prompt.file: template file {file!r} (")
    assert f"lies outside the project ({proj})" in err and "--root" in err and not (proj / "p.lock").exists()
    assert "root:" not in err and "root" not in (proj / "recipe.json").read_text()


def test_the_same_through_set_is_said_of_the_set(cli, tmp_path):
    r = recipe(tmp_path, template={"format": "messages", "messages": [{"role": "user", "content": "{{ q }}"},
                                                                      {"role": "assistant", "content": "{{ a }}"}]})
    arg = 'template.messages.0.content={"file": "/etc/passwd"}'
    err = refused(cli, "validate", r, "--set", arg)
    assert err.startswith(f"error[FTC156]: --set {arg}: at template.messages[0].content.file: "
                          "template file '/etc/passwd' (/etc/passwd) lies outside the project")
    r = recipe(tmp_path)
    arg = 'template.prompt={"file": "../../../../../../../../etc/passwd"}'
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock", "--set", arg)
    assert err.startswith(f"error[FTC156]: --set {arg}: at template.prompt.file: template file "
                          "'../../../../../../../../etc/passwd' (/etc/passwd) lies outside the project")


def test_a_symlink_out_of_the_project_and_a_reward_through_dotdot_are_refused(cli, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "t.jinja").symlink_to("/etc/hostname")
    r = recipe(proj, template={**PC, "prompt": {"file": "t.jinja"}})
    assert "error[FTC156]" in refused(cli, "validate", r)
    (tmp_path / "rewards.py").write_text("def r(completion):\n    return 1.0\n")
    grpo = {"method": "grpo", "grpo": {"allow_python": True, "rewards": [{"kind": "python", "function": "../rewards.py:r"}]}}
    r = recipe(proj, template={"format": "prompt", "prompt": "{{ q }}"}, train=grpo)
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[FTC156]: {r}: at train.grpo.rewards[0].function: python reward file '../rewards.py' "
                          f"({tmp_path / 'rewards.py'}) lies outside the project ({proj})")


def test_a_root_named_on_the_command_line_admits_its_files(cli, tmp_path):
    from ftc.compiler.project_files import project_roots
    from ftc.runtime.verify import verify

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "p.jinja").write_text("Q: {{ q }}")
    proj = tmp_path / "proj"
    proj.mkdir()
    r = recipe(proj, template={**PC, "prompt": {"file": "../shared/p.jinja"}})
    assert "error[FTC156]" in refused(cli, "validate", r)
    assert cli("validate", r, "--root", shared)[0] == 0
    assert "error[FTC157]: --root nope is not a folder" in refused(cli, "validate", r, "--root", "nope")
    code, _, err = cli("compile", r, "-o", proj / "p.lock", "-q", "--root", shared)
    assert code == 0, err
    with pytest.raises(Exception, match="FTC156"):  # ftc run reads the recipe again: the same rule
        verify(proj / "p.lock")
    with project_roots([shared]):  # what `ftc run --root DIR` sets
        verify(proj / "p.lock")


# ---------------------------------------------------------------- 6. validate checks what needs no full read

@pytest.mark.parametrize("change, code, says", [
    ({"sources": {"s": {"path": "missing.jsonl"}}}, "FTC200", "no files match 'missing.jsonl'"),
    ({"sources": {"s": {"path": "d.jsonl", "columns": {"q": "question"}}}}, "FTC203",
     "none of the columns ['question'] for field 'q' is present"),
    ({"template": {**PC, "completion": " {{ answer }}"}}, "FTC401", "'answer' is undefined"),
    ({"template": {**PC, "prompt": {"file": "nope.jinja"}}}, "FTC402", "cannot read template file nope.jinja"),
    ({"template": {**PC, "prompt": "{% if q %}"}}, "FTC400", "template template.prompt line 1"),
    ({"transforms": [{"filter": "lenght(q) > 3"}]}, "FTC300", "Scalar Function with name lenght does not exist"),
    ({"transforms": [{"filter": "q = = 'x'"}]}, "FTC300", "syntax error"),
    ({"transforms": [{"dedup": ["question"]}]}, "FTC301", "unknown field 'question'"),
    ({"transforms": [{"derive": {"n": "length(q)"}}, {"filter": "m > 1"}]}, "FTC300", 'column "m" not found'),
    ({"split": {"eval": 1, "key": ["qq"]}}, "FTC301", "unknown field 'qq'"),
])
def test_validate_refuses_what_compile_would(cli, tmp_path, change, code, says):
    r = recipe(tmp_path, **change)
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[{code}]") and says in err, err


def test_validate_checks_rewards_and_fields_after_derive(cli, tmp_path):
    (tmp_path / "rewards.py").write_text("def r(completion:\n    return 1\n")
    train = {"method": "grpo", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
             "grpo": {"num_generations": 2, "allow_python": True, "rewards": [{"kind": "python", "function": "rewards.py:r"}]}}
    prompt = {"format": "prompt", "prompt": "{{ q }} {{ n }}"}
    r = recipe(tmp_path, template=prompt, train=train, transforms=[{"derive": {"n": "length(q)"}}])
    assert refused(cli, "validate", r).startswith("error[FTC134]")  # the reward file is parsed, never run
    train["grpo"]["rewards"] = [{"kind": "regex", "pattern": "(unclosed"}]
    r = recipe(tmp_path, template=prompt, train=train, transforms=[{"derive": {"n": "length(q)"}}])
    assert refused(cli, "validate", r).startswith(f"error[FTC303]: {r}: at train.grpo.rewards[0].pattern")
    train["grpo"]["rewards"] = [{"kind": "answer", "pattern": "(\\d+)", "field": "n"}]  # n exists after the derive
    r = recipe(tmp_path, template=prompt, train=train, transforms=[{"derive": {"n": "length(q)::VARCHAR"}}])
    code, out, err = cli("validate", r)
    assert code == 0 and "checked on the first 3 rows of 1 files" in err, err


def test_validate_reads_only_the_head_of_a_large_file_and_a_filter_that_empties_it_is_not_an_error(cli, tmp_path):
    from ftc.compiler import check

    big = "".join(json.dumps({"q": f"q{i}", "a": "x" * 50}) + "\n" for i in range(5000))  # ~350 KB
    (tmp_path / "big.jsonl").write_text(big + '{"q": broken\n')  # a defect past the head: compile's to find
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "big.jsonl"}}, "template": PC,
                                "transforms": [{"filter": "q = 'q4999'"}]})
    code, out, err = cli("validate", r)
    assert code == 0, err
    n = int(err.split("the first ")[1].split(" rows")[0])
    assert 0 < n < 5000 and n * 60 < check.HEAD_BYTES * 1.1
    assert cli("compile", r, "-o", tmp_path / "p.lock", "-q")[0] == 2


@pytest.mark.parametrize("bom", [False, True])
def test_validate_reads_only_the_head_of_a_large_json_array(cli, tmp_path, monkeypatch, bom):
    """A JSON array (Alpaca's own format) is sampled from its head: the objects complete in it, read
    as compile reads them (a multi-byte character and the array's whitespace around the cut), and
    nothing else; a defect past the head is compile's."""
    from ftc.compiler import check

    rows = [{"q": f"问题 {i}", "a": "答" * 40} for i in range(4000)]
    body = "[\n  " + ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in rows) + ',\n  {"q": broken}\n]\n'
    (tmp_path / "big.json").write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "big.json"}}, "template": PC})
    whole, real = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: whole.append(self.name) or real(self))  # never big.json whole

    code, out, err = cli("validate", r)
    assert code == 0 and "big.json" not in whole, (err, whole)
    n = int(err.split("the first ")[1].split(" rows")[0])
    assert 0 < n < 4000 and n * len(json.dumps(rows[0], ensure_ascii=False).encode()) < check.HEAD_BYTES
    head = check._read_head(tmp_path / "big.json", {})[0]
    assert json.loads(head.decode("utf-8-sig")) == rows[:n]  # the file's own first records, nothing else
    monkeypatch.undo()
    assert cli("compile", r, "-o", tmp_path / "p.lock", "-q")[0] == 2


def test_in_a_git_work_tree_the_project_is_the_work_tree(cli, tmp_path):
    """The shipped recipes read ../templates/: in a checkout that is the project; past it is not."""
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    (proj / "templates").mkdir()
    (proj / "templates" / "p.jinja").write_text("Q: {{ q }}")
    (tmp_path / "outside.jinja").write_text("Q: {{ q }}")
    (proj / "recipes").mkdir()
    r = recipe(proj / "recipes", template={**PC, "prompt": {"file": "../templates/p.jinja"}})
    assert cli("validate", r)[0] == 0
    r = recipe(proj / "recipes", template={**PC, "prompt": {"file": "../../outside.jinja"}})
    assert f"lies outside the project ({proj})" in refused(cli, "validate", r)
