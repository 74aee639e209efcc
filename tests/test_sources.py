"""Reading real-world files: encodings, folders and globs, captures, column alternatives, ShareGPT."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_recipe

TPL = {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}


def compile_rows(cli, tmp_path, recipe: dict, split="train", *extra):
    r = write_recipe(tmp_path, recipe)
    out = tmp_path / "plan.lock"
    code, stdout, err = cli("compile", r, "-o", out, *extra)
    assert code == 0, err
    lock = json.loads(out.read_text(encoding="utf-8"))
    return lock, pq.read_table(tmp_path / lock["artifacts"]["data"][split]["path"]).to_pylist(), stdout


def test_auto_encoding_prefers_utf8_then_gb18030(cli, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    text = "q,a\n高血压能吃党参吗？,可以。\n"
    (d / "1_utf8.csv").write_bytes(text.encode("utf-8"))
    (d / "2_bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (d / "3_gb.csv").write_bytes(text.encode("gb18030"))
    lock, data, _ = compile_rows(cli, tmp_path, {"sources": {"s": {"path": "data"}}, "template": TPL})
    encs = {f["path"]: f["encoding"] for f in lock["sources"]["s"]["files"]}
    assert encs == {"data/1_utf8.csv": "utf-8", "data/2_bom.csv": "utf-8-sig", "data/3_gb.csv": "gb18030"}
    assert [r["q"] for r in data] == ["高血压能吃党参吗？"] * 3  # the BOM is not part of the header or the text


def test_undecodable_file_names_file_and_offset(cli, tmp_path):
    (tmp_path / "bad.csv").write_bytes("q,a\n好,x\n".encode("gb18030") + b"\x81\x20\xff,y\n")
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "bad.csv", "encoding": ["utf-8", "gb18030"]}}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2
    assert "error[FTC201]" in err and "bad.csv" in err
    assert "gb18030: invalid byte at offset 9" in err and "utf-8: invalid byte at offset 4" in err
    assert "sources.s.encoding" in err and "Traceback" not in err


def test_glob_captures_and_column_alternatives(cli, tmp_path):
    for folder, header, rows in [
        ("IM_内科", "question,answer", [("头疼怎么办", "多休息")]),
        ("Surgical_外科", "问题,回答", [("骨折了", "去医院")]),
        ("Pediatric_儿科", "ask,response", [("孩子发烧", "物理降温")]),
    ]:
        (tmp_path / folder).mkdir()
        body = header + "\n" + "".join(f"{q},{a}\n" for q, a in rows)
        (tmp_path / folder / "part1.csv").write_bytes(body.encode("gb18030"))
    recipe = {
        "sources": {"med": {
            "path": "*_*/*.csv",
            "captures": "^(?P<dept_en>[A-Za-z]+)_(?P<department>[^/]+)/",
            "columns": {"q": ["question", "问题", "ask"], "a": ["answer", "回答", "response"]},
        }},
        "template": TPL,
    }
    lock, data, _ = compile_rows(cli, tmp_path, recipe)
    files = lock["sources"]["med"]["files"]
    assert [f["columns"]["q"] for f in files] == ["question", "ask", "问题"]  # sorted: IM_, Pediatric_, Surgical_
    assert sorted((r["department"], r["q"]) for r in data) == [("儿科", "孩子发烧"), ("内科", "头疼怎么办"), ("外科", "骨折了")]


def test_missing_column_lists_columns_and_closest(cli, tmp_path):
    (tmp_path / "d.csv").write_text("questoin,answer\nx,y\n", encoding="utf-8")
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "d.csv", "columns": {"q": ["question", "问题"], "a": "answer"}}}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2
    assert "FTC203" in err and "d.csv" in err and "sources.s.columns.q" in err
    assert "available columns: questoin, answer" in err and "did you mean 'questoin'" in err


def test_empty_glob_and_missing_file(cli, tmp_path):
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "nothing/*.csv"}}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2 and "FTC200" in err and "no files match 'nothing/*.csv'" in err and "sources.s.path" in err


def test_capture_must_match_every_file(cli, tmp_path):
    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "a.csv").write_text("q,a\nx,y\n")
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "misc", "captures": "^(?P<d>[A-Z]+)_"}}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2 and "FTC204" in err and "a.csv" in err


def test_malformed_csv_rows_are_counted_not_silent(cli, tmp_path):
    (tmp_path / "d.csv").write_text("q,a\nx,y\nbroken\nz,w\n", encoding="utf-8")
    lock, data, out = compile_rows(cli, tmp_path, {"sources": {"s": {"path": "d.csv"}}, "template": TPL})
    read = lock["stages"][0]
    assert read["rows_in"] == 3 and read["rows_out"] == 2
    assert read["dropped"] == {"malformed row (parser skipped it)": 1}
    assert "malformed row" in out


def test_jsonl_json_parquet_tsv(cli, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"q": "1", "a": "x"}\n\n{"q": "2", "a": "y"}\n')
    (tmp_path / "b.json").write_text('[{"q": "3", "a": "z"}]')
    pq.write_table(pa.table({"q": ["4"], "a": ["w"]}), tmp_path / "c.parquet")
    (tmp_path / "d.tsv").write_text("q\ta\n5\tv,with comma\n")
    recipe = {"sources": {k: {"path": f} for k, f in [("a", "a.jsonl"), ("b", "b.json"), ("c", "c.parquet"), ("d", "d.tsv")]},
              "template": TPL}
    lock, data, _ = compile_rows(cli, tmp_path, recipe)
    assert sorted(r["q"] for r in data) == ["1", "2", "3", "4", "5"]
    assert next(r for r in data if r["q"] == "5")["a"] == "v,with comma"
    assert [lock["sources"][k]["files"][0]["format"] for k in "abcd"] == ["jsonl", "json", "parquet", "tsv"]


def test_bad_jsonl_line_is_named(cli, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"q": "1", "a": "x"}\n{"q": oops}\n')
    r = write_recipe(tmp_path, {"sources": {"s": {"path": "a.jsonl"}}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2 and "FTC202" in err and "a.jsonl" in err and "line 2" in err


def test_sharegpt_roles_map_to_messages(cli, tmp_path, shared):
    src = shared / "data/sharegpt/glaive_toolcall_en_demo.json"
    recipe = {
        "sources": {"g": {"path": str(src), "columns": {"messages": {
            "from": "conversations",
            "roles": {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}}}}},
        "template": {"format": "messages", "messages": {"field": "messages"}},
    }
    lock, data, _ = compile_rows(cli, tmp_path, recipe)
    raw = json.loads(src.read_text(encoding="utf-8"))
    assert len(data) == len(raw)
    first = next(r for r in data if r["row_id"].endswith(":1"))
    roles = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
    assert first["messages"] == [{"role": roles[t["from"]], "content": t["value"]} for t in raw[0]["conversations"]]


def test_sharegpt_unmapped_role_is_an_error(cli, tmp_path, shared):
    src = shared / "data/sharegpt/glaive_toolcall_en_demo.json"
    recipe = {"sources": {"g": {"path": str(src), "columns": {"messages": {"from": "conversations", "roles": {"human": "user", "gpt": "assistant"}}}}},
              "template": {"format": "messages", "messages": {"field": "messages"}}}
    r = write_recipe(tmp_path, recipe)
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2 and "FTC206" in err and "role 'function_call'" in err and "row 1" in err and "add it to the role map" in err


def test_hf_dataset_source_with_local_file(cli, tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"q": str(i), "a": "x"}) + "\n" for i in range(5)))
    recipe = {"sources": {"h": {"hf": {"name": "json", "data_files": "d.jsonl", "split": "train"}}}, "template": TPL}
    lock, data, _ = compile_rows(cli, tmp_path, recipe)
    assert [r["q"] for r in data] == ["0", "1", "2", "3", "4"]
    facts = lock["sources"]["h"]
    assert facts["name"] == "json" and facts["split"] == "train" and facts["rows"] == 5
    assert facts["data_files"][0]["path"] == "d.jsonl" and len(facts["data_files"][0]["sha256"]) == 64


def test_split_is_independent_of_row_order(cli, tmp_path):
    rows = [{"q": f"question {i}", "a": "x"} for i in range(400)]
    evals = []
    for seed in (1, 2):
        random.Random(seed).shuffle(rows)
        d = tmp_path / f"p{seed}"
        d.mkdir()
        (d / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        lock, data, _ = compile_rows(cli, d, {"sources": {"s": {"path": "d.jsonl"}}, "split": {"eval": 0.1, "key": ["q"]}, "template": TPL}, "eval")
        evals.append(sorted(r["q"] for r in data))
    assert evals[0] == evals[1]
    assert 20 <= len(evals[0]) <= 60  # ~10% of 400
    lock, data, _ = compile_rows(cli, tmp_path / "p1", {"sources": {"s": {"path": "d.jsonl"}}, "split": {"eval": 25, "key": ["q"]}, "template": TPL}, "eval")
    assert len(data) == 25


def test_ambiguous_mapping_is_an_error(cli, tmp_path):
    (tmp_path / "IM_内科").mkdir()
    (tmp_path / "IM_内科" / "a.csv").write_text("department,q,a\n心血管科,x,y\n", encoding="utf-8")
    recipe = {"sources": {"s": {"path": "*_*/*.csv", "captures": "^[A-Z]+_(?P<department>[^/]+)/",
                                "columns": {"department": "department", "q": "q", "a": "a"}}}, "template": TPL}
    r = write_recipe(tmp_path, recipe)
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2 and "FTC209" in err and "sources.s.columns.department" in err
    assert "field 'department' is both the column 'department' and a path capture of sources.s.captures" in err
    assert "rename the capture group or the field" in err and "Traceback" not in err


def _source_error(cli, tmp_path, source: dict, template: dict = TPL) -> str:
    r = write_recipe(tmp_path, {"sources": {"s": source}, "template": template})
    code, _, err = cli("compile", r, "-o", tmp_path / "x.lock")
    assert code == 2 and "Traceback" not in err
    return err


def test_unknown_encoding_is_named_with_its_key(cli, tmp_path):
    (tmp_path / "d.csv").write_text("q,a\nx,y\n", encoding="utf-8")
    err = _source_error(cli, tmp_path, {"path": "d.csv", "encoding": ["utf-8", "utf-9"]})
    assert err.startswith("error[FTC208]: d.csv: at sources.s.encoding: unknown encoding 'utf-9'")
    assert "set sources.s.encoding to a Python codec name such as utf-8, gb18030" in err


def test_turns_column_that_is_not_a_list_of_turns(cli, tmp_path):
    chat = {"format": "messages", "messages": {"field": "messages"}}
    (tmp_path / "flat.jsonl").write_text(json.dumps({"conversations": "hello"}) + "\n", encoding="utf-8")
    err = _source_error(cli, tmp_path, {"path": "flat.jsonl", "columns": {"messages": {
        "from": "conversations", "roles": {"human": "user"}}}}, chat)
    assert err.startswith("error[FTC210]: flat.jsonl: at sources.s.columns.messages: column 'conversations' is string, not a list of turns")
    assert "ShareGPT 'conversations'" in err
    (tmp_path / "keys.jsonl").write_text(json.dumps({"conversations": [{"speaker": "human", "text": "hi"}]}) + "\n",
                                         encoding="utf-8")
    err = _source_error(cli, tmp_path, {"path": "keys.jsonl", "columns": {"messages": {
        "from": "conversations", "roles": {"human": "user"}}}}, chat)
    assert "error[FTC211]: keys.jsonl: at sources.s.columns.messages: the turns of column 'conversations' have no key 'from'" in err
    assert "(their keys: speaker, text)" in err and "set sources.s.columns.messages.role_key and content_key" in err
