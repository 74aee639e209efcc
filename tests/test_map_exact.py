"""Column mapping, transforms and rendering never silently lose or invent data (issue 12).

Every case compiles a tiny recipe with the real compiler and checks what the artifacts
hold (or that the error names the file, the JSON path or the row).
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import TOKENIZER, write_recipe
from fixtures import write_jsonl

TPL = {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}
SHAREGPT = "data/sharegpt/glaive_toolcall_en_demo.json"
ROLES = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}


def compiled(cli, folder, recipe: dict, *extra: str, split: str = "train") -> tuple[dict, list[dict]]:
    """(the lock, the rows of the split's data artifact) of a compile that must succeed."""
    r = write_recipe(folder, recipe)
    out = folder / "plan.lock"
    code, _, err = cli("compile", r, "-o", out, *extra)
    assert code == 0, err
    lock = json.loads(out.read_text(encoding="utf-8"))
    return lock, pq.read_table(folder / lock["artifacts"]["data"][split]["path"]).to_pylist()


def refused(cli, folder, recipe: dict, code: str, *extra: str, command: str = "compile") -> str:
    """The error text of a compile (or validate) that must be refused with ``code``, cleanly."""
    r = write_recipe(folder, recipe)
    args = [command, r] + (["-o", folder / "x.lock"] if command == "compile" else []) + list(extra)
    rc, _, err = cli(*args)
    assert rc == 2 and f"error[{code}]" in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- 1. alternatives row by row

def test_alternatives_are_resolved_row_by_row_within_a_file(cli, tmp_path):
    rows = [{"q": f"q{i}", "answer": f"a{i}"} for i in range(1, 6)] + [{"q": f"q{i}", "response": f"r{i}"} for i in range(6, 11)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = {"sources": {"s": {"path": "d.jsonl", "columns": {"q": "q", "a": ["answer", "response"]}}}, "template": TPL}
    lock, data = compiled(cli, tmp_path, recipe)
    got = {r["row_id"]: r["completion"] for r in data}
    assert got == {f"s:d.jsonl:{i}": (f"a{i}" if i <= 5 else f"r{i}") for i in range(1, 11)}
    assert lock["sources"]["s"]["files"][0]["columns"]["a"] == "answer (5 rows), response (5 rows)"


def test_a_key_first_seen_in_a_later_row_is_read(cli, tmp_path):
    rows = [{"q": "1"}, {"q": "2"}, {"q": "3"}, {"q": "4", "note": "n4"}, {"q": "5", "note": "n5"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = {"sources": {"s": {"path": "d.jsonl"}}, "transforms": [{"drop_empty": ["note"]}],
              "template": {"format": "text", "text": "{{ q }}:{{ note }}"}}
    lock, data = compiled(cli, tmp_path, recipe)
    assert sorted(r["text"] for r in data) == ["4:n4", "5:n5"]
    assert {"stage": "transforms[0]: drop_empty", "rows_in": 5, "rows_out": 2, "dropped": {"empty note": 3}} in lock["stages"]


def test_alternatives_of_incompatible_types_are_refused(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "x"}, {"q": "2", "b": ["x", "y"]}])
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl", "columns": {"q": "q", "a": ["a", "b"]}}},
                                  "template": TPL}, "FTC307")
    assert "sources.s.columns.a" in err and "a: string" in err and "b: list<item: string>" in err


# ---------------------------------------------------------------- 3. path captures never shadow a column

