"""The token half of compile: tokenize each rendered split, plan the packing, write the token
artifacts, and the reports beside the lock (length histogram, data report).

Kept apart from ``compile.py`` (which wires the stages) so that a reused compile can write
the same reports from the cache's facts without tokenizing anything.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.compiler import preference
from ftc.compiler.artifacts import Spill
from ftc.compiler.normalize import Stage
from ftc.compiler.progress import Clock
from ftc.compiler.recipe import Recipe
from ftc.errors import FtcError


TOKEN_BATCH = 16_384  # rows tokenized at once: bounds the id arrays in flight, keeps Rust batches large
BUCKET = 32_768  # packed output rows gathered at once when packing reorders the rows on disk
OPEN_BUCKETS = 256  # bucket files written at once: more buckets take more passes over the spill, not more file handles


@dataclass
class _Split:
    """One split's tokens: on disk in ``spill`` (an Arrow file, source order), and its facts."""

    spill: Path
    schema: pa.Schema
    rows: int
    lengths: np.ndarray  # int32, of every kept row, in source order
    stats: dict
    dropped: dict[str, int]
    warnings: list[dict]


def tokenize_splits(recipe: Recipe, splits: dict[str, Spill], folder: Path, write: bool, clock: Clock) -> dict:
    """Tokenize every split batch by batch, plan packing from the lengths alone, write the token
    artifacts as the rows come; the facts for the lock.

    The tokens of a split never sit in memory whole: each batch goes to a spill file, packing
    needs only the lengths, and the packed order is gathered from the spill bucket by bucket
    (``_packed``). The artifact is the same bytes as tokenizing the split at once, because the
    ids of a row do not depend on its batch and the writer re-cuts every stream into the same
    2,048-row batches.
    """
    from ftc.compiler import pack
    from ftc.compiler.artifacts import write_parquet
    from ftc.compiler.tokenizer import load_tokenizer

    model, train = recipe.data["model"], recipe.data["train"]
    with clock.stage("tokenize"):
        tok, info = load_tokenizer(tokenizer_location(recipe), model["tokenizer_revision"], model["trust_remote_code"])
    max_len = model["max_seq_length"]
    packing = train["packing"] and train["method"] == "sft"
    stats, arts, stages, lengths, pack_facts, tables, warnings = {}, {}, [], {}, {}, {}, []
    train_sequences = splits["train"].num_rows
    for split, table in splits.items():
        if table.num_rows == 0:
            continue
        with tempfile.TemporaryDirectory(prefix="ftc-tokens-") as tmp:
            res = _tokenize_split(recipe, table, tok, Path(tmp) / "rows.arrow", clock, split)
            stages.append(Stage(f"tokenize ({split})", table.num_rows, res.rows, dict(res.dropped)).to_lock())
            warnings += [{"split": split, **w} for w in res.warnings]
            if res.rows == 0:
                raise FtcError("FTC302", file=str(recipe.path), stage=f"tokenize ({split})",
                               counts=", ".join(f"{k}: {v}" for k, v in res.dropped.items()))
            lengths[split] = res.lengths  # int32, for the histogram: never a list (36 bytes a row, not 4)
            schema = res.schema
            if packing:
                with clock.stage("pack"):
                    bin_of = pack.assign_bins(res.lengths, max_len)
                sequences = int(bin_of.max()) + 1
                pack_facts[split] = {"sequences": sequences, "capacity": max_len,
                                     "efficiency": round(pack.packing_efficiency(res.lengths, sequences, max_len), 6)}
                if split == "train":
                    train_sequences = sequences
                parts = _packed(res, bin_of, Path(tmp))
                schema = schema.append(pa.field("pack", pa.int32()))
            else:
                parts = _unpacked(res.spill)
            kept: list[pa.Table] = []
            if not write:  # nothing goes to the cache: the caller gets the tables themselves
                parts = _keeping(parts, kept)
            progress = clock.progress(f"write tokens ({split})", res.rows)
            with clock.stage("write"):
                arts[split] = write_parquet(_counting(parts, progress), folder, split, recipe.dir, write, schema=schema)
            progress.close()
            tables[split] = pa.concat_tables(kept) if kept else schema.empty_table()
        stats[split] = res.stats
    if write:
        from ftc.compiler.cache import lazy

        tables = lazy(recipe.dir, arts, tuple(arts))
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


