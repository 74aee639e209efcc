"""Compiling the same inputs twice gives the same bytes: artifacts, their sha256, the lock.

DuckDB runs a query on several threads as soon as its input has several Arrow batches
(one per file here, so a few thousand rows suffice), and then it may return rows in
any order unless the query orders them. Before the order was pinned, these inputs came
out scrambled on every run, and the Jinja-rendered prompt of one row sat next to the
fields of another.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq

from conftest import write_recipe

# One Arrow batch per file. On the old code 2 files of 100 rows came out scrambled in 7
# runs of 8, 4 files of 100 in 8 of 8; 8 of 250 leave a margin and take about 3 s.
FILES, ROWS = 8, 250


def _rows(f: int) -> list[dict]:
    out = []
    for i in range(ROWS):
        n = f * ROWS + i
        q = (" " if n % 7 == 0 else "") + f"question {n} " + "lorem ipsum " * (n % 5)  # some need strip
        a = "" if n % 50 == 0 else f"answer {n} " + "dolor " * (n % 3)  # some are dropped empty
        out.append({"q": q, "a": a, "n": n})
    return out


def _project(tmp_path):
    (tmp_path / "d").mkdir()
    for f in range(FILES):
        (tmp_path / "d" / f"f{f:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(f)), encoding="utf-8")
    return write_recipe(tmp_path, {
        "sources": {"s": {"path": "d"}},
        "transforms": [{"strip": True}, {"drop_empty": ["q", "a"]}],
        "split": {"eval": 0.1, "seed": 0},
        # the prompt goes through Jinja (a filter is not lowered to SQL), the completion through SQL
        "template": {"format": "prompt_completion", "prompt": "{{ q | upper }}", "completion": "{{ a }}"},
        "train": {"packing": True},
    })


def _source_order(row_id: str) -> tuple:
    _, file, row = row_id.rsplit(":", 2)
    return file, int(row)


def test_two_compiles_write_the_same_bytes_in_source_order(cli, tmp_path):
    recipe = _project(tmp_path)
    locks = []
    for k in (1, 2):
        code, _, err = cli("compile", recipe, "-o", tmp_path / f"p{k}.lock", "-q")
        assert code == 0, err
        locks.append((tmp_path / f"p{k}.lock").read_bytes())
    lock = json.loads(locks[0])
    assert lock == json.loads(locks[1])  # a readable diff first
    assert locks[0] == locks[1]
    for kind in ("data", "tokens"):
        for split, art in lock["artifacts"][kind].items():
            assert hashlib.sha256((tmp_path / art["path"]).read_bytes()).hexdigest() == art["sha256"], (kind, split)
    seen = 0
    for split in ("train", "eval"):
        data = pq.read_table(tmp_path / lock["artifacts"]["data"][split]["path"]).to_pylist()
        ids = [r["row_id"] for r in data]
        assert ids == sorted(ids, key=_source_order), split
        assert all(r["prompt"] == r["q"].upper() and r["completion"] == r["a"] for r in data), split
        seen += len(data)
    kept = sum(1 for f in range(FILES) for r in _rows(f) if r["a"])
    assert seen == kept and kept > 0.9 * FILES * ROWS


WRITER = r'''
import resource, sys
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from ftc.compiler.artifacts import write_parquet

rows, width = 300_000, 340  # about 115M ids in each of two list columns: a big token artifact

def tables():
    rng = np.random.default_rng(0)
    for start in range(0, rows, 8192):
        n = min(8192, rows - start)
        lens = rng.integers(50, width, size=n).astype(np.int32)
        ids = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)),
                                       pa.array(rng.integers(0, 150_000, size=int(lens.sum()), dtype=np.int32)))
        yield pa.table({"row_id": pa.array([str(start + i) for i in range(n)]), "input_ids": ids, "labels": ids,
                        "length": pa.array(lens)})

out = Path(sys.argv[1])
fact = write_parquet(tables(), out, "train", out, True, schema=next(tables()).schema)
meta = pq.ParquetFile(out / fact["path"]).metadata
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
'''


def test_a_big_artifact_is_written_in_bounded_memory_with_row_groups_cut_alike(tmp_path):
    """The token artifact's writer (artifacts.write_parquet) at a size where DuckDB with two threads read the
    stream far ahead (1.8 GiB peak here, 0.8 GiB with one thread) and could cut a row group a batch short under
    load (other bytes, another sha256 for the same rows): the peak stays bounded, and every row group but the
    last holds exactly 65,536 rows."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True, text=True, check=True)
    peak_mib, groups = proc.stdout.split(" ", 1)
    groups = json.loads(groups)
    assert sum(groups) == 300_000 and groups[:-1] == [65536] * (len(groups) - 1)
    assert int(peak_mib) < 1200, f"peak RSS {peak_mib} MiB writing the artifact"
