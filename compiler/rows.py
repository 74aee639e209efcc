"""Token rows as flat numpy arrays, and the last step of every format: overlong rows and the table.

Every step works on whole arrays, never row by row, so the cost of a step is a few
numpy passes regardless of how many rows there are (see BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ftc.errors import FtcError

IGNORE = -100  # the label value PyTorch's cross-entropy skips


@dataclass
class Rows:
    """Token rows: all rows' ids and labels concatenated, plus per-row lengths."""

    ids: np.ndarray  # int32, all rows concatenated
    labels: np.ndarray  # int32, IGNORE where no loss
    lens: np.ndarray  # int64 per row

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lens) - self.lens

    def per_row_count(self, flags: np.ndarray) -> np.ndarray:
        """How many tokens of each row are flagged (empty rows give 0).

        ``reduceat`` over the non-empty rows' starts: each segment then runs to the
        next non-empty row, i.e. exactly over this row's tokens. (A cumsum with a
        bool-to-int64 cast was ~15x slower in the benchmark.)
        """
        out = np.zeros(len(self.lens), np.int64)
        full = self.lens > 0
        if full.any():
            out[full] = np.add.reduceat(flags.view(np.uint8), self.starts[full], dtype=np.int32)
        return out

    def position_in_row(self) -> np.ndarray:
        return np.arange(len(self.ids), dtype=np.int64) - np.repeat(self.starts, self.lens)

    def keep_rows(self, keep: np.ndarray) -> "Rows":
        """Only the rows where ``keep`` (a bool per row) is true."""
        tokens = np.repeat(keep, self.lens)
        return Rows(self.ids[tokens], self.labels[tokens], self.lens[keep])

    def select(self, rows: np.ndarray) -> "Rows":
        """The rows numbered ``rows`` (ascending), in that order."""
        keep = np.zeros(len(self.lens), bool)
        keep[rows] = True
        return self.keep_rows(keep)

    def only(self, keep: np.ndarray) -> "Rows":
        """The same rows, those where ``keep`` is false emptied (their place kept)."""
        tokens = np.repeat(keep, self.lens)
        return Rows(self.ids[tokens], self.labels[tokens], np.where(keep, self.lens, 0))

    def tails(self, skip: np.ndarray) -> "Rows":
        """Every row without its first ``skip[i]`` tokens."""
        tokens = self.position_in_row() >= np.repeat(skip, self.lens)
        return Rows(self.ids[tokens], self.labels[tokens], np.maximum(self.lens - skip, 0))

    def truncate(self, n: int, *, keep_end: bool) -> "Rows":
        """Rows cut to at most ``n`` tokens, keeping their start (or their end)."""
        new = np.minimum(self.lens, n)
        pos = self.position_in_row()
        tokens = pos >= np.repeat(self.lens - new, self.lens) if keep_end else pos < np.repeat(new, self.lens)
        return Rows(self.ids[tokens], self.labels[tokens], new)

    @classmethod
    def spread(cls, sub: "Rows", at: np.ndarray, n: int) -> "Rows":
        """``n`` rows: row ``at[k]`` is row k of ``sub`` (``at`` ascending), every other row empty."""
        lens = np.zeros(n, np.int64)
        lens[at] = sub.lens
        return cls(sub.ids, sub.labels, lens)

    def starts_with(self, head: "Rows") -> np.ndarray:
        """Per row: whether row i begins with exactly the ids of ``head``'s row i."""
        fits = head.lens <= self.lens
        if not len(head.ids) or not len(self.ids):
            return fits  # every head is empty, or every row is (and a head fits only if it is too)
        at = np.minimum(np.repeat(self.starts, head.lens) + head.position_in_row(), len(self.ids) - 1)
        return fits & (head.per_row_count(self.ids[at] != head.ids) == 0)

    def row(self, i: int) -> list[int]:
        s = int(self.starts[i])
        return self.ids[s : s + int(self.lens[i])].tolist()

    def lists(self) -> list[list[int]]:
        return [a.tolist() for a in np.split(self.ids, np.cumsum(self.lens)[:-1])] if len(self.lens) else []