def _tokenize_split(recipe: Recipe, table: Spill, tok: Any, spill: Path, clock: Clock, split: str) -> _Split:
    """``encode.tokenize`` batch by batch into ``spill``; stats, drops and warnings summed as the
    whole split would give them (a warning's example is its first row, so the first batch's)."""
    from ftc.compiler.encode import tokenize
    from ftc.compiler.rows import merged_stats

    train, fmt = recipe.data["train"], recipe.data["template"]["format"]
    opts = dict(max_seq_length=recipe.data["model"]["max_seq_length"], overlong=train["overlong"],
                completion_only_loss=train["completion_only_loss"], assistant_only_loss=train["assistant_only_loss"])
    parts, dropped, first, rows_of, checked, lens = [], {}, {}, {}, {}, []
    writer, rows = None, 0
    progress = clock.progress(f"tokenize ({split})", table.num_rows)
    # preference rows keep per-side stats that are not summed here yet: one batch, as before
    size = max(table.num_rows, 1) if fmt in preference.OUTPUTS else TOKEN_BATCH
    try:
        for k, batch in enumerate(table.tables(size)):
            lo = k * size
            with clock.stage("tokenize"):
                try:
                    if fmt in preference.OUTPUTS:  # prompt / chosen / rejected ids, as TRL's preference preparation makes them
                        res = preference.tokenize_preference(batch, fmt, tok, max_seq_length=opts["max_seq_length"],
                                                             overlong=opts["overlong"],
                                                             has_prompt="prompt" in recipe.data["template"])
                    else:
                        res = tokenize(batch, fmt, tok, **opts)
                except FtcError as e:
                    raise _whole_split(e, table, lo, fmt, tok, opts) from None
            if writer is None:
                writer = pa.ipc.new_file(str(spill), res.table.schema)
            writer.write_table(res.table)
            rows += res.table.num_rows
            lens.append(res.table.column("length").to_numpy())
            parts.append(res.stats)
            for k, v in res.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
            for k, v in getattr(res, "checked", {}).items():
                checked[k] = checked.get(k, 0) + v
            for w in res.warnings:
                first.setdefault(w["kind"], w)
                rows_of[w["kind"]] = rows_of.get(w["kind"], 0) + w["rows"]
            progress.update(batch.num_rows)
    finally:
        if writer is not None:
            writer.close()
    progress.close()
    all_lens = np.concatenate(lens) if lens else np.zeros(0, np.int32)
    warnings = [{**w, "rows": rows_of[k], "of": checked.get(k, w["of"])} for k, w in first.items()]
    stats = parts[0] if len(parts) == 1 else merged_stats(parts, all_lens)  # one batch: its own stats, whatever their keys
    return _Split(spill, _schema_of(spill), rows, all_lens, stats, dropped, warnings)


def _schema_of(spill: Path) -> pa.Schema:
    with pa.OSFile(str(spill)) as f:
        return pa.ipc.open_file(f).schema


def _whole_split(err: FtcError, table: Spill, lo: int, fmt: str, tok: Any, opts: dict) -> FtcError:
    """A batch's error as the whole split gives it: the counts over every row, not the batch's."""
    from ftc.compiler.encode import tokenize

    if fmt in preference.OUTPUTS:  # tokenized in one batch: its counts are the split's
        return err
    if err.code == "FTC604":  # a null text: count them in the whole column
        return FtcError("FTC604", row=err.fields["row"], column=err.fields["column"],
                        count=table.null_count(err.fields["column"]))
    if err.code == "FTC602":  # an overlong row under overlong=error: count the later batches' too
        count, reason = err.fields["count"], f"longer than max_seq_length ({opts['max_seq_length']})"
        for k, batch in enumerate(table.tables(TOKEN_BATCH)):
            if k * TOKEN_BATCH <= lo:
                continue
            try:
                count += tokenize(batch, fmt, tok, **{**opts, "overlong": "drop"}).dropped.get(reason, 0)
            except FtcError:
                continue  # a later batch's own error: the first one is the one to report
        return FtcError("FTC602", row=err.fields["row"], tokens=err.fields["tokens"],
                        max_seq_length=err.fields["max_seq_length"], count=count)
    return err


