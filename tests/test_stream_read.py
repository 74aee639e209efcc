"""Sources are read in bounded batches (issue 15, section 1), and that changes no result.

The same project is compiled twice: with the default batch sizes, and with every read unit
shrunk (blocks of 4 KiB, CSV parser blocks that a long cell does not fit in, JSON Lines and
Parquet batches of 7 rows). The lock and every artifact must be the same bytes. Then: Arrow
never holds a file whole while it is read, files that disagree on columns get the schema
``pa.concat_tables`` gives them, and a strict decode that fails across a block end names the
exact byte.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_recipe

TPL = {"format": "prompt_completion", "prompt": "{{ q }} {{ n or '' }} {{ late or '' }}", "completion": "{{ a }}"}


def _medical(shared: Path, nbytes: int) -> bytes:
    """The head of the real GB18030 medical CSV, cut at a line end (it holds multi-line records)."""
    data = (shared / "data/medical/IM_内科/内科5000-6000_part1.csv").read_bytes()
    return data[:nbytes].rsplit(b"\n", 1)[0] + b"\n"


def _project(folder: Path, shared: Path) -> Path:
    """One folder source of every format: GB18030 CSV (gzip), UTF-8 CSV with a BOM and a long cell,
    JSON Lines whose types change along the file, Parquet in many row groups."""
    d = folder / "data"
    d.mkdir(parents=True)
    (d / "a.csv.gz").write_bytes(gzip.compress(_medical(shared, 150_000), mtime=0))
    rows = "".join(f"café {i},\"naïve\nrésumé {i}\"\n" if i % 9 else f"q{i},{'长' * 6000}\n" for i in range(200))
    (d / "b.csv").write_bytes(b"\xef\xbb\xbf" + ("q,a\n" + rows).encode("utf-8"))
    lines = []
    for i in range(150):  # int, then float; a key first seen at row 100; alternatives row by row
        r = {"question": f"jq{i}"} if i % 3 else {"q": f"jq{i}", "question": ""}
        r.update(a=f"ja{i}", n=i if i < 60 else i + 0.5, **({"late": f"l{i}"} if i >= 100 else {}))
        lines.append(json.dumps(r, ensure_ascii=False))
    (d / "c.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    pq.write_table(pa.table({"q": [f"pq{i}" for i in range(90)], "answer": [f"pa{i}" for i in range(90)]}),
                   d / "d.parquet", row_group_size=11)
    (d / "jl").mkdir()
    (d / "c.jsonl").rename(d / "jl" / "c.jsonl")
    src = {"path": "data", "columns": {"q": ["q", "question", "ask"], "a": ["a", "answer"]}, "transforms": [{"strip": True}]}
    jl = {"path": "data/jl", "columns": {"q": ["q", "question"], "a": "a", "n": "n", "late": "late"},
          "transforms": [{"derive": {"late": "coalesce(late, '-')"}}]}
    return write_recipe(folder, {"sources": {"s": src, "j": jl}, "template": TPL,
                                 "transforms": [{"drop_empty": ["q", "a"]}], "split": {"eval": 0.1, "seed": 1}})


def _shrink(monkeypatch) -> None:
    from ftc.compiler import blob, readers

    monkeypatch.setattr(blob, "BLOCK", 4096)
    monkeypatch.setattr(readers, "CSV_BLOCK", 4096)  # smaller than the long cells: the file restarts
    monkeypatch.setattr(readers, "ROWS", 7)


def _compiled(cli, recipe: Path) -> tuple[bytes, dict[str, bytes]]:
    out = recipe.parent / "plan.lock"
    code, _, err = cli("compile", recipe, "-o", out)
    assert code == 0, err
    lock = json.loads(out.read_text(encoding="utf-8"))
    arts = {f"{kind}.{split}": (recipe.parent / a["path"]).read_bytes()
            for kind, group in lock["artifacts"].items() for split, a in group.items()}
    return out.read_bytes(), arts


def _batch_sizes(monkeypatch) -> list[int]:
    """The row counts of the batches appended to DuckDB from here on (filled as the compile reads)."""
    from ftc.compiler import ingest

    batches: list[int] = []
    add = ingest.SourceTable.add
    monkeypatch.setattr(ingest.SourceTable, "add", lambda self, t: (batches.append(t.num_rows), add(self, t))[1])
    return batches


def test_tiny_read_batches_give_the_same_lock_and_artifacts(cli, tmp_path, shared, monkeypatch):
    lock_a, arts_a = _compiled(cli, _project(tmp_path / "a", shared))
    _shrink(monkeypatch)
    batches = _batch_sizes(monkeypatch)
    lock_b, arts_b = _compiled(cli, _project(tmp_path / "b", shared))
    assert len(batches) > 40 and max(batches) < 400  # it did read in small batches
    assert lock_b == lock_a
    assert arts_b.keys() == arts_a.keys() and all(arts_b[k] == arts_a[k] for k in arts_a)
    sources = json.loads(lock_a)["sources"]
    files = {f["path"]: f for s in sources.values() for f in s["files"]}
    assert files["data/a.csv.gz"]["encoding"] == "gb18030" and files["data/a.csv.gz"]["compression"] == "gzip"
    assert files["data/b.csv"]["lines"]["multiline_records"] == 177  # the quoted values with a line break (i % 9)
    assert files["data/jl/c.jsonl"]["columns"]["q"] == "q (50 rows), question (100 rows)"
    assert files["data/b.csv"]["encoding"] == "utf-8-sig" and files["data/d.parquet"]["rows"] == 90


def test_arrow_never_holds_a_file_whole(cli, tmp_path, shared, monkeypatch):
    """What Arrow holds while a GB18030 file is read does not grow with the file: four times the
    rows add less than a quarter of the bigger file (holding it whole, as UTF-8 Arrow strings,
    would add more than the file)."""
    from ftc.compiler import ingest, readers

    monkeypatch.setattr(readers, "CSV_BLOCK", 1 << 14)  # pyarrow reads up to 32 blocks ahead
    held: list[int] = []
    add = ingest.SourceTable.add
    monkeypatch.setattr(ingest.SourceTable, "add", lambda self, t: (held.append(pa.total_allocated_bytes()), add(self, t))[1])
    data = _medical(shared, 1_700_000)
    peaks = []
    for copies in (1, 4):
        folder = tmp_path / str(copies)
        folder.mkdir()
        (folder / "big.csv").write_bytes(data + data.split(b"\n", 1)[1] * (copies - 1))
        recipe = write_recipe(folder, {"sources": {"s": {"path": "big.csv", "columns": {"q": "ask", "a": "answer"}}},
                                       "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}})
        held.clear()
        code, _, err = cli("compile", recipe, "-o", folder / "plan.lock")
        assert code == 0, err
        peaks.append(max(held))
    assert len(held) > 200
    assert peaks[1] - peaks[0] < len(data) * 4 / 4, (peaks, len(data))


def test_files_that_disagree_get_the_schema_concat_gives(cli, tmp_path):
    """A second file with one more column and a third with a number: read again under the unified
    schema, with nulls where a file has no such column (as ``pa.concat_tables`` would)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.csv").write_text("q,a\nx1,y1\n", encoding="utf-8")
    (tmp_path / "d/b.csv").write_text("q,a,extra\nx2,y2,e2\n", encoding="utf-8")
    (tmp_path / "d/c.jsonl").write_text('{"q": "x3", "a": "y3", "score": 3}\n', encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "d"}}, "split": {"eval": 0, "seed": 0},
                                     "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}})
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 0, err
    lock = json.loads((tmp_path / "plan.lock").read_text(encoding="utf-8"))
    data = pq.read_table(tmp_path / lock["artifacts"]["data"]["train"]["path"]).to_pylist()
    assert [r["prompt"] for r in data] == ["x1", "x2", "x3"]
    assert [f["rows"] for f in lock["sources"]["s"]["files"]] == [1, 1, 1]