def test_a_capture_named_like_a_file_column_is_an_error(cli, tmp_path, shared):
    med = tmp_path / "data" / "IM_内科"
    med.mkdir(parents=True)
    src = shared / "data/medical/IM_内科/内科5000-6000_part1.csv"
    med.joinpath("part1.csv").write_bytes(b"".join(src.read_bytes().splitlines(keepends=True)[:6]))
    recipe = {"sources": {"m": {"path": "data", "captures": "^(?P<department>[^/]+)/"}},
              "template": {"format": "prompt_completion", "prompt": "{{ department }} {{ ask }}", "completion": "{{ answer }}"}}
    err = refused(cli, tmp_path, recipe, "FTC209")
    assert "field 'department' is both the column 'department' and a path capture" in err
    assert "sources.m.captures" in err and "rename the capture group" in err
    # the explicit choice: the capture under its own name keeps the file's column as it is
    recipe["sources"]["m"]["captures"] = "^(?P<folder>[^/]+)/"
    recipe["template"]["prompt"] = "{{ folder }}|{{ department }}"
    _, data = compiled(cli, tmp_path, recipe)
    own = [line.split(",")[0] for line in med.joinpath("part1.csv").read_bytes().decode("gb18030").splitlines()[1:]]
    assert sorted(r["prompt"] for r in data) == sorted(f"IM_内科|{d}" for d in own)  # the CSV's own, beside the folder's
    assert "内科" not in own


def test_a_capture_regex_that_does_not_compile_or_captures_nothing(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "x"}])
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl", "captures": "(?P<x"}}, "template": TPL}, "FTC303")
    assert "sources.s.captures" in err and "missing >" in err
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl", "captures": "(d)"}}, "template": TPL}, "FTC309")
    assert "no named group" in err and "(?P<" in err


# ---------------------------------------------------------------- 5. ShareGPT roles

def test_role_hint_never_suggests_training_on_tool_output(cli, tmp_path, shared):
    roles = {"human": "user", "gpt": "assistant", "function_call": "assistant"}
    recipe = {"sources": {"g": {"path": str(shared / SHAREGPT), "columns": {"messages": {"from": "conversations", "roles": roles}}}},
              "template": {"format": "messages", "messages": {"field": "messages"}}}
    err = refused(cli, tmp_path, recipe, "FTC206")
    assert "role 'observation'" in err and '"observation": "tool"' in err and "never map it to assistant" in err
    del roles["function_call"]
    err = refused(cli, tmp_path, recipe, "FTC206")
    assert "role 'function_call'" in err and '"function_call": "assistant"' in err


def test_an_unknown_target_role_is_named_not_the_key_from(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"c": [{"from": "human", "value": "hi"}]}])
    recipe = {"sources": {"s": {"path": "d.jsonl", "columns": {"m": {"from": "c", "roles": {"human": "human"}}}}},
              "template": {"format": "messages", "messages": {"field": "m"}}}
    err = refused(cli, tmp_path, recipe, "FTC102", command="validate")
    assert "sources.s.columns.m.roles.human" in err and "system, user, assistant, tool" in err and "'from'" not in err


def test_a_null_turn_text_is_refused_with_its_row(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"c": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
                                       {"c": [{"from": "human", "value": None}, {"from": "gpt", "value": "yo"}]}])
    recipe = {"sources": {"s": {"path": "d.jsonl", "columns": {"m": {"from": "c", "roles": ROLES}}}},
              "template": {"format": "messages", "messages": {"field": "m"}}}
    err = refused(cli, tmp_path, recipe, "FTC310")
    assert "row 2" in err and "'value'" in err and "d.jsonl" in err


def test_a_null_turn_text_of_a_messages_field_is_refused_with_its_row(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"m": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                                       {"m": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}])
    recipe = {"sources": {"s": {"path": "d.jsonl"}}, "template": {"format": "messages", "messages": {"field": "m"}}}
    err = refused(cli, tmp_path, recipe, "FTC310")
    assert "row s:d.jsonl:2" in err and "column 'm'" in err and "'content'" in err


# ---------------------------------------------------------------- 2. tools reach the chat template

TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}"
    "<|im_end|>{% endgeneration %}\n{%- else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture
