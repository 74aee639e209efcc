"""Compile batch by batch (issue 15, section 1): the same lock and artifacts as all at once.

Rendering takes the rows out of DuckDB ``cache.BATCH`` at a time (Jinja per batch); the token
stage tokenizes ``TOKEN_BATCH`` rows at a time into a spill file and gathers the packed order
``BUCKET`` rows at a time. Here both are made tiny, so a few hundred rows of real
compile cross many batch and bucket boundaries, and the result is compared byte for byte with
the same compile in one batch and one bucket (the in-memory path). The recipe is chosen so every
per-batch fact has to be summed right: drops by reason, truncations, a prompt/completion merge
warning (its row count, its "of", its first example), percentiles, packing.
"""

from __future__ import annotations

import json

import pytest

from conftest import DEMO_TOKENIZER, write_recipe
from fixtures import write_jsonl

ROWS = 300


@pytest.fixture
def project(tmp_path):
    rows = []
    for i in range(ROWS):
        q = f"question {i} " + "why " * (i % 13)
        a = "" if i % 41 == 0 else f"answer {i} " + "because " * (i % 29)  # some dropped empty
        rows.append({"q": q, "a": a, "n": i})
    write_jsonl(tmp_path / "d.jsonl", rows)
    return write_recipe(tmp_path, {
        "sources": {"s": {"path": "d.jsonl"}},
        "transforms": [{"drop_empty": ["q", "a"]}],
        "split": {"eval": 0.1, "seed": 0},
        # "Answer: " ends in a space: rows whose completion merges with it are counted in a warning
        # the prompt goes through Jinja (a filter is not lowered to SQL), batch by batch; the completion through SQL
        "template": {"format": "prompt_completion", "prompt": "Q: {{ q | upper }}\nAnswer: ", "completion": "{{ a }}"},
        "model": {"name": "tiny", "tokenizer": str(DEMO_TOKENIZER), "max_seq_length": 48},
        "train": {"packing": True, "completion_only_loss": True},
    })


def _compile(recipe, lock, *sets):
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe

    return compile_recipe(load_recipe(recipe, list(sets)), lock)


def _files(folder, lock_path) -> dict[str, bytes]:
    lock = json.loads(lock_path.read_text(encoding="utf-8"))
    return {f"{k}/{s}": (folder / a["path"]).read_bytes() for k, arts in lock["artifacts"].items() for s, a in arts.items()}


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_batches_and_buckets_give_the_bytes_of_one_batch(project, monkeypatch, overlong):
    import shutil

    from ftc.compiler import cache, tokens

    folder = project.parent
    monkeypatch.setattr(cache, "BATCH", 10**6)  # rows per batch out of DuckDB (render)
    monkeypatch.setattr(tokens, "TOKEN_BATCH", 10**9)
    monkeypatch.setattr(tokens, "BUCKET", 10**9)
    _compile(project, folder / "whole.lock", f"train.overlong={overlong}")
    whole = _files(folder, folder / "whole.lock")
    shutil.rmtree(folder / ".ftc")
    monkeypatch.setattr(cache, "BATCH", 11)
    monkeypatch.setattr(tokens, "TOKEN_BATCH", 16)
    monkeypatch.setattr(tokens, "BUCKET", 7)
    monkeypatch.setattr(tokens, "OPEN_BUCKETS", 3)  # several passes over the spill, 3 bucket files open at a time
    opened, open_now = [], []  # every bucket file, and the writers open at each opening
    real_stream = tokens.pa.ipc.new_stream

    class Counted:
        def __init__(self, path, schema):
            self.writer, self.path = real_stream(path, schema), path
            opened.append(path)
            live.add(path)
            open_now.append(len(live))

        def write_table(self, t):
            self.writer.write_table(t)

        def close(self):
            live.discard(self.path)
            self.writer.close()

    live: set = set()
    monkeypatch.setattr(tokens.pa.ipc, "new_stream", Counted)
    out = _compile(project, folder / "batched.lock", f"train.overlong={overlong}")
    assert out.clock.reused == []
    assert (folder / "batched.lock").read_bytes() == (folder / "whole.lock").read_bytes()
    assert _files(folder, folder / "batched.lock") == whole
    lock = json.loads((folder / "batched.lock").read_text(encoding="utf-8"))
    stats = lock["tokens"]["stats"]["train"]
    # the recipe really exercises what has to be summed across batches
    assert (stats["truncated"] if overlong == "truncate" else stats["dropped"]) > 0
    assert lock["tokens"]["packing"]["sequences"] > 1
    assert len(opened) > 3 * 2 and max(open_now) == 3  # more than two passes' worth of buckets, never over 3 open
    merged = [w for w in lock["tokens"].get("warnings", []) if w["split"] == "train"]
    assert merged and merged[0]["of"] == lock["stages"][-2]["rows_in"]  # "of" = every row of the split


def test_an_overlong_error_counts_every_batchs_rows(project, monkeypatch):
    from ftc.compiler import tokens
    from ftc.errors import FtcError

    counts = {}
    for batch in (10**9, 16):
        monkeypatch.setattr(tokens, "TOKEN_BATCH", batch)
        with pytest.raises(FtcError) as err:
            _compile(project, project.parent / "p.lock", "train.overlong=error")
        assert err.value.code == "FTC602"
        counts[batch] = (err.value.fields["row"], err.value.fields["count"])
    assert counts[16] == counts[10**9]
    assert counts[16][1] > 16  # more overlong rows than one batch holds


def test_progress_shows_rate_and_eta_when_asked(project, monkeypatch, capsys):
    from ftc.compiler import progress, tokens

    monkeypatch.setattr(progress, "MIN_ROWS", 1)
    monkeypatch.setattr(tokens, "TOKEN_BATCH", 64)
    from ftc.cli import main

    assert main(["compile", str(project), "-o", str(project.parent / "p.lock"), "--progress"]) == 0
    out = capsys.readouterr()
    assert "tokenize (train):" in out.err and "rows/s, ETA" in out.err and "write tokens (train):" in out.err
    assert "time: " in out.out and "tokenize " in out.out
    assert main(["compile", str(project), "-o", str(project.parent / "q.lock")]) == 0
    assert "rows/s" not in capsys.readouterr().err  # not a tty, not asked: no progress lines


def test_a_rendered_null_is_reported_for_the_whole_split_when_rendering_in_batches(tmp_path, monkeypatch):
    from ftc.compiler import cache
    from ftc.errors import FtcError

    write_jsonl(tmp_path / "d.jsonl", [{"q": f"q{i}", "a": None if i % 17 == 5 else f"a{i}"} for i in range(200)])
    recipe = write_recipe(tmp_path, {
        "sources": {"s": {"path": "d.jsonl"}},
        "split": {"eval": 0, "seed": 0},
        "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"},
    })
    seen = {}
    for batch in (10**6, 7):
        monkeypatch.setattr(cache, "BATCH", batch)
        with pytest.raises(FtcError) as err:
            _compile(recipe, tmp_path / "p.lock")
        seen[batch] = (err.value.code, err.value.fields)
    assert seen[7] == seen[10**6]
    assert seen[7][0] == "FTC405" and seen[7][1]["count"] == 12  # every null of the split, not a batch's
