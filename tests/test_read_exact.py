"""Source files are read exactly, or refused with the file, the byte offset or line, and a hint (issue 12).

Every case compiles a tiny recipe with the real compiler; rows are compared as values, and the
lock's file facts are checked for the evidence they record.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import write_recipe

TPL = {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}


def compile_ok(cli, tmp_path, src: dict):
    """(lock, train rows, summary) of a recipe with one source ``s``."""
    r = write_recipe(tmp_path, {"sources": {"s": src}, "template": TPL})
    out = tmp_path / "plan.lock"
    code, stdout, err = cli("compile", r, "-o", out)
    assert code == 0, err
    lock = json.loads(out.read_text(encoding="utf-8"))
    return lock, pq.read_table(tmp_path / lock["artifacts"]["data"]["train"]["path"]).to_pylist(), stdout


def compile_err(cli, tmp_path, src: dict) -> str:
    r = write_recipe(tmp_path, {"sources": {"s": src}, "template": TPL})
    code, _, err = cli("compile", r, "-o", tmp_path / "plan.lock")
    assert code == 2, err
    assert "Traceback" not in err
    return err


UTF8_ROWS = "q,a\n" + "".join(f"café {i},naïve résumé {i}\n" for i in range(20))


# ---------------------------------------------------------------- 1. encoding: auto


def test_utf8_with_a_cp1252_apostrophe_is_refused_not_read_as_gb18030(cli, tmp_path):
    data = UTF8_ROWS.encode("utf-8").replace(b"naive", b"x").replace("résumé 7".encode(), b"don\x92t 7")
    (tmp_path / "d.csv").write_bytes(data)
    err = compile_err(cli, tmp_path, {"path": "d.csv"})
    offset = data.index(b"\x92")
    assert err.startswith("error[FTC213]") and "d.csv" in err and "sources.s.encoding" in err
    assert f"byte offset {offset} (line 9)" in err and "don\\x92t 7" in err
    assert "encoding_errors" in err  # the hint names the declared way out


def test_utf8_whose_last_character_is_cut_is_refused(cli, tmp_path):
    data = (UTF8_ROWS + "end,中文").encode("utf-8")[:-1]
    (tmp_path / "d.csv").write_bytes(data)
    err = compile_err(cli, tmp_path, {"path": "d.csv"})
    assert "FTC213" in err and "last character is cut short" in err and f"byte offset {len(data) - 2}" in err


def test_ascii_with_a_stray_byte_is_not_gb18030_either(cli, tmp_path):
    (tmp_path / "d.csv").write_bytes(b"q,a\n" + b"don\x92t stop,yes\n" + b"plain,row\n" * 5)
    err = compile_err(cli, tmp_path, {"path": "d.csv"})
    assert "FTC214" in err and "byte offset 7, line 2" in err and "0% of its 1 non-ASCII" in err


def test_encoding_errors_replace_reads_and_counts(cli, tmp_path):
    data = UTF8_ROWS.encode("utf-8").replace("résumé 7".encode(), b"don\x92t 7")
    (tmp_path / "d.csv").write_bytes(data)
    lock, rows, out = compile_ok(cli, tmp_path, {"path": "d.csv", "encoding_errors": "replace"})
    (f,) = lock["sources"]["s"]["files"]
    assert f["encoding"] == "utf-8" and f["replaced_bytes"] == 1
    assert "warning: d.csv: 1 undecodable byte(s) read as U+FFFD" in out
    assert "UTF-8 with a defect" in f["encoding_evidence"]["rule"]
    assert {r["q"]: r["a"] for r in rows}["café 7"] == "naïve don\ufffdt 7"
    assert all(r["q"].startswith("café") for r in rows)  # never 'caf茅'


def test_declared_codec_with_replace(cli, tmp_path):
    (tmp_path / "d.csv").write_bytes("q,a\n好,x\n".encode("gb18030") + b"\x81\x20y,z\n")
    lock, rows, _ = compile_ok(cli, tmp_path, {"path": "d.csv", "encoding": "gb18030", "encoding_errors": "replace"})
    assert lock["sources"]["s"]["files"][0]["replaced_bytes"] >= 1
    assert sorted(r["q"] for r in rows) == sorted(["好", "\ufffd y"])


def test_real_gb18030_file_reads_with_its_evidence_in_the_lock(cli, tmp_path, shared):
    src = shared / "data/medical/IM_内科/内科5000-6000_part1.csv"
    lock, rows, _ = compile_ok(cli, tmp_path, {"path": str(src), "columns": {"q": "ask", "a": "answer"},
                                               "transforms": [{"limit": 50}]})
    (f,) = lock["sources"]["s"]["files"]
    ev = f["encoding_evidence"]
    assert f["encoding"] == "gb18030" and f["rows"] == 3822
    assert ev["utf8_invalid_bytes"] > ev["utf8_multibyte_chars"] > 0 and ev["gb2312_share"] > 0.99
    assert rows[0]["q"].startswith("我有高血压")


def test_plain_utf8_evidence(cli, tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbf" + UTF8_ROWS.encode())
    lock, rows, _ = compile_ok(cli, tmp_path, {"path": "d.csv"})
    (f,) = lock["sources"]["s"]["files"]
    assert f["encoding"] == "utf-8-sig" and f["encoding_evidence"] == {"rule": "strict UTF-8 after a BOM"}
    assert f["replaced_bytes"] == 0 and len(rows) == 20


# ---------------------------------------------------------------- 2. unbalanced quotes: lines against records


def _medical_slice(shared, rows: int, quote_in_row: int | None = None) -> bytes:
    """The first ``rows`` rows of the real GB18030 CSV (single-line records), with a quote opened in one row."""
    text = (shared / "data/medical/IM_内科/内科5000-6000_part1.csv").read_bytes().decode("gb18030")
    lines = text.split("\n")[: rows + 1]
    if quote_in_row is not None:
        dept, title, ask, answer = lines[quote_in_row].split(",", 3)
        lines[quote_in_row] = ",".join([dept, title, ask, '"' + answer])
    return ("\n".join(lines) + "\n").encode("gb18030")


def test_unbalanced_quote_in_real_gb18030_rows_is_refused_with_its_line(cli, tmp_path, shared):
    (tmp_path / "m.csv").write_bytes(_medical_slice(shared, 199, quote_in_row=100))
    err = compile_err(cli, tmp_path, {"path": "m.csv", "columns": {"q": "ask", "a": "answer"}})
    assert err.startswith("error[FTC215]") and "m.csv line 101" in err and "sources.s.on_malformed" in err
    assert "look like rows of this file" in err


def test_unbalanced_quote_under_warn_is_read_and_reported(cli, tmp_path, shared):
    (tmp_path / "m.csv").write_bytes(_medical_slice(shared, 199, quote_in_row=100))
    lock, rows, out = compile_ok(cli, tmp_path, {"path": "m.csv", "columns": {"q": "ask", "a": "answer"},
                                                 "on_malformed": "warn"})
    (f,) = lock["sources"]["s"]["files"]
    assert f["lines"]["physical_lines"] == 200 and f["lines"]["records"] < 200
    (sus,) = f["lines"]["suspect_records"]
    assert sus["line"] == 101 and sus["lines"] == 200 - f["lines"]["records"] + 1
    assert "m.csv line 101" in out and "suspect record" in out


def test_the_only_line_break_in_a_file_is_refused(cli, tmp_path):
    (tmp_path / "d.csv").write_text('q,a\n1,x\n2,"two\nlines"\n3,y\n4,z\n', encoding="utf-8")
    err = compile_err(cli, tmp_path, {"path": "d.csv"})
    assert "FTC215" in err and "d.csv line 3" in err and "only line break" in err


def test_real_multiline_values_read_as_they_are(cli, tmp_path, shared):
    src = shared / "data/medical/IM_内科/内科5000-6000_part1.csv"
    lock, _, _ = compile_ok(cli, tmp_path, {"path": str(src), "columns": {"q": "ask", "a": "answer"}, "transforms": [{"limit": 5}]})
    lines = lock["sources"]["s"]["files"][0]["lines"]
    assert lines == {"physical_lines": 3869, "records": 3823, "multiline_records": 7}


# ---------------------------------------------------------------- 3. links: each file once; 4. compressed files, unread files listed


def test_symlink_loop_reads_each_file_once_and_reports_the_loop(cli, tmp_path):
    d = tmp_path / "data" / "sub"
    d.mkdir(parents=True)
    (d / "a.csv").write_text("q,a\n1,x\n2,y\n", encoding="utf-8")
    (d / "back").symlink_to("..", target_is_directory=True)  # data/sub/back -> data
    (tmp_path / "data" / "alias.csv").symlink_to("sub/a.csv")
    for path in ("data", "data/**/*.csv"):
        lock, rows, out = compile_ok(cli, tmp_path, {"path": path})
        facts = lock["sources"]["s"]
        assert [f["path"] for f in facts["files"]] == ["data/sub/a.csv"] and sorted(r["q"] for r in rows) == ["1", "2"]
        reasons = {u["path"]: u["reason"] for u in facts["unread"]}
        assert reasons["data/alias.csv"] == "the same file as data/sub/a.csv, read once"
        assert "symlink loop" in reasons["data/sub/back"]
        assert "not read: data/sub/back (a symlink loop" in out


def test_compressed_files_are_read_and_unread_files_listed(cli, tmp_path):
    import bz2
    import gzip
    import lzma

    import pyarrow as pa

    d = tmp_path / "data"
    d.mkdir()
    (d / "part1.csv").write_text("q,a\n1,x\n", encoding="utf-8")
    (d / "part2.csv.gz").write_bytes(gzip.compress("q,a\n2,y\n".encode()))
    (d / "part3.jsonl.bz2").write_bytes(bz2.compress(b'{"q": "3", "a": "z"}\n'))
    (d / "part4.tsv.xz").write_bytes(lzma.compress("q\ta\n4\tw\n".encode()))
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as z:
        z.write("q,a\n5,v\n".encode())
    (d / "part5.csv.zst").write_bytes(sink.getvalue().to_pybytes())
    (d / "notes.txt").write_text("not data")
    (d / ".hidden.csv").write_text("q,a\nh,h\n")
    (d / ".git").mkdir()
    (d / ".git" / "x.csv").write_text("q,a\ng,g\n")
    lock, rows, out = compile_ok(cli, tmp_path, {"path": "data"})
    facts = lock["sources"]["s"]
    assert sorted(r["q"] for r in rows) == ["1", "2", "3", "4", "5"]
    assert [f["compression"] for f in facts["files"]] == [None, "gzip", "bz2", "xz", "zstd"]
    assert {u["path"]: u["reason"].split(" (")[0] for u in facts["unread"]} == {
        "data/.hidden.csv": "a hidden file", "data/.git": "a hidden folder, not walked", "data/notes.txt": "not a data file"}
    assert "not read: data/notes.txt (not a data file" in out


def test_a_broken_compressed_file_is_named(cli, tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(b"\x1f\x8b not really gzip")
    err = compile_err(cli, tmp_path, {"path": "d.csv.gz"})
    assert err.startswith("error[FTC216]") and "d.csv.gz" in err and "gzip" in err


# ---------------------------------------------------------------- 5. clear errors: file, JSON path, row or index, hint


@pytest.mark.parametrize("files, src, says", [
    ({"d.csv": b"q,a,q\n1,2,3\n"}, {"path": "d.csv"},
     ["error[FTC217]", "d.csv", "sources.s.path", "column 'q' twice (columns 1 and 3)"]),
    ({"d.csv": "q｜a\n1｜2\n".encode()}, {"path": "d.csv", "delimiter": "｜"},
     ["error[FTC218]", "sources.s.delimiter", "3 bytes in UTF-8"]),
    ({"d.csv": b"q,a\n1,2\n"}, {"path": "d.csv", "delimiter": "\n"}, ["error[FTC218]", "sources.s.delimiter", "a line break"]),
    ({"d.csv": b"q,a\n1,2\n"}, {"path": "d.csv", "encoding": "base64"},
     ["error[FTC219]", "d.csv", "sources.s.encoding", "'base64' is not a text encoding"]),
    ({"d.csv": b"q,a\n1,2\n"}, {"path": "d.csv", "encoding": ""}, ["error[FTC102]", "sources.s.encoding", "non-empty"]),
    ({"d.csv": b"q,a\n1,2\n"}, {"path": ""}, ["error[FTC102]", "sources.s.path", "non-empty"]),
    ({"d.jsonl": b""}, {"path": "d.jsonl"}, ["error[FTC220]", "d.jsonl has no rows: the file is empty", "sources.s.path"]),
    ({"d.jsonl": b"\n \n"}, {"path": "d.jsonl"}, ["error[FTC220]", "d.jsonl has no rows: only blank lines"]),
    ({"d.csv": b""}, {"path": "d.csv"}, ["error[FTC220]", "d.csv has no rows: the file is empty"]),
    ({"d.csv": b"q,a\n"}, {"path": "d.csv"}, ["error[FTC220]", "d.csv has no rows: a header and no rows"]),
    ({"d.json": b"[]"}, {"path": "d.json"}, ["error[FTC220]", "d.json has no rows: an empty array"]),
    ({"d.json": b'[{"q": "1", "a": "2"}, {"q": "3", "a": "4"}, 5]'}, {"path": "d.json"},
     ["error[FTC221]", "d.json", "element 2 of the array is a number (5), not an object"]),
    ({"d.csv": b"q,a,row_id\n1,2,3\n"}, {"path": "d.csv"}, ["error[FTC222]", "d.csv", "'row_id'", "at sources.s"]),
    ({"d.csv": b"q,a,x\n1,2,3\n"}, {"path": "d.csv", "columns": {"q": "q", "a": "a", "_source": "x"}},
     ["error[FTC311]", "sources.s.columns._source"]),  # a mapped field: the mapping's rule, not the reader's
    ({"d": {"d.jsonl": b'{"q": "1", "a": "2"}\n'}}, {"path": "d", "delimiter": ";"},
     ["error[FTC223]", "sources.s.delimiter", "d/d.jsonl is jsonl"]),
    ({"d.jsonl": b'{"q": "1", "a": "2"}\n'}, {"path": "d.jsonl", "delimiter": ";"},
     ["error[FTC224]", "sources.s.delimiter applies to csv, tsv files, and this source reads jsonl"]),
    ({"d.jsonl": b'{"q": "1", "a": "2"}\n'}, {"path": "*.jsonl", "on_malformed": "warn"},
     ["error[FTC224]", "sources.s.on_malformed"]),
    ({"d.parquet": b"PAR1"}, {"path": "d.parquet", "encoding_errors": "replace"}, ["error[FTC224]", "sources.s.encoding_errors"]),
])
def test_bad_inputs_are_named(cli, tmp_path, files, src, says):
    for name, data in files.items():
        if isinstance(data, dict):  # a folder
            (tmp_path / name).mkdir()
            for sub, body in data.items():
                (tmp_path / name / sub).write_bytes(body)
        else:
            (tmp_path / name).write_bytes(data)
    err = compile_err(cli, tmp_path, src)
    for s in says:
        assert s in err, (s, err)
    assert "hint:" in err


# ---------------------------------------------------------------- 6. valid input that must read


@pytest.mark.parametrize("size, codec", [(3 << 20, "utf-8"), (3 << 20, "gb18030"), (50 << 20, "utf-8")])
def test_a_cell_longer_than_a_parser_block_reads(cli, tmp_path, size, codec):
    big = "长" * (size // 3)
    (tmp_path / "d.csv").write_bytes(f'q,a,big\n1,x,"{big}"\n2,y,z\n'.encode(codec))
    lock, rows, _ = compile_ok(cli, tmp_path, {"path": "d.csv"})
    (f,) = lock["sources"]["s"]["files"]
    assert f["encoding"] == codec and f["rows"] == 2 and sorted(r["q"] for r in rows) == ["1", "2"]
    assert sorted(len(r["big"]) for r in rows) == [1, len(big)]  # the cell whole, not cut at a block


def test_jsonl_strings_may_hold_raw_line_separators(cli, tmp_path):
    rows_in = [{"q": "a\u2028b", "a": "c\u0085d"}, {"q": "e\u2029f\x1c", "a": "g\rh"}]
    (tmp_path / "d.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows_in).encode())
    assert "\u2028" in (tmp_path / "d.jsonl").read_text(encoding="utf-8")  # raw, not escaped
    lock, rows, _ = compile_ok(cli, tmp_path, {"path": "d.jsonl"})
    assert sorted((r["q"], r["a"]) for r in rows) == sorted((r["q"], r["a"]) for r in rows_in)


def test_a_declared_list_does_not_take_utf8_with_a_defect_as_its_next_codec(cli, tmp_path):
    data = UTF8_ROWS.encode("utf-8").replace("résumé 7".encode(), b"don\x92t 7")
    (tmp_path / "d.csv").write_bytes(data)
    err = compile_err(cli, tmp_path, {"path": "d.csv", "encoding": ["utf-8", "gb18030"]})
    offset = data.index(b"\x92")
    assert "FTC213" in err and f"byte offset {offset}" in err
    (tmp_path / "g.csv").write_bytes("q,a\n好,x\n".encode("gb18030"))  # GB18030 proper still takes the second codec
    lock, rows, _ = compile_ok(cli, tmp_path, {"path": "g.csv", "encoding": ["utf-8", "gb18030"]})
    assert lock["sources"]["s"]["files"][0]["encoding"] == "gb18030" and rows[0]["q"] == "好"


@pytest.mark.parametrize("pattern", ["*.csv", "**/*.csv", "d*/*.csv", "**/p?rt[12].csv", "d1/**", "[!d]*", "d[0-9]/**/*.jsonl"])
def test_globs_match_what_python_glob_matches(tmp_path, pattern):
    """Without links, the walker finds exactly glob.glob's files (the independent oracle)."""
    import glob as pyglob
    from pathlib import Path

    from ftc.compiler import discovery
    from ftc.compiler.recipe import Recipe

    for rel in ["a.csv", "part1.csv", "d1/part1.csv", "d1/part3.csv", "d1/x/part2.csv", "d1/x/y/z.jsonl",
                "d2/part2.csv", "d2/.h/part1.csv", ".hidden.csv", "d1/.dot.csv", "e/f.jsonl"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("q,a\n1,2\n")
    recipe = Recipe(path=tmp_path / "recipe.json", sha256="", overrides=(), data={})
    found = discovery.discover(recipe, "s", {"path": pattern})
    oracle = sorted(Path(p) for p in pyglob.glob(str(tmp_path / pattern), recursive=True) if Path(p).is_file())
    assert sorted(found.files) == oracle
