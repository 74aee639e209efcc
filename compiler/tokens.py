"""The token half of compile: tokenize each rendered split, plan the packing, write the token
artifacts, and the reports beside the lock (length histogram, data report).

Kept apart from ``compile.py`` (which wires the stages) so that a reused compile can write
the same reports from the cache's facts without tokenizing anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from ftc.compiler.normalize import Stage
from ftc.compiler.progress import Clock
from ftc.compiler.recipe import Recipe
from ftc.errors import FtcError


def tokenize_splits(recipe: Recipe, splits: dict[str, pa.Table], folder: Path, write: bool, clock: Clock) -> dict:
    """Tokenize every split, plan packing, write the token artifacts; the facts for the lock."""
    from ftc.compiler import pack
    from ftc.compiler.compile import _write_parquet, tokenizer_location
    from ftc.compiler.encode import tokenize
    from ftc.compiler.tokenizer import load_tokenizer

    model, train = recipe.data["model"], recipe.data["train"]
    with clock.stage("tokenize"):
        tok, info = load_tokenizer(tokenizer_location(recipe), model.get("tokenizer_revision"))
    fmt = recipe.data["template"]["format"]
    max_len = model["max_seq_length"]
    packing = train["packing"] and train["method"] == "sft"
    stats, arts, stages, lengths, pack_facts, tables, warnings = {}, {}, [], {}, {}, {}, []
    train_sequences = splits["train"].num_rows
    for split, table in splits.items():
        if table.num_rows == 0:
            continue
        with clock.stage("tokenize"):
            res = tokenize(table, fmt, tok, max_seq_length=max_len, overlong=train["overlong"],
                           completion_only_loss=train["completion_only_loss"],
                           assistant_only_loss=train["assistant_only_loss"])
        stages.append(Stage(f"tokenize ({split})", table.num_rows, res.table.num_rows, dict(res.dropped)).to_lock())
        warnings += [{"split": split, **w} for w in res.warnings]
        if res.table.num_rows == 0:
            raise FtcError("FTC302", file=str(recipe.path), stage=f"tokenize ({split})",
                           counts=", ".join(f"{k}: {v}" for k, v in res.dropped.items()))
        out = res.table
        lens = out.column("length").to_pylist()
        lengths[split] = lens
        if packing:
            with clock.stage("pack"):
                bins = pack.pack_bfd(lens, max_len)
                order, bin_of = [], []
                for b, rows in enumerate(bins):
                    order += rows
                    bin_of += [b] * len(rows)
                out = out.take(pa.array(order, pa.int64())).append_column("pack", pa.array(bin_of, pa.int32()))
            pack_facts[split] = {"sequences": len(bins), "capacity": max_len,
                                 "efficiency": round(pack.packing_efficiency(lens, bins, max_len), 6)}
            if split == "train":
                train_sequences = len(bins)
        stats[split] = res.stats
        tables[split] = out
        with clock.stage("write"):
            arts[split] = _write_parquet(out, folder, split, recipe.dir, write)
    lock = {
        "tokenizer": {"name": model["tokenizer"], "revision": info.revision, "fingerprint": info.fingerprint,
                      "eos_token": info.eos_token, "eos_token_id": info.eos_token_id, "pad_token_id": info.pad_token_id,
                      "vocab_size": info.vocab_size},
        "max_seq_length": max_len,
        "overlong": train["overlong"],
        "stats": stats,
        "packing": pack_facts.get("train"),
        "packing_by_split": pack_facts or None,
    }
    if warnings:  # only when there are any, so plans without one keep their hash
        lock["warnings"] = warnings
    return {"lock": lock, "artifacts": arts, "stages": stages, "lengths": lengths, "info": info, "tables": tables,
            "train_sequences": train_sequences}


def write_reports(lock: dict, info: Any, lock_path: Path, *, lengths: dict[str, list[int]] | None = None,
                  png: Path | None = None) -> bytes:
    """The length histogram (drawn from ``lengths``, or copied from ``png``) and the data report,
    beside the lock; the histogram's bytes, so the cache can keep them."""
    from ftc.compiler.views import data_report_md

    stem = lock_path.with_suffix("")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    histogram = Path(f"{stem}.lengths.png")
    tokens = lock["tokens"]
    if png is not None:
        shutil.copyfile(png, histogram)
    else:
        from ftc.compiler.views import length_histogram_png

        length_histogram_png(lengths or {}, histogram, tokens["max_seq_length"])
    dropped = {st["stage"][len("tokenize ("):-1]: st["dropped"] for st in lock["stages"] if st["stage"].startswith("tokenize (")}
    report = data_report_md(tokens["stats"], info, tokens["packing"], dropped_by_split=dropped, histogram=histogram.name,
                            warnings=tokens.get("warnings"))
    Path(f"{stem}.report.md").write_text(report, encoding="utf-8")
    return histogram.read_bytes()
