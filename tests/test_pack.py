"""Packing: every row placed once, no bin over capacity, same input -> same bins."""

from __future__ import annotations

import random

import pytest

from ftc.compiler.pack import pack_bfd, packing_efficiency, position_ids
from ftc.errors import FtcError


def _random_lengths(seed: int, n: int, capacity: int) -> list[int]:
    rng = random.Random(seed)
    # Mostly short rows with a long tail, like real SFT data; many ties on purpose.
    return [min(capacity, int(rng.lognormvariate(5, 0.8)) + 1) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_row_exactly_once_and_capacity_respected(seed):
    capacity = 1024
    lengths = _random_lengths(seed, 3000, capacity)
    bins = pack_bfd(lengths, capacity)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert all(b == sorted(b) and b for b in bins)
    # Best fit leaves at most one bin that is half empty or worse (two could be merged).
    assert sum(1 for b in bins if sum(lengths[i] for i in b) <= capacity // 2) <= 1
    # No worse than the volume bound allows by much on this easy distribution.
    assert len(bins) <= sum(lengths) / capacity * 1.05 + 1


def test_deterministic_and_ties_broken_by_index():
    lengths = _random_lengths(7, 2000, 512)
    assert pack_bfd(lengths, 512) == pack_bfd(list(lengths), 512)
    # Equal lengths: lower indices are placed first, into the older bins.
    assert pack_bfd([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]


def test_best_fit_decreasing_on_a_known_case():
    # Decreasing order 7,5,4,3,2,1 into capacity 10: 7 opens bin0 (room 3); 5 opens bin1 (room 5);
    # 4 fits bin1 best (room 1); 3 fits bin0 exactly (room 0); 2 opens bin2 (room 8); 1 fits bin1 best.
    lengths = [1, 2, 3, 4, 5, 7]
    assert pack_bfd(lengths, 10) == [[2, 5], [0, 3, 4], [1]]


def test_efficiency_is_real_tokens_over_slots():
    lengths = _random_lengths(3, 500, 256)
    bins = pack_bfd(lengths, 256)
    assert packing_efficiency(lengths, bins, 256) == pytest.approx(sum(lengths) / (len(bins) * 256))
    assert packing_efficiency([4, 4], [[0, 1]], 8) == 1.0
    assert packing_efficiency([], [], 8) == 0.0


def test_edge_cases():
    assert pack_bfd([], 8) == []
    assert pack_bfd([8], 8) == [[0]]
    assert pack_bfd([0, 8], 8) == [[0, 1]]
    with pytest.raises(FtcError) as err:
        pack_bfd([3, 9], 8)
    assert err.value.code == "FTC603" and "row 1 has 9 tokens, more than the packing capacity 8" in err.value.message
    assert "max_seq_length <= the packing capacity" in err.value.hint
    with pytest.raises(ValueError):
        pack_bfd([1], 0)


def test_position_ids_restart_per_row():
    assert position_ids([3, 1, 2]) == [0, 1, 2, 0, 0, 1]
    assert position_ids([]) == []
