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

from conftest import write_recipe

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

SECOND_STATEMENT = "true; CREATE OR REPLACE VIEW t1 AS SELECT 'x:y:1' AS row_id, 'pwned' AS q, 'pwned' AS a, 0::BIGINT AS _ord"


@pytest.mark.parametrize("step, at", [({"filter": SECOND_STATEMENT}, "transforms[0].filter"),
                                      ({"derive": {"q": "q; DROP VIEW t1"}}, "transforms[0].derive.q")])
def test_a_second_statement_is_refused(cli, tmp_path, step, at):
    r = recipe(tmp_path, transforms=[step])
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock", "-q")
    assert err.startswith(f"error[FTC320]: {r}: at {at}: an expression is one SQL expression, and this is 2 SQL statements")
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