@pytest.mark.parametrize("block", [4096, 4097, 4099])
def test_a_strict_decode_names_the_exact_byte_across_block_ends(cli, tmp_path, shared, monkeypatch, block):
    """GB18030 past the 1 MiB plausibility sample fails at a byte a block end may cut a character
    before: the offset is the byte's own. And UTF-8 with a defect, likewise."""
    from ftc.compiler import blob

    monkeypatch.setattr(blob, "BLOCK", block)
    head = _medical(shared, 1_200_000)
    data = head + "好".encode("gb18030") * 5 + b"\xff\xff,x\n"
    (tmp_path / "g.csv").write_bytes(data)
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "g.csv", "columns": {"q": "ask", "a": "answer"}}},
                                     "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}})
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    at = data.index(b"\xff\xff")
    assert code == 2 and "FTC201" in err and f"invalid byte at offset {at} " in err, err
    utf8 = ("q,a\n" + "".join(f"café {i},naïve {i}\n" for i in range(2000))).encode("utf-8")
    bad = utf8.index("café 1500".encode()) + 3  # inside "é": its second byte replaced
    (tmp_path / "g.csv").write_bytes(utf8[:bad + 1] + b"\x41" + utf8[bad + 2:])
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 2 and "FTC213" in err and f"byte offset {bad}" in err, err


