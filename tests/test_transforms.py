"""DuckDB steps: every dropped row counted under its reason; bad SQL and regex explained."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from conftest import write_recipe

TPL = {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}


def setup(tmp_path, rows, transforms, **extra):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return write_recipe(tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "transforms": transforms, "template": TPL, **extra})


def run(cli, tmp_path, rows, transforms, **extra):
    r = setup(tmp_path, rows, transforms, **extra)
    out = tmp_path / "plan.lock"
    code, stdout, err = cli("compile", r, "-o", out, "-q")
    assert code == 0, err
    lock = json.loads(out.read_text(encoding="utf-8"))
    return lock, pq.read_table(tmp_path / lock["artifacts"]["data"]["train"]["path"]).to_pylist()


def fail(cli, tmp_path, rows, transforms, **extra) -> str:
    r = setup(tmp_path, rows, transforms, **extra)
    code, _, err = cli("compile", r, "-o", tmp_path / "plan.lock")
    assert code == 2, err
    assert "Traceback" not in err
    return err


ROWS = [
    {"q": "  hello\u3000", "a": "world\n"},
    {"q": "", "a": "x"},
    {"q": "y", "a": None},
    {"q": "hello", "a": "world"},
    {"q": "long question here", "a": "#### 1,234"},
]


def test_strip_drop_empty_dedup_counts(cli, tmp_path):
    lock, data = run(cli, tmp_path, ROWS, [{"strip": True}, {"drop_empty": ["q", "a"]}, {"dedup": ["q", "a"]}])
    st = {s["stage"]: s for s in lock["stages"]}
    assert st["transforms[1]: drop_empty"]["dropped"] == {"empty q": 1, "empty a": 1}
    assert st["transforms[2]: dedup"]["dropped"] == {"duplicate (q, a)": 1}
    assert [r["q"] for r in data] == ["hello", "long question here"]  # ideographic space stripped, order kept
    assert data[0]["a"] == "world"


def test_filter_derive_extract_length_limit(cli, tmp_path):
    steps = [
        {"drop_empty": ["q", "a"]},
        {"filter": {"where": "length(q) > 3", "name": "short questions"}},
        {"derive": {"q_len": "length(q)"}},
        {"extract": {"from": "a", "pattern": "####\\s*([0-9,]+)", "into": "n", "remove": ","}},
    ]
    lock, data = run(cli, tmp_path, ROWS, steps)
    st = {s["stage"]: s for s in lock["stages"]}
    assert st["transforms[1]: filter"]["dropped"] == {} and st["transforms[1]: filter"]["rows_out"] == 3
    assert st["transforms[3]: extract"]["dropped"] == {"no match for '####\\\\s*([0-9,]+)' in a": 2}
    assert data == [{"row_id": data[0]["row_id"], "q": "long question here", "a": "#### 1,234", "q_len": 18, "n": "1234",
                     "prompt": "long question here", "completion": "#### 1,234"}]
    lock, data = run(cli, tmp_path, ROWS, [{"drop_empty": ["q", "a"]}, {"length": {"field": "q", "min": 3, "max": 10}}, {"limit": 1}])
    st = {s["stage"]: s for s in lock["stages"]}
    assert st["transforms[1]: length"]["dropped"] == {"q longer than 10 characters": 1}
    assert len(data) == 1


def test_sample_is_deterministic_and_seeded(cli, tmp_path):
    rows = [{"q": f"q{i}", "a": "a"} for i in range(100)]
    picks = []
    for seed in (0, 0, 1):
        lock, data = run(cli, tmp_path, rows, [{"sample": {"n": 10, "seed": seed}}])
        picks.append([r["q"] for r in data])
    assert picks[0] == picks[1] and picks[0] != picks[2] and len(picks[0]) == 10
    assert picks[0] == sorted(picks[0], key=lambda q: int(q[1:]))  # original order kept
    st = next(s for s in lock["stages"] if s["stage"].endswith("sample"))
    assert st["dropped"] == {"sample: not selected": 90}


def test_mix_counts_and_weights(cli, tmp_path):
    for name, n in (("a", 100), ("b", 30)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"q": f"{name}{i}", "a": "x"}) + "\n" for i in range(n)))
    base = {"sources": {"a": {"path": "a.jsonl"}, "b": {"path": "b.jsonl"}}, "template": TPL}
    for mix, want in (({"a": {"count": 10}}, (10, 30)), ({"a": {"weight": 0.5}, "b": {"weight": 0.5}}, (30, 30)),
                      ({"a": {"weight": 3}, "b": {"weight": 1}}, (90, 30))):
        r = write_recipe(tmp_path, {**base, "mix": mix})
        code, _, err = cli("compile", r, "-o", tmp_path / "p.lock", "-q")
        assert code == 0, err
        lock = json.loads((tmp_path / "p.lock").read_text())
        data = pq.read_table(tmp_path / lock["artifacts"]["data"]["train"]["path"]).to_pylist()
        got = (sum(r["q"].startswith("a") for r in data), sum(r["q"].startswith("b") for r in data))
        assert got == want, mix
        assert sum(v for s in lock["stages"] for v in s["dropped"].values()) == 130 - sum(want)


def test_sql_error_shows_expression(cli, tmp_path):
    err = fail(cli, tmp_path, ROWS, [{"filter": "lenght(q) > 3"}])
    assert "FTC300" in err and "transforms[0]" in err and "expression: lenght(q) > 3" in err and "fields: q, a" in err


def test_filters_cannot_read_files_or_load_extensions(cli, tmp_path):
    # refused on the parse (tests/test_safe.py), before DuckDB's disabled external access is reached
    err = fail(cli, tmp_path, ROWS, [{"filter": "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0"}])
    assert "FTC321" in err and "a subquery is not allowed" in err
    err = fail(cli, tmp_path, ROWS, [{"derive": {"x": "(SELECT 1 FROM read_text('/etc/hostname'))"}}])
    assert "FTC321" in err and "a subquery is not allowed" in err


def test_unknown_field_and_bad_regex(cli, tmp_path):
    err = fail(cli, tmp_path, ROWS, [{"dedup": ["question"]}])
    assert "unknown field 'question'" in err and "transforms[0]" in err
    err = fail(cli, tmp_path, ROWS, [{"extract": {"from": "a", "pattern": "([0-9]+", "into": "n"}}])
    assert "FTC303" in err and "transforms[0].pattern" in err


def test_empty_result_names_the_stage(cli, tmp_path):
    err = fail(cli, tmp_path, ROWS, [{"filter": {"where": "q = 'nope'", "name": "nothing"}}])
    assert "FTC302" in err and "no rows left after transforms[0]: filter" in err and "filter: nothing: 5" in err


def test_mix_naming_an_unknown_source(cli, tmp_path):
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"q": f"{name}{i}", "a": "x"}) + "\n" for i in range(5)))
    r = write_recipe(tmp_path, {"sources": {"alpha": {"path": "alpha.jsonl"}, "beta": {"path": "beta.jsonl"}},
                                "mix": {"alpah": {"count": 3}}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "p.lock")
    assert code == 2 and "Traceback" not in err
    assert "FTC306" in err and "at mix.alpah" in err and "unknown source 'alpah'" in err
    assert "alpha, beta" in err and "did you mean 'alpha'?" in err


def test_strip_names_a_non_text_field(cli, tmp_path):
    rows = [{"q": " x ", "a": "y", "n": 1}, {"q": "z", "a": "w", "n": 2}]
    err = fail(cli, tmp_path, rows, [{"strip": ["q", "n"]}])
    assert "FTC304" in err and "at transforms[0].strip" in err and "'n' is BIGINT" in err and '"strip": true' in err
    lock, data = run(cli, tmp_path, rows, [{"strip": True}])  # strip: true skips the non-text fields
    assert [(r["q"], r["n"]) for r in data] == [("x", 1), ("z", 2)]


BAD_ROW = [{"q": "1", "a": "x"}, {"q": "2", "a": "x"}, {"q": "abc", "a": "x"}, {"q": "4", "a": "x"}]


def test_derive_failing_on_one_row_names_the_step_and_the_row(cli, tmp_path):
    # The derived column is read by nothing later: a lazy view would never evaluate it,
    # or fail at whatever step touched it first; the error is the derive's, with its row.
    err = fail(cli, tmp_path, BAD_ROW, [{"derive": {"n": "CAST(q AS INTEGER)"}}])
    assert "FTC305" in err and "at transforms[0].derive.n" in err and "derive of 'n' failed on row s:d.jsonl:3" in err
    assert "Could not convert string 'abc' to INT32" in err and "expression: CAST(q AS INTEGER)" in err
    assert "TRY_CAST" in err
    # after a filter, the row is still found (rows are numbered by file line, not by position)
    err = fail(cli, tmp_path, BAD_ROW, [{"filter": "q <> '2'"}, {"derive": {"n": "CAST(q AS INTEGER) + 1"}}, {"filter": "n > 0"}])
    assert "at transforms[1].derive.n" in err and "failed on row s:d.jsonl:3" in err
    lock, data = run(cli, tmp_path, BAD_ROW, [{"derive": {"n": "TRY_CAST(q AS INTEGER)"}}, {"filter": "n IS NOT NULL"}])
    assert [r["n"] for r in data] == [1, 2, 4]


def test_filter_failing_on_one_row_names_the_step_and_the_row(cli, tmp_path):
    err = fail(cli, tmp_path, BAD_ROW, [{"filter": {"where": "q::INTEGER > 1", "name": "big"}}])
    assert "FTC305" in err and "at transforms[0].filter" in err and "filter failed on row s:d.jsonl:3" in err
    assert "expression: q::INTEGER > 1" in err
    # a value that is not a truth value fails in the step's own cast, and is found too ('1' is true)
    err = fail(cli, tmp_path, BAD_ROW, [{"filter": "q"}])
    assert "FTC305" in err and "failed on row s:d.jsonl:2" in err and "to BOOL" in err
