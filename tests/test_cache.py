"""Recompile only what changed (issue 15, section 2), with the real compiler on the shipped demo.

Each test compiles, changes one thing, recompiles, and checks two things: which stages the
cache gave back, and that the lock is the same bytes as a cold compile of the changed recipe
(the cache folder removed first), since reuse must never change a plan.
"""

from __future__ import annotations

import json
import shutil

from ftc.compiler.inputs import sha256_file

FULL = ["read", "normalize", "split", "render", "write", "tokenize", "pack"]


def _compile(recipe, lock, *sets):
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe

    return compile_recipe(load_recipe(recipe, list(sets)), lock)


def _cold(demo, lock, *sets) -> bytes:
    shutil.rmtree(demo / ".ftc", ignore_errors=True)
    out = _compile(demo / "demo.json", lock, *sets)
    assert out.clock.reused == []
    return lock.read_bytes()


def test_a_train_setting_reuses_everything_and_the_lock_is_a_cold_compiles(demo, cli):
    first = _compile(demo / "demo.json", demo / "a.lock")
    assert first.clock.reused == []
    again = _compile(demo / "demo.json", demo / "b.lock", "train.learning_rate=0.001")
    assert again.clock.reused == FULL
    assert set(again.clock.seconds) == {"fingerprint"}  # nothing read, rendered or tokenized
    reused = (demo / "b.lock").read_bytes()
    assert json.loads(reused)["settings"]["train"]["learning_rate"] == 0.001
    assert reused == _cold(demo, demo / "c.lock", "train.learning_rate=0.001")
    assert (demo / "b.lengths.png").read_bytes() == (demo / "c.lengths.png").read_bytes()
    # the tables are still there for whoever asks (read from the artifacts)
    assert again.tokens["train"].column("input_ids").to_pylist() == first.tokens["train"].column("input_ids").to_pylist()
    code, out, err = cli("compile", demo / "demo.json", "-o", demo / "d.lock", "--set", "train.num_train_epochs=2")
    assert code == 0, err
    assert "reused from the cache (inputs unchanged): read, normalize, split, render, write, tokenize, pack" in out
    assert "time: fingerprint" in out


def test_a_template_change_re_renders_without_re_reading(demo):
    _compile(demo / "demo.json", demo / "a.lock")
    changed = "template.completion= {{ answer }} (end)"
    out = _compile(demo / "demo.json", demo / "b.lock", changed)
    assert out.clock.reused == ["read", "normalize"]
    assert "render" in out.clock.seconds and "tokenize" in out.clock.seconds
    assert (demo / "b.lock").read_bytes() == _cold(demo, demo / "c.lock", changed)


def test_a_changed_source_or_tokenizer_setting_reuses_nothing_it_feeds(demo):
    _compile(demo / "demo.json", demo / "a.lock")
    data = demo / "demo" / "gsm8k_64.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:-1]), encoding="utf-8")  # one row fewer
    out = _compile(demo / "demo.json", demo / "b.lock")
    assert out.clock.reused == []
    assert json.loads((demo / "b.lock").read_text())["sources"]["gsm8k"]["rows"] == len(lines) - 1
    out = _compile(demo / "demo.json", demo / "c.lock", "model.max_seq_length=256")
    assert out.clock.reused == ["read", "normalize"]  # the rows are the same; tokens are not


def test_a_damaged_cache_file_is_rebuilt_not_trusted(demo):
    _compile(demo / "demo.json", demo / "a.lock")
    lock = json.loads((demo / "a.lock").read_text())
    tokens = demo / lock["artifacts"]["tokens"]["train"]["path"]
    tokens.write_bytes(b"not parquet")  # the right name, the wrong bytes
    out = _compile(demo / "demo.json", demo / "b.lock", "train.learning_rate=0.001")
    assert "tokenize" not in out.clock.reused  # the plan entry names a file that no longer matches
    assert sha256_file(tokens) == lock["artifacts"]["tokens"]["train"]["sha256"]  # rewritten, though its name existed
    normalized = next((demo / ".ftc" / "normalized").glob("*.parquet"))
    normalized.write_bytes(b"truncated")
    out = _compile(demo / "demo.json", demo / "c.lock", "template.completion= {{ answer }}.")
    assert out.clock.reused == []
    assert (demo / "c.lock").read_bytes() == _cold(demo, demo / "d.lock", "template.completion= {{ answer }}.")


def test_clean_removes_what_no_lock_uses(demo, cli):
    from ftc.runtime.verify import verify

    _compile(demo / "demo.json", demo / "a.lock")
    _compile(demo / "demo.json", demo / "b.lock", "template.completion= {{ answer }}!")
    old = json.loads((demo / "a.lock").read_text())["artifacts"]
    (demo / "a.lock").unlink()
    code, out, err = cli("clean", demo)
    assert code == 0, err
    assert "removed 1 cache entries and 5 files" in out  # a.lock's plan entry: its 2 data + 2 token files, its histogram
    for arts in old.values():
        for art in arts.values():
            assert not (demo / art["path"]).exists()
    assert verify(demo / "b.lock").rebuilt == ()  # what b.lock uses is all still there
    again = _compile(demo / "demo.json", demo / "c.lock", "template.completion= {{ answer }}!")
    assert again.clock.reused == FULL
    code, out, err = cli("clean", demo, "--all")
    assert code == 0, err
    assert not (demo / ".ftc").exists()
    code, _, err = cli("clean", demo / "nowhere")
    assert code == 2 and "FTC530" in err