# -- JSON arrays: element by element, with exactly what reading the document whole gave


def _json_text(n: int = 300) -> str:
    """An array whose elements vary in spelling (indented, escaped, compact), with a number ending
    most of them (a block end inside ``123`` must not give ``12``), an int column that turns float
    at row 60, a key first seen at row 100, and cells longer than a 4 KiB block."""
    parts = []
    for i in range(n):
        r = {"ask": f"jq{i} café \"{i}\"", "answer": ("长" * 3000 if i % 37 == 0 else f"ja{i}\n\u2028x"),
             **({"late": f"l{i}"} if i >= 100 else {}), "n": i * 1001 if i < 60 else i + 0.25}
        parts.append(json.dumps(r, ensure_ascii=i % 2 == 0, indent=2 if i % 5 == 0 else None))
    return "  [\n" + ",\n\t ".join(parts) + "\r\n]\n\n"


def _json_project(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "d.json").write_text(text, encoding="utf-8")
    src = {"path": "d.json", "columns": {"q": "ask", "a": "answer", "n": "n", "late": "late"},
           "transforms": [{"derive": {"late": "coalesce(late, '-')"}}]}
    return write_recipe(folder, {"sources": {"s": src}, "template": TPL, "split": {"eval": 0.1, "seed": 1}})


def _read_whole(monkeypatch) -> None:
    """Today's reading of a JSON array, the oracle: the document parsed whole."""
    from ftc.compiler import json_read, readers

    monkeypatch.setattr(readers, "read_json", json_read._json_whole)


def _never_whole(monkeypatch) -> None:
    from ftc.compiler import json_read

    def refuse(*a, **k):
        raise AssertionError("a valid JSON array was read whole")
    monkeypatch.setattr(json_read, "_json_whole", refuse)


def test_json_array_elements_match_json_loads_wherever_the_text_is_cut():
    """Fed in pieces of every small size (so a cut falls at every offset once), the elements
    are exactly ``json.loads``'s."""
    from ftc.compiler.json_read import array_elements

    text = _json_text(12) + " "
    want = json.loads(text)
    for size in (1, 2, 3, 5, 7, 64, 4096, len(text)):
        pieces = (text[i : i + size] for i in range(0, len(text), size))
        assert list(array_elements(pieces)) == want, size