def concat_rows(*parts: Rows) -> Rows:
    """Row i of the result is row i of each part, one after another (every part has the same rows)."""
    lens = sum(p.lens for p in parts)
    ids = np.empty(int(lens.sum()), np.int32)
    labels = np.empty(int(lens.sum()), np.int32)
    at_row = np.cumsum(lens) - lens
    for p in parts:
        at = np.repeat(at_row, p.lens) + p.position_in_row()
        ids[at], labels[at] = p.ids, p.labels
        at_row = at_row + p.lens
    return Rows(ids, labels, lens)


def finish(rows: Rows, row_ids: pa.Array, fmt: str, *, max_seq_length: int, overlong: str) -> tuple[pa.Table, dict, dict]:
    """Apply the overlong policy, drop rows with nothing to learn: (the Arrow table, stats, dropped by reason)."""
    dropped: dict[str, int] = {}
    long = rows.lens > max_seq_length
    n_long = int(long.sum())
    if n_long and overlong == "error":
        first = int(np.flatnonzero(long)[0])
        raise FtcError("FTC602", row=row_ids[first].as_py(), tokens=int(rows.lens[first]), max_seq_length=max_seq_length,
                       count=n_long)
    kept = np.arange(len(rows.lens))  # original row numbers still present
    trained_before = rows.per_row_count(rows.labels != IGNORE)
    if n_long and overlong == "drop":
        _count(dropped, f"longer than max_seq_length ({max_seq_length})", n_long)
        rows, kept = rows.keep_rows(~long), kept[~long]
    elif n_long:  # a prompt keeps its end: the generation prompt the model continues from
        rows = rows.truncate(max_seq_length, keep_end=fmt == "prompt")
    trained = rows.per_row_count(rows.labels != IGNORE) if n_long else trained_before[kept]
    if fmt != "prompt" and not trained.all():
        empty = trained == 0
        lost = empty & (trained_before[kept] > 0)
        _count(dropped, f"no trained tokens left after truncation to {max_seq_length}", int(lost.sum()))
        _count(dropped, "no trained tokens (e.g. no assistant turn)", int((empty & ~lost).sum()))
        rows, kept, trained = rows.keep_rows(~empty), kept[~empty], trained[~empty]
    truncated = int(long[kept].sum()) if overlong == "truncate" else 0
    offsets = pa.array(np.concatenate(([0], np.cumsum(rows.lens))).astype(np.int32))
    out = pa.table(
        {
            "row_id": row_ids if len(kept) == len(row_ids) else row_ids.take(pa.array(kept)),
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(rows.ids, pa.int32())),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(rows.labels, pa.int32())),
            "length": pa.array(rows.lens.astype(np.int32)),
        }
    )
    stats = _stats(rows.lens, int(trained.sum()), truncated, sum(dropped.values()))
    return out, stats, dropped


def _count(dropped: dict[str, int], reason: str, n: int) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + n


def merged_stats(parts: list[dict], lens: np.ndarray) -> dict:
    """The stats of a split tokenized in batches: the ``finish`` stats of each batch (``parts``)
    combined, with the percentiles taken over every kept row's length (``lens``), exactly as
    ``finish`` gives them for the whole split at once."""
    return _stats(lens, sum(p["supervised_tokens"] for p in parts), sum(p["truncated"] for p in parts),
                  sum(p["dropped"] for p in parts))


def _stats(lens: np.ndarray, supervised: int, truncated: int, dropped: int) -> dict:
    """Plain ints only. Percentiles are actual row lengths (inverted CDF): p90 = the
    length that 90% of rows do not exceed, the number to choose max_seq_length by."""

    def pct(q: float) -> int:
        return int(np.percentile(lens, q, method="inverted_cdf")) if len(lens) else 0

    return {
        "rows": int(len(lens)),
        "tokens": int(lens.sum()),
        "supervised_tokens": supervised,
        "length_p50": pct(50),
        "length_p90": pct(90),
        "length_p99": pct(99),
        "length_max": int(lens.max()) if len(lens) else 0,
        "truncated": truncated,
        "dropped": dropped,
    }
