"""Packing at corpus size (issue 15): the bins are numpy arrays, not Python lists of row numbers.

A list of lists held about 74 bytes a row across the token write (and 145 at its peak, the
sort's key tuples), which is what made compile's memory grow with its input; the arrays hold
12. The bins themselves are checked against a plain best-fit-decreasing scan, an oracle that
shares no code with the packer.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from ftc.compiler.pack import assign_bins, pack_bfd, packed_order


def _reference_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing by scanning every bin: the tightest fit, the older bin on a tie."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        fits = [b for b in range(len(bins)) if room[b] >= n]
        if fits:
            b = min(fits, key=lambda b: (room[b], b))
        else:
            b = len(bins)
            bins.append([])
            room.append(capacity)
        bins[b].append(i)
        room[b] -= n
    return [sorted(b) for b in bins]


@pytest.mark.parametrize("seed, capacity", [(0, 8), (1, 64), (2, 1024), (3, 7)])
def test_bins_match_a_plain_best_fit_scan(seed, capacity):
    rng = random.Random(seed)
    lengths = [min(capacity, int(rng.lognormvariate(2 if capacity < 100 else 5, 1.2))) for _ in range(1500)]
    want = _reference_bfd(lengths, capacity)
    assert pack_bfd(lengths, capacity) == want
    assert pack_bfd(np.array(lengths, np.int32), capacity) == want
    bin_of = assign_bins(lengths, capacity)
    assert bin_of.dtype == np.int32
    assert [sorted(np.flatnonzero(bin_of == b).tolist()) for b in range(len(want))] == want  # bins numbered as created
    assert np.concatenate(want).tolist() == packed_order(bin_of).tolist()


def test_packing_holds_a_few_bytes_a_row():
    """300k rows: what the packing keeps (bin per row, packed order) and its peak, per row."""
    rng = np.random.default_rng(0)
    lengths = np.minimum(2048, rng.lognormal(5.5, 0.7, 300_000).astype(np.int32) + 1)
    tracemalloc.start()
    try:
        bin_of = assign_bins(lengths, 2048)
        order = packed_order(bin_of)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = len(lengths)
    assert order.dtype == np.int32 and len(order) == n
    assert held / n < 10, held / n  # int32 bin numbers and int32 order: 8 bytes a row
    assert peak / n < 40, peak / n