def test_a_json_array_streams_and_gives_the_lock_reading_it_whole_gave(cli, tmp_path, monkeypatch):
    text = _json_text()
    with monkeypatch.context() as m:
        _read_whole(m)
        lock_a, arts_a = _compiled(cli, _json_project(tmp_path / "a", text))
    _never_whole(monkeypatch)
    lock_b, arts_b = _compiled(cli, _json_project(tmp_path / "b", text))
    _shrink(monkeypatch)
    batches = _batch_sizes(monkeypatch)
    lock_c, arts_c = _compiled(cli, _json_project(tmp_path / "c", text))
    assert len(batches) == -(-300 // 7)  # in batches of 7 objects
    assert lock_b == lock_a and lock_c == lock_a
    assert arts_b == arts_a and arts_c == arts_a
    files = json.loads(lock_a)["sources"]["s"]["files"]
    assert files[0]["rows"] == 300
    data = pq.read_table(tmp_path / "a" / json.loads(lock_a)["artifacts"]["data"]["train"]["path"])
    assert data.schema.field("n").type == pa.float64()  # the whole file's type, not the first batch's int64


_P = "".join(f'{{"q": "p{i}", "a": "r{i}"}}, ' for i in range(40))  # 40 good objects (1,020 characters) first


@pytest.mark.parametrize("text, words", [
    ('[P{"q": "x", "a": "y"},\n {"q": "x2", "a": }]', ["FTC202", "Expecting value at line 2, column 19"]),
    ('[P{"q": "x", "a": "y"}, 5]', ["FTC221", "element 41 of the array is a number (5), not an object"]),
    ('[P{"q": "x", "a": "y"}] x', ["FTC202", "Extra data at line 1, column 1044"]),
    ('[P{"q": "x", "a": "y"}, {"q": 1, "a": "z"}]', ["FTC202", "inconsistent value types across rows"]),
    ('[P{"q": "x", "a": "y"}', ["FTC202", "Expecting ',' delimiter"]),
    ('[P]', ["FTC202", "Expecting value at line 1, column 1022"]),  # a trailing comma
    (' [ ] ', ["FTC220", "an empty array"]),
    ('{"data": [P{"q": "x", "a": "y"}]}', None),  # the single list inside an object: rows, read whole
])
def test_a_json_array_that_cannot_stream_says_what_reading_it_whole_said(cli, tmp_path, monkeypatch, text, words):
    """Where the element-wise reading cannot vouch for the file, the file is read whole: the same
    error, word for word (or the same rows), also when the fault lies batches after the start."""
    text = text.replace("P", _P)
    results = []
    for whole in (True, False):
        with monkeypatch.context() as m:
            if whole:
                _read_whole(m)
            else:
                _shrink(m)
            folder = tmp_path / str(whole)
            folder.mkdir()
            (folder / "d.json").write_text(text, encoding="utf-8")
            recipe = write_recipe(folder, {"sources": {"s": {"path": "d.json"}}, "split": {"eval": 0, "seed": 0},
                                           "template": {"format": "prompt_completion", "prompt": "{{ q }}",
                                                        "completion": "{{ a }}"}})
            code, _, err = cli("compile", recipe, "-o", folder / "plan.lock")
            lock = (folder / "plan.lock").read_bytes() if code == 0 else None
            results.append((code, err.replace(str(folder), "F"), lock))
    assert results[1] == results[0]
    if words is None:
        assert results[0][0] == 0
    else:
        assert results[0][0] == 2 and all(w in results[0][1] for w in words), results[0][1]


def test_a_json_array_is_never_held_whole(tmp_path, monkeypatch):
    """Python's peak allocation while a 6 MB JSON array is read stays a small part of the file
    (parsed whole, the text alone is the file and its objects several times it)."""
    import tracemalloc

    from ftc.compiler import blob, readers
    from ftc.compiler.blob import Blob

    monkeypatch.setattr(blob, "BLOCK", 1 << 16)
    monkeypatch.setattr(readers, "ROWS", 1000)
    rows = [{"q": f"question {i} " + "x" * 100, "a": f"answer {i} " + "y" * 100, "n": i} for i in range(24_000)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with Blob.open(path) as data:
            res = readers.read_file(data, "json", "utf-8", None, "d.json", "s", "strict", "error")
            n = sum(t.num_rows for t in res.batches)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 24_000
    assert peak < size / 4, (peak, size)


def test_a_source_file_is_hashed_once_per_compile(cli, tmp_path, monkeypatch):
    """The cache key and the file's facts share one sha256 pass over each source file, and a file
    written again (same size) is hashed again, not taken from that memory."""
    import hashlib

    made: list[str] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: bytes = b""):
            self.h = real(data)

        def update(self, data) -> None:
            self.h.update(data)

        def hexdigest(self) -> str:
            made.append(self.h.hexdigest())
            return made[-1]

    (tmp_path / "d").mkdir()
    src = tmp_path / "d/a.csv"
    src.write_text("q,a\n" + "".join(f"x{i},y{i}\n" for i in range(50)), encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "d"}}, "split": {"eval": 0, "seed": 0},
                                     "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}})
    monkeypatch.setattr(hashlib, "sha256", Counting)
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 0, err
    sha = real(src.read_bytes()).hexdigest()
    assert made.count(sha) == 1
    assert json.loads((tmp_path / "plan.lock").read_text(encoding="utf-8"))["sources"]["s"]["files"][0]["sha256"] == sha
    src.write_text(src.read_text(encoding="utf-8").replace("x7,", "z7,"), encoding="utf-8")
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 0, err
    lock = json.loads((tmp_path / "plan.lock").read_text(encoding="utf-8"))
    assert lock["sources"]["s"]["files"][0]["sha256"] == real(src.read_bytes()).hexdigest() != sha


