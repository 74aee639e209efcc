"""Packed rows must not see each other.

A packed, padding-free batch (one row, position_ids restarting per sequence, no
attention_mask) must give each sequence exactly the logits and per-token losses it gets
when run alone. The control case (the same tokens without restarting positions) must
differ, so the comparison can fail.

These tests check the attention kernel and the collator themselves, so the three sequences
are laid out by hand (arbitrary ids, known lengths and masks) and written as a token artifact
with `write_token_artifact`; the same for the artifact-contract checks, which need artifacts
the compiler never writes. Training on packs the real compiler planned is covered by
tests/test_runtime_resume.py and tests/test_run.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from fixtures import resolved, write_token_artifact, write_tiny_model_dir  # noqa: E402

from ftc.runtime import token_data  # noqa: E402
from ftc.runtime.model import load_base_model  # noqa: E402

SEQS = [  # (input_ids, labels): prompt masked, completion trained; lengths 7, 5, 9
    ([11, 22, 33, 44, 55, 66, 77], [-100, -100, -100, 44, 55, 66, 77]),
    ([101, 102, 103, 104, 105], [101, 102, 103, 104, 105]),
    ([7, 8, 9, 10, 11, 12, 13, 14, 15], [-100, -100, 9, 10, 11, 12, 13, 14, 15]),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = write_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    loaded = load_base_model(resolved({"name": str(folder), "init": "random", "dtype": "float32"})["model"], seed=0)
    loaded.model.config.use_cache = False  # as in training: a cache hides the packed layout
    # float64 so that equality can be asserted to 1e-9: in float32 the masked-sdpa and causal-sdpa
    # kernels round differently (about 4e-6 relative here), which a loose tolerance would blur
    # together with a real leak.
    return loaded.model.to(torch.float64).eval()


@pytest.fixture(scope="module")
def packed_batch(tmp_path_factory):
    path = write_token_artifact(tmp_path_factory.mktemp("art") / "t.parquet", SEQS, packs=[0, 0, 0])
    items = token_data.to_items(token_data.read_tokens(path, max_seq_length=32)).to_pylist()
    assert len(items) == 1 and items[0]["seq_lengths"] == [7, 5, 9]
    return token_data.collator(0, packed=True)(items)


def _alone(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
def test_packed_logits_equal_each_sequence_alone(model, packed_batch, dtype, tolerance):
    """tolerance is relative to the largest logit: float64 shows the result is exact; float32
    (what CPU training uses) differs by kernel rounding only (about 4e-6 of the scale)."""
    assert "attention_mask" not in packed_batch
    assert packed_batch["position_ids"][0].tolist() == [*range(7), *range(5), *range(9)]
    m = model.to(getattr(torch, dtype))
    try:
        with torch.no_grad():
            packed = m(input_ids=packed_batch["input_ids"], position_ids=packed_batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for ids, _ in SEQS:
            alone = _alone(m, ids)
            scale = float(alone.abs().max())
            torch.testing.assert_close(packed[start : start + len(ids)], alone, atol=tolerance * scale, rtol=0)
            start += len(ids)
    finally:
        model.to(torch.float64)


def test_without_restarting_positions_the_sequences_leak(model, packed_batch):
    """The control: same tokens as one long sequence. If this passed as equal, the test
    above would prove nothing."""
    with torch.no_grad():
        leaked = model(input_ids=packed_batch["input_ids"], use_cache=False).logits[0]
    second = _alone(model, SEQS[1][0])
    assert (leaked[7:12] - second).abs().max() > 1e-2 * float(second.abs().max())


def test_packed_per_token_losses_equal_alone_through_the_trainers_loss_head(model, packed_batch):
    """SFTTrainer computes the loss with TRL's fused LM head (log-probs of each next-token
    label): packed, it must score the same tokens with the same values as alone, and the
    first token of each sequence must not be predicted from the previous sequence."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model)
    with torch.no_grad():
        packed = model(**packed_batch, fused_lm_head=True)
    start = 0
    for ids, labels in SEQS:
        alone_batch = token_data.collator(0, packed=False)([{"input_ids": ids, "labels": labels}])
        with torch.no_grad():
            alone = model(**alone_batch, fused_lm_head=True, use_cache=False)
        n = len(ids)
        # position p scores label p+1; the packed row's last position of a sequence scores the
        # next sequence's first label, which the collator masked (0 log-prob, not counted)
        torch.testing.assert_close(packed.log_probs[0, start : start + n - 1], alone.log_probs[0], atol=1e-9, rtol=0)
        if start + n - 1 < packed.log_probs.shape[1]:
            assert packed.log_probs[0, start + n - 1] == 0
        start += n
    assert packed_batch["labels"][0, [0, 7, 12]].tolist() == [-100, -100, -100]