def tools_tokenizer(tmp_path, shared):
    """The real Qwen2.5 vocabulary with a chat template that renders tools (as Qwen2.5's own does)."""
    folder = tmp_path / "tok"
    shutil.copytree(TOKENIZER, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = TOOLS_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def test_sharegpt_tools_reach_the_chat_template(cli, tmp_path, shared, tools_tokenizer):
    from transformers import AutoTokenizer

    raw = json.loads((shared / SHAREGPT).read_text(encoding="utf-8"))[:12]
    raw[3]["tools"] = None  # a row without tools gets none
    (tmp_path / "g.json").write_text(json.dumps(raw), encoding="utf-8")
    recipe = {"sources": {"g": {"path": "g.json", "columns": {"messages": {"from": "conversations", "roles": ROLES}}}},
              "template": {"format": "messages", "messages": {"field": "messages"}},
              "model": {"name": "tiny", "tokenizer": str(tools_tokenizer), "max_seq_length": 4096},
              "train": {"packing": False}}
    lock, data = compiled(cli, tmp_path, recipe)
    assert lock["sources"]["g"]["files"][0]["columns"]["tools"] == "tools"
    tokens = pq.read_table(tmp_path / lock["artifacts"]["tokens"]["train"]["path"]).to_pylist()
    tok = AutoTokenizer.from_pretrained(tools_tokenizer)
    assert len(tokens) == len(raw)
    for row in tokens:
        r = raw[int(row["row_id"].rsplit(":", 1)[1]) - 1]
        chat = [{"role": ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]]
        want = tok.apply_chat_template(chat, tools=json.loads(r["tools"]) if r["tools"] else None, tokenize=True,
                                       return_dict=True, return_assistant_tokens_mask=True)
        assert row["input_ids"] == want["input_ids"]
        assert row["labels"] == [i if m else -100 for i, m in zip(want["input_ids"], want["assistant_masks"])]
        without = tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        assert (len(row["input_ids"]) > len(without)) == bool(r["tools"] and json.loads(r["tools"]))  # tools, where there are any
    # inference sees the tools too: a request's prompt is what the chat template makes of its turns and tools
    from ftc.compiler.request import prompt_of_request

    r = raw[0]
    chat = [{"role": ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]][:3]
    _, ids = prompt_of_request(lock, {"messages": chat, "tools": r["tools"]}, tok)
    assert ids == tok.apply_chat_template(chat, tools=json.loads(r["tools"]), add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"]


def test_tools_that_are_not_a_list_of_objects_are_refused(cli, tmp_path, tools_tokenizer):
    write_jsonl(tmp_path / "d.jsonl", [{"c": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "tools": "[{\"name\": "}])
    recipe = {"sources": {"s": {"path": "d.jsonl", "columns": {"m": {"from": "c", "roles": ROLES}}}},
              "template": {"format": "messages", "messages": {"field": "m"}},
              "model": {"name": "tiny", "tokenizer": str(tools_tokenizer)}}
    err = refused(cli, tmp_path, recipe, "FTC408")
    assert "row s:d.jsonl:1" in err and "not valid JSON" in err


# ---------------------------------------------------------------- 4. a null is not the text 'None'

NULLS = [{"q": "1", "a": "x", "i": "in"}, {"q": "2", "a": "y", "i": None}, {"q": "3", "a": "z", "i": None}]


@pytest.mark.parametrize("prompt", [
    "{{ q }} {{ i }}",  # lowered to SQL
    "{{ q }}{{ i | upper }}",  # Jinja, a filter that makes text of it
    "{{ q ~ i }}",  # Jinja, concatenation
])
def test_a_printed_null_is_refused_with_its_row_and_count(cli, tmp_path, prompt):
    write_jsonl(tmp_path / "d.jsonl", NULLS)
    recipe = {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": prompt}}
    err = refused(cli, tmp_path, recipe, "FTC405")
    assert "row s:d.jsonl:2" in err and "field 'i' is null" in err and "(2 rows print a null)" in err
    assert "drop_empty" in err


def test_a_null_in_a_chat_turn_template_is_refused(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", NULLS)
    recipe = {"sources": {"s": {"path": "d.jsonl"}},
              "template": {"format": "messages", "messages": [{"role": "user", "content": "{{ q }}"},
                                                               {"role": "assistant", "content": "{{ i }}"}]}}
    err = refused(cli, tmp_path, recipe, "FTC405")
    assert "template.messages[1].content" in err and "row s:d.jsonl:2" in err and "(2 rows" in err


@pytest.mark.parametrize("prompt, want", [
    ("{% if i %}[{{ i }}]{% endif %}{{ q }}", ["[in]1", "2", "3"]),  # SQL
    ("{{ i or '-' }}{{ q }}", ["in1", "-2", "-3"]),  # Jinja
    ("{{ i | default('-') }}{{ q }}", ["in1", "-2", "-3"]),
])
def test_a_null_the_template_handles_renders_as_declared(cli, tmp_path, prompt, want):
    write_jsonl(tmp_path / "d.jsonl", NULLS)
    _, data = compiled(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": prompt}})
    assert [r["prompt"] for r in sorted(data, key=lambda r: r["row_id"])] == want


# ---------------------------------------------------------------- 6. templates: empty, not UTF-8, nothing rendered

def test_empty_and_undecodable_templates_are_refused(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", NULLS)
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": ""}}, "FTC102",
                  command="validate")
    assert "template.prompt" in err
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": "  \n"}}, "FTC406")
    assert "template template.prompt is empty" in err
    (tmp_path / "empty.jinja").write_text("\n", encoding="utf-8")
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": {"file": "empty.jinja"}}},
                  "FTC406")
    assert "empty.jinja is empty" in err and "template.prompt" in err
    (tmp_path / "gb.jinja").write_bytes("问题：{{ q }}\n回答：".encode("gb18030"))
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": {"file": "gb.jinja"}}},
                  "FTC409")
    assert "gb.jinja is not UTF-8" in err and "offset 0 (line 1)" in err and "template.prompt.file" in err


def test_a_template_that_renders_nothing_on_every_row_is_refused(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "x", "e": ""}, {"q": "2", "a": "y", "e": " "}])
    for prompt in ("{{ e }}", "{% if x %}{{ q }}{% endif %}".replace("x", "e and false")):
        err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "template": {**TPL, "prompt": prompt}}, "FTC407")
        assert "renders to nothing" in err and "on all 2 rows" in err and "a, e, q" in err