@pytest.mark.parametrize("name, compress", [("big.csv", False), ("big.jsonl.gz", True)])
def test_the_read_progress_moves_within_a_file(cli, tmp_path, monkeypatch, name, compress):
    """One file of a source: the read bar moves batch by batch (in the file's own bytes, a
    compressed file's too), never back, and ends at the file's size."""
    from ftc.compiler import blob, progress, readers, sources

    monkeypatch.setattr(blob, "BLOCK", 4096)
    monkeypatch.setattr(readers, "CSV_BLOCK", 4096)  # pyarrow reads up to 32 blocks ahead of its rows
    monkeypatch.setattr(readers, "ROWS", 500)
    monkeypatch.setattr(sources, "MIN_BYTES", 1)
    monkeypatch.setattr(progress, "_EVERY", 0.0)
    seen: list[tuple[int, str]] = []

    class Spy(progress.Progress):
        def update(self, n: int, note: str = "") -> None:
            super().update(n, note)
            if self.label == "read s":
                seen.append((self.done, note))
    monkeypatch.setattr(sources, "Progress", Spy)
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(20_000)]
    if name.endswith(".csv"):
        body = ("q,a\n" + "".join(f"{r['q']},{r['a']}\n" for r in rows)).encode("utf-8")
    else:
        body = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    (tmp_path / name).write_bytes(gzip.compress(body, mtime=0) if compress else body)
    size = (tmp_path / name).stat().st_size
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": name}}, "split": {"eval": 0, "seed": 0},
                                     "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}})
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock", "--progress")
    assert code == 0, err
    done = [d for d, note in seen]
    assert done == sorted(done) and len([d for d in done if d < size]) >= 5, seen
    assert {note for _, note in seen} == {"file 1/1"}
    assert seen[-1] == (size, "file 1/1")
    assert "read s:" in err and "/s, ETA" in err


def test_duckdb_lets_go_of_the_rows_before_tokenizing(cli, tmp_path, monkeypatch):
    """Once every row is rendered to a spill, the Normalizer's DuckDB (up to its 1 GB memory limit,
    what grew under the token stages between 0.6M and 1.2M rows) is closed: tokenizing and the
    token write run without it."""
    import duckdb

    from ftc.compiler import compile as compile_module

    made, seen = [], []
    init = compile_module.Normalizer.__init__
    monkeypatch.setattr(compile_module.Normalizer, "__init__", lambda self, *a, **k: (made.append(self), init(self, *a, **k))[1])
    tokenize = compile_module.tokenize_splits

    def spy(*a, **k):
        for norm in made:
            with pytest.raises(duckdb.ConnectionException):
                norm.con.execute("SELECT 1")
        seen.append(len(made))
        return tokenize(*a, **k)
    monkeypatch.setattr(compile_module, "tokenize_splits", spy)
    (tmp_path / "d.csv").write_text("q,a\n" + "".join(f"x{i},y{i}\n" for i in range(30)), encoding="utf-8")
    recipe = write_recipe(tmp_path, {"sources": {"s": {"path": "d.csv"}}, "split": {"eval": 0.2, "seed": 0},
                                     "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"}})
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock")
    assert code == 0, err
    assert seen == [1]