def test_padding_free_packs_have_no_padding_slots(packed_batch):
    from ftc.runtime.metrics import TokenCounter

    counter = TokenCounter()
    counter.add(packed_batch)
    assert counter.real == counter.slots == 21
    # labels: 4 + 5 + 7 trained, minus the masked first token of sequence 2 (101)
    assert counter.trained == 4 + 4 + 7


def test_packs_can_carry_their_lengths_for_a_varlen_kernel(tmp_path: Path):
    """unsloth's attention takes the packed rows' lengths as `packed_seq_lengths`: the collator
    hands them over from the items (CPU, int32), and the rest of the batch is unchanged."""
    rows = [(ids, labels) for ids, labels in SEQS]
    path = write_token_artifact(tmp_path / "t.parquet", rows, packs=[0, 0, 1])
    items = token_data.to_items(token_data.read_tokens(path)).to_pylist()
    plain = token_data.collator(0, packed=True)(items)
    batch = token_data.collator(0, packed=True, lengths_key="packed_seq_lengths")(items)
    lengths = batch.pop("packed_seq_lengths")
    assert lengths.dtype == torch.int32 and lengths.device.type == "cpu"
    assert lengths.tolist() == [len(ids) for ids, _ in SEQS]
    assert batch.keys() == plain.keys()
    assert all(torch.equal(batch[k], plain[k]) if torch.is_tensor(plain[k]) else batch[k] == plain[k] for k in plain)
    # restarting positions and the lengths describe the same boundaries
    assert (batch["position_ids"][0] == 0).nonzero().flatten().tolist() == [0, len(SEQS[0][0]), len(SEQS[0][0]) + len(SEQS[1][0])]
    # unpacked batches have no such key
    assert "packed_seq_lengths" not in token_data.collator(0, packed=False, lengths_key="packed_seq_lengths")(
        [{"input_ids": ids, "labels": labels} for ids, labels in SEQS])


def test_padded_batches_count_padding_as_slots():
    from ftc.runtime.metrics import TokenCounter

    batch = token_data.collator(0, packed=False)([{"input_ids": ids, "labels": labels} for ids, labels in SEQS])
    counter = TokenCounter()
    counter.add(batch)
    assert (counter.real, counter.slots) == (21, 27)


def test_items_group_rows_by_pack_in_artifact_order(tmp_path: Path):
    rows = [([1, 2], [1, 2]), ([3], [3]), ([4, 5, 6], [4, 5, 6]), ([7], [7])]
    path = write_token_artifact(tmp_path / "t.parquet", rows, packs=[1, 0, 1, 0])
    items = token_data.to_items(token_data.read_tokens(path)).to_pylist()
    assert items == [
        {"input_ids": [3, 7], "labels": [3, 7], "seq_lengths": [1, 1]},
        {"input_ids": [1, 2, 4, 5, 6], "labels": [1, 2, 4, 5, 6], "seq_lengths": [2, 3]},
    ]


def test_artifact_contract_is_checked(tmp_path: Path):
    import pyarrow.parquet as pq

    from ftc.errors import FtcError

    def refused(path: Path, code: str, says: str, **kwargs) -> None:
        with pytest.raises(FtcError) as err:
            token_data.read_tokens(path, **kwargs)
        assert err.value.code == code and err.value.file == str(path) and says in str(err.value), str(err.value)
        assert "recompile the plan" in err.value.hint

    good = [([5, 6], [-100, 6])]
    no_labels = write_token_artifact(tmp_path / "c.parquet", good)
    pq.write_table(pq.read_table(no_labels).drop_columns(["labels", "length"]), no_labels)
    refused(no_labels, "FTC720", "the token artifact lacks the column(s) labels, length; it has row_id, input_ids")
    refused(write_token_artifact(tmp_path / "d.parquet", []), "FTC721", "the token artifact has no rows")
    refused(write_token_artifact(tmp_path / "e.parquet", [*good, ([1, 2, 3], [1, 2])]), "FTC722",
            "row r1: 3 input_ids, 2 labels and length 3 disagree")
    refused(write_token_artifact(tmp_path / "f.parquet", [*good, ([], [])]), "FTC723", "row r1 has no tokens")
    refused(write_token_artifact(tmp_path / "a.parquet", [*good, ([1, 2, 3], [2, 3, -100])]), "FTC724",
            "row r1: a trained label differs from its input id")
    too_long = write_token_artifact(tmp_path / "b.parquet", [([1] * 5, [1] * 5), ([2] * 5, [2] * 5), ([3], [3])], packs=[1, 1, 0])
    refused(too_long, "FTC725", "pack 1 has 10 tokens, more than model.max_seq_length=8", max_seq_length=8)
    refused(write_token_artifact(tmp_path / "g.parquet", [*good, ([1] * 9, [1] * 9)]), "FTC725",
            "row r1 has 9 tokens, more than model.max_seq_length=8", max_seq_length=8)
