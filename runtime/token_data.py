"""The compiler's token artifact, as the dataset and collator the Trainer consumes.

The artifact (Parquet) holds one tokenized, masked row per example: `row_id`, `input_ids`,
`labels` (-100 where the loss is masked, eos appended by compile), `length`, and `pack`
when the plan packs rows. It is never re-tokenized here: the plan decided every token.

Packing is planned by the compiler (`pack`: rows sharing a value form one sequence of at
most max_seq_length tokens). Here a pack becomes one dataset item with `seq_lengths`, and a
batch of packs is flattened into a single padding-free row whose position_ids restart at 0
for every original row. transformers turns those restarting positions into a block-diagonal
causal mask (sdpa, eager, flex) or varlen boundaries (flash-attention), so packed rows
never attend to each other; `tests/test_runtime_packing.py` proves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ftc.errors import FtcError

REQUIRED = ("row_id", "input_ids", "labels", "length")


@dataclass(frozen=True)
class TokenStats:
    """What the artifact holds, in the units run.json and the report speak in."""

    rows: int
    sequences: int  # training items: packs when packed, else rows
    tokens: int  # real tokens (no padding)
    trained_tokens: int  # tokens whose label is not -100
    max_length: int  # longest item
    packed: bool


def read_artifact(path: Path, kind: str, required: tuple[str, ...], columns: list[str] | None = None) -> pa.Table:
    """An artifact of the compiler's, refused when it lacks a column the trainer needs or has no
    rows (FTC720, FTC721); `kind` names it in the message ("token", "prompt")."""
    path = Path(path)
    table = pq.read_table(path, columns=columns)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise FtcError("FTC720", file=str(path), kind=kind, missing=", ".join(missing), columns=", ".join(table.column_names))
    if table.num_rows == 0:
        raise FtcError("FTC721", file=str(path), kind=kind)
    return table


def read_tokens(path: Path, *, max_seq_length: int | None = None) -> pa.Table:
    """Read and check the artifact: the columns, lengths and labels the trainer relies on.

    Checks are vectorized (the artifact can hold millions of tokens) and catch a compiler
    that drifted from the contract before hours of GPU time are spent on it (FTC720-FTC725).
    """
    path = Path(path)
    table = read_artifact(path, "token", REQUIRED)
    row_id = table.column("row_id")
    ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    n_ids = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    n_labels = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
    declared = table.column("length").to_numpy()
    if not (np.array_equal(n_ids, n_labels) and np.array_equal(n_ids, declared)):
        bad = int(np.flatnonzero((n_ids != n_labels) | (n_ids != declared))[0])
        raise FtcError("FTC722", file=str(path), row=str(row_id[bad].as_py()), ids=int(n_ids[bad]), labels=int(n_labels[bad]),
                       length=int(declared[bad]))
    if (n_ids == 0).any():
        raise FtcError("FTC723", file=str(path), row=str(row_id[int(np.flatnonzero(n_ids == 0)[0])].as_py()))
    flat_ids = ids.flatten().to_numpy()
    flat_labels = labels.flatten().to_numpy()
    wrong = (flat_labels != -100) & (flat_labels != flat_ids)
    if wrong.any():
        row = int(np.searchsorted(np.cumsum(n_ids), int(np.flatnonzero(wrong)[0]), side="right"))  # the token's row
        raise FtcError("FTC724", file=str(path), row=str(row_id[row].as_py()))
    if max_seq_length is not None:
        packed = "pack" in table.column_names
        lengths = _pack_lengths(table) if packed else n_ids
        worst = int(lengths.argmax())
        if lengths[worst] > max_seq_length:
            what = f"pack {np.unique(table.column('pack').to_numpy())[worst]}" if packed else f"row {row_id[worst].as_py()}"
            raise FtcError("FTC725", file=str(path), what=what, tokens=int(lengths[worst]), limit=max_seq_length)
    return table


def _pack_lengths(table: pa.Table) -> np.ndarray:
    packs = table.column("pack").to_numpy()
    lengths = table.column("length").to_numpy().astype(np.int64)
    _, inverse = np.unique(packs, return_inverse=True)
    return np.bincount(inverse, weights=lengths).astype(np.int64)


def to_items(table: pa.Table) -> pa.Table:
    """The training items: one per row, or one per pack with `seq_lengths` when packed.

    Rows of a pack keep their artifact order; packs are ordered by their `pack` value.
    Everything stays in Arrow (take + flatten), never in per-token Python lists.
    """
    if "pack" not in table.column_names:
        return pa.table({"input_ids": table.column("input_ids"), "labels": table.column("labels")})
    packs = table.column("pack").to_numpy()
    order = np.lexsort((np.arange(len(packs)), packs))  # by pack, then artifact order
    sorted_packs = packs[order]
    starts = np.flatnonzero(np.r_[True, sorted_packs[1:] != sorted_packs[:-1]])
    row_offsets = pa.array(np.r_[starts, len(order)].astype(np.int32))
    lengths = table.column("length").combine_chunks().take(pa.array(order)).cast(pa.int32())
    token_offsets = np.r_[0, np.cumsum(lengths.to_numpy())][np.r_[starts, len(order)]].astype(np.int32)

    def concat(column: str) -> pa.Array:
        values = table.column(column).combine_chunks().take(pa.array(order)).flatten()
        return pa.ListArray.from_arrays(pa.array(token_offsets), values)

    return pa.table(
        {
            "input_ids": concat("input_ids"),
            "labels": concat("labels"),
            "seq_lengths": pa.ListArray.from_arrays(row_offsets, lengths),
        }
    )


def token_stats(table: pa.Table) -> TokenStats:
    labels = table.column("labels").combine_chunks().flatten().to_numpy()
    packed = "pack" in table.column_names
    lengths = _pack_lengths(table) if packed else table.column("length").to_numpy()
    return TokenStats(
        rows=table.num_rows,
        sequences=len(lengths),
        tokens=int(lengths.sum()),
        trained_tokens=int((labels != -100).sum()),
        max_length=int(lengths.max()),
        packed=packed,
    )


def to_dataset(table: pa.Table) -> Any:
    """A `datasets.Dataset` of training items, the type SFTTrainer insists on."""
    import datasets

    return datasets.Dataset(to_items(table))


def collator(pad_token_id: int, *, packed: bool, lengths_key: str | None = None) -> Any:
    """TRL's language-modeling collator: padded batches with an attention_mask, or, for
    packs, one flattened padding-free row with restarting position_ids and the label of
    every sequence's first token masked (it would otherwise be predicted from the
    previous sequence's last token).

    `lengths_key`: also hand the model the packed rows' lengths under that name, as a CPU
    int32 tensor (unsloth's varlen attention reads `packed_seq_lengths`; without it, it
    derives them from position_ids on the GPU and waits for the GPU every forward)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    inner = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=packed)
    if not (packed and lengths_key):
        return inner

    def with_lengths(examples: list[dict]) -> dict:
        import torch

        batch = inner(examples)
        batch[lengths_key] = torch.tensor([n for e in examples for n in e["seq_lengths"]], dtype=torch.int32)
        return batch

    return with_lengths


def check_vocab(model: Any, table: pa.Table, file: Path, columns: tuple[str, ...] = ("input_ids",)) -> None:
    """Every token id of ``columns`` is below the model's embedding rows (FTC715): a plan compiled
    for another tokenizer fails here, not as an index error inside the first forward pass."""
    vocab = model.get_input_embeddings().num_embeddings
    top = max(int(pc.max(table.column(c).combine_chunks().flatten()).as_py()) for c in columns)
    if top >= vocab:
        raise FtcError("FTC715", file=str(file), token_id=top, vocab=vocab)