def _unpacked(spill: Path) -> Iterator[pa.Table]:
    with pa.OSFile(str(spill)) as f:
        reader = pa.ipc.open_file(f)
        for k in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(k)])


def _packed(res: _Split, bin_of: np.ndarray, tmp: Path) -> Iterator[pa.Table]:
    """The spilled rows in packed order (bin after bin) with their ``pack`` number, a bucket at a time.

    Each row's output position is known from its bin (``bin_of``, a bin number per row), so a
    pass over the spill sends every row to the bucket of its position (a file per ``BUCKET``
    positions), and each bucket is then read alone, put in position order and handed on: one
    bucket in memory. A pass writes at most ``OPEN_BUCKETS`` bucket files (one file handle each),
    so past ``BUCKET * OPEN_BUCKETS`` rows (8.4M) the spill is read once per group of buckets,
    and a group's buckets are handed on before the next group is written. Per row only two
    int32 arrays are held (the position of each row, the bin at each position), not the bins as
    lists.
    """
    from ftc.compiler.pack import packed_order

    n = res.rows
    order = packed_order(bin_of)
    pos = np.empty(n, order.dtype)
    pos[order] = np.arange(n, dtype=order.dtype)
    del order
    bin_at = np.sort(bin_of)  # the bin of each output position: bins are contiguous, in bin order
    schema = res.schema.append(pa.field("_pos", pa.from_numpy_dtype(pos.dtype)))
    buckets = -(-n // BUCKET)
    for first in range(0, buckets, OPEN_BUCKETS):
        group = range(first, min(first + OPEN_BUCKETS, buckets))
        _scatter(res.spill, pos, group, schema, tmp)
        for j in group:
            path = tmp / f"bucket-{j}.arrow"
            with pa.OSFile(str(path)) as f:
                t = pa.ipc.open_stream(f).read_all()
            path.unlink()
            t = t.take(pc.sort_indices(t.column("_pos"))).drop_columns(["_pos"])
            yield t.append_column("pack", pa.array(bin_at[j * BUCKET : j * BUCKET + t.num_rows], pa.int32()))


def _scatter(spill: Path, pos: np.ndarray, group: range, schema: pa.Schema, tmp: Path) -> None:
    """One pass over the spill: every row whose output position (``pos``) falls in ``group``'s
    buckets goes, with its ``_pos``, to its bucket's file; one file open per bucket of the group."""
    lo, hi = group.start * BUCKET, group.stop * BUCKET
    writers: dict[int, Any] = {}
    start = 0
    try:
        for t in _unpacked(spill):
            p = pos[start : start + t.num_rows]
            start += t.num_rows
            here = np.flatnonzero((p >= lo) & (p < hi))
            if not len(here):
                continue
            if len(here) < len(p):  # one pass (up to 8.4M rows) takes every row: no copy
                p, t = p[here], t.take(pa.array(here))
            t = t.append_column("_pos", pa.array(p))
            bucket = p // BUCKET
            for j in np.unique(bucket):
                if j not in writers:
                    writers[j] = pa.ipc.new_stream(str(tmp / f"bucket-{j}.arrow"), schema)
                writers[j].write_table(t.take(pa.array(np.flatnonzero(bucket == j))))
    finally:
        for w in writers.values():
            w.close()


def _keeping(parts: Iterable[pa.Table], kept: list[pa.Table]) -> Iterator[pa.Table]:
    for t in parts:
        kept.append(t)
        yield t


def _counting(parts: Iterable[pa.Table], progress: Any) -> Iterator[pa.Table]:
    for t in parts:
        yield t
        progress.update(t.num_rows)


def tokenizer_location(recipe: Recipe, key: str = "tokenizer") -> str:
    """model.tokenizer (or another model key, such as "name") as a local folder (relative to the
    recipe) when one exists, else the hub id."""
    name = recipe.data["model"][key]
    local = recipe.resolve_path(name)
    return str(local) if local.is_dir() else name


def write_reports(lock: dict, info: Any, lock_path: Path, *, lengths: dict[str, Sequence[int]] | None = None,
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