def test_empty_field_names_are_refused_at_validate(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", NULLS)
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl", "columns": {"": "q", "a": "a"}}}, "template": TPL},
                  "FTC102", command="validate")
    assert "sources.s.columns" in err and "non-empty" in err
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "transforms": [{"derive": {"": "q"}}],
                                  "template": TPL}, "FTC102", command="validate")
    assert "transforms[0].derive" in err and "non-empty" in err


def test_a_derive_or_cast_that_fails_on_one_row_names_it(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "x", "n": "7"}, {"q": "2", "a": "y", "n": "seven"}])
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "transforms": [{"derive": {"k": "CAST(n AS INTEGER) + 1"}}],
                                  "template": TPL}, "FTC305")
    assert "row s:d.jsonl:2" in err and "transforms[0].derive.k" in err
    err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "transforms": [{"filter": "n::INTEGER > 1"}],
                                  "template": TPL}, "FTC305")
    assert "row s:d.jsonl:2" in err


def test_strip_names_a_field_that_is_not_text(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "x", "n": 7, "l": ["a"]}])
    for name, typ in (("n", "BIGINT"), ("l", "VARCHAR[]")):
        err = refused(cli, tmp_path, {"sources": {"s": {"path": "d.jsonl"}}, "transforms": [{"strip": ["q", name]}],
                                      "template": TPL}, "FTC304")
        assert f"{name!r} is {typ}" in err and "transforms[0].strip" in err


# ---------------------------------------------------------------- 7. every stage adds up

