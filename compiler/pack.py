"""Pack tokenized rows into fixed-capacity bins (best-fit decreasing).

Padding every row to max_seq_length wastes most of a batch when rows are short;
packing several rows into one sequence (with position ids restarting per row, so
attention can be kept per row) recovers that compute. Best-fit decreasing is
simple, close to optimal for this problem, and, with ties broken by row index,
deterministic: the same lengths always give the same bins, so the lock can record
the packing and a rerun reproduces it.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Sequence

from ftc.errors import FtcError


def pack_bfd(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of row indices, each summing to at most ``capacity``.

    Rows go longest first (ties: lower index first) into the bin with the least
    room that still fits them (ties: the older bin), else into a new bin. Bins are
    returned in creation order, each listing its rows in ascending index order.
    Bins are found through buckets keyed by remaining room, so the cost is
    O(n log n) plus O(log capacity) per row, not a scan over all open bins.
    """
    if capacity < 1:
        raise ValueError("capacity must be positive")
    for i, n in enumerate(lengths):
        if n > capacity:
            raise FtcError("FTC603", row=i, tokens=n, capacity=capacity)
        if n < 0:
            raise ValueError(f"negative length {n} at index {i}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # room -> heap of bin numbers with exactly that room
    rooms: list[int] = []  # sorted distinct rooms that have at least one bin
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(rooms, n)
        if k < len(rooms):
            room = rooms[k]
            heap = by_room[room]
            b = heapq.heappop(heap)
            if not heap:
                del by_room[room]
                rooms.pop(k)
        else:
            b, room = len(bins), capacity
            bins.append([])
        bins[b].append(i)
        left = room - n
        if left not in by_room:
            by_room[left] = []
            bisect.insort(rooms, left)
        heapq.heappush(by_room[left], b)
    return [sorted(b) for b in bins]


def packing_efficiency(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> float:
    """Share of the packed sequence slots that hold real tokens (1.0 = no padding)."""
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
