"""Pack tokenized rows into fixed-capacity bins (best-fit decreasing).

Padding every row to max_seq_length wastes most of a batch when rows are short;
packing several rows into one sequence (with position ids restarting per row, so
attention can be kept per row) recovers that compute. Best-fit decreasing is
simple, close to optimal for this problem, and, with ties broken by row index,
deterministic: the same lengths always give the same bins, so the lock can record
the packing and a rerun reproduces it.

The packing of a split is kept as numpy arrays (a bin number per row, 4 bytes a row),
never as Python lists of row numbers: a list of lists costs about 60 bytes a row, which
at millions of rows was the part of compile's memory that grew with the input (issue 15).
"""

from __future__ import annotations

import bisect
import heapq
from typing import Sequence

import numpy as np

from ftc.errors import FtcError

_CHUNK = 1 << 16  # rows converted to Python ints at once inside the packing loop


def assign_bins(lengths: Sequence[int] | np.ndarray, capacity: int) -> np.ndarray:
    """The bin number of every row (int32, bins numbered in creation order), each bin summing to at
    most ``capacity``.

    Rows go longest first (ties: lower index first) into the bin with the least room that
    still fits them (ties: the older bin), else into a new bin. Bins are found through
    buckets keyed by remaining room, so the cost is O(n log n) plus O(log capacity) per row,
    not a scan over all open bins.
    """
    if capacity < 1:
        raise ValueError("capacity must be positive")
    lens = np.asarray(lengths).reshape(-1)  # an int32 array stays one (no 8-byte copy of a split's lengths)
    if lens.dtype.kind not in "iu":
        lens = lens.astype(np.int64)
    bad = np.flatnonzero((lens > capacity) | (lens < 0))
    if len(bad):
        i = int(bad[0])
        if lens[i] > capacity:
            raise FtcError("FTC603", row=i, tokens=int(lens[i]), capacity=capacity)
        raise ValueError(f"negative length {int(lens[i])} at index {i}")
    signed = lens.astype(np.int64) if lens.dtype.kind == "u" else lens
    order = np.argsort(-signed, kind="stable")  # longest first, ties by index
    bin_of = np.empty(len(lens), np.int32)
    bins = 0
    by_room: dict[int, list[int]] = {}  # room -> heap of bin numbers with exactly that room
    rooms: list[int] = []  # sorted distinct rooms that have at least one bin
    for lo in range(0, len(order), _CHUNK):
        chunk = order[lo : lo + _CHUNK]
        for i, n in zip(chunk.tolist(), lens[chunk].tolist()):
            k = bisect.bisect_left(rooms, n)
            if k < len(rooms):
                room = rooms[k]
                heap = by_room[room]
                b = heapq.heappop(heap)
                if not heap:
                    del by_room[room]
                    rooms.pop(k)
            else:
                b, room = bins, capacity
                bins += 1
            bin_of[i] = b
            left = room - n
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            heapq.heappush(by_room[left], b)
    return bin_of


def packed_order(bin_of: np.ndarray) -> np.ndarray:
    """The rows bin after bin, each bin's rows in ascending index order (the rows of ``pack_bfd``'s
    bins, concatenated)."""
    return np.argsort(bin_of, kind="stable").astype(np.int32 if len(bin_of) < 2**31 else np.int64)


def pack_bfd(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of row indices (``assign_bins``), in creation order, each listing its rows in ascending
    index order. As Python lists: for small inputs and tests; compile keeps the arrays."""
    bin_of = assign_bins(lengths, capacity)
    if not len(bin_of):
        return []
    order = packed_order(bin_of)
    cuts = np.cumsum(np.bincount(bin_of))[:-1]
    return [part.tolist() for part in np.split(order, cuts)]


def packing_efficiency(lengths: Sequence[int], bins: Sequence[Sequence[int]] | int, capacity: int) -> float:
    """Share of the packed sequence slots that hold real tokens (1.0 = no padding). ``bins`` is the
    bins, or their number (every row is in one bin, so the real tokens are all the lengths)."""
    if isinstance(bins, int):
        return float(np.sum(np.asarray(lengths, dtype=np.int64))) / (bins * capacity) if bins else 0.0
    if not bins:
        return 0.0
    real = sum(lengths[i] for b in bins for i in b)
    return real / (len(bins) * capacity)


def position_ids(lengths_in_bin: Sequence[int]) -> list[int]:
    """Position ids for one packed sequence: each row starts again at 0.

    Flash-attention style kernels read these restarts as row boundaries, so packed
    rows do not attend to each other.
    """
    out: list[int] = []
    for n in lengths_in_bin:
        out.extend(range(n))
    return out