def _normalizer(n: int):
    import pyarrow as pa

    from ftc.compiler.normalize import Normalizer

    norm = Normalizer("recipe.json")
    table = pa.table({"q": [f"q{i}" for i in range(n)], "_source": ["s"] * n, "_file": ["d.jsonl"] * n,
                      "_row": list(range(1, n + 1)), "_ord": list(range(n))})
    return norm, norm.register(table)


def test_a_stage_that_makes_rows_is_an_internal_error():
    from ftc.errors import FtcError

    norm, t = _normalizer(4)
    t = norm.apply(t, {"filter": {"where": "q <> 'q0'"}}, "transforms[0]")
    assert norm.stages[-1].to_lock() == {"stage": "transforms[0]: filter", "rows_in": 4, "rows_out": 3,
                                         "dropped": {"filter: q <> 'q0'": 1}}
    with pytest.raises(FtcError) as err:  # a step whose query doubles its rows, counted as no drop
        norm._replace(t, f"SELECT * FROM {t} UNION ALL SELECT * FROM {t}", "transforms[1]: derive")
    assert err.value.code == "FTC308" and "transforms[1]: derive: 3 rows in, 6 rows out and 0 (none) counted as dropped" in str(err.value)


def test_rows_a_view_lost_after_its_stage_was_counted_are_caught_at_the_split():
    from ftc.errors import FtcError

    norm, t = _normalizer(10)
    t = norm.apply(t, {"filter": {"where": "q <> 'q0'"}}, "transforms[0]")
    assert norm.count(t) == 9
    # what a second statement smuggled into an expression did: redefine a step's view behind the accounting
    norm.con.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT * FROM t1 WHERE _row <= 2")
    with pytest.raises(FtcError) as err:
        norm.split(t, {"eval": 0.5, "seed": 0}, ["q"])
    assert err.value.code == "FTC308" and "split: 9 rows in, 2 rows out" in str(err.value)


@pytest.mark.parametrize("where, step", [
    ("sources.s.columns.row_id", None),
    ("transforms[0].derive._ord", {"derive": {"_ord": "0"}}),
    ("transforms[0].into", {"extract": {"from": "q", "pattern": "\\\\d", "into": "row_id"}}),
])
def test_a_field_may_not_overwrite_the_bookkeeping_columns(cli, tmp_path, where, step):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "1", "a": "x"}, {"q": "2", "a": "y"}])
    source = {"path": "d.jsonl"} if step else {"path": "d.jsonl", "columns": {"q": "q", "a": "a", "row_id": "q"}}
    recipe = {"sources": {"s": source}, "transforms": [step] if step else [], "template": TPL}
    err = refused(cli, tmp_path, recipe, "FTC311")
    assert where in err and "bookkeeping" in err


def test_an_empty_csv_cell_gives_way_to_the_next_alternative(cli, tmp_path):
    (tmp_path / "d.csv").write_text("question,ask,a\nq1,,x\n,q2,y\n,,z\n", encoding="utf-8")
    recipe = {"sources": {"s": {"path": "d.csv", "columns": {"q": ["question", "ask"], "a": "a"}}},
              "template": {**TPL, "prompt": "{{ q }}|"}}
    lock, data = compiled(cli, tmp_path, recipe)
    assert [r["prompt"] for r in sorted(data, key=lambda r: r["row_id"])] == ["q1|", "q2|", "|"]
    assert lock["sources"]["s"]["files"][0]["columns"]["q"] == "question (1 row), ask (1 row), none (1 row)"


def test_turns_whose_content_is_not_text_are_refused(cli, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"c": [{"from": "human", "value": {"text": "hi"}}]}])
    recipe = {"sources": {"s": {"path": "d.jsonl", "columns": {"m": {"from": "c", "roles": ROLES}}}},
              "template": {"format": "messages", "messages": {"field": "m"}}}
    err = refused(cli, tmp_path, recipe, "FTC312")
    assert "'value'" in err and "struct<text: string>" in err and "content_key" in err
