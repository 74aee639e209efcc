"""Tiny inputs for tests, demos and benchmarks that must run offline on a CPU.

A tiny model is a config.json folder (`model.init=random` builds it with random weights);
a token artifact is the Parquet file the compiler writes, made here from text with the
real tokenizer, with the same masking rule (prompt -100, completion + eos trained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

# Qwen2-shaped, small enough to train in seconds on two cores; the vocabulary matches the
# Qwen2.5 tokenizer so real token ids fit. Tied embeddings halve the 151936 x 64 matrix.
# initializer_range 0.5 (not 0.02): LoRA cannot touch the final norm or the embeddings, so
# with 0.02-sized embeddings the logits of a random base stay within about +-1 and no adapter
# can make one token of 151936 likely; larger embeddings let a few rows be memorized.
TINY_QWEN2 = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "initializer_range": 0.5,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


def write_tiny_model_dir(path: Path, **overrides: object) -> Path:
    """A folder holding only config.json: the `model.name` of a `model.init=random` plan."""
    from transformers import AutoConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    values = {**TINY_QWEN2, **overrides}
    AutoConfig.for_model(values.pop("model_type"), **values).save_pretrained(path)
    return path


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


def encode(tokenizer, example: Example, eos_id: int, *, completion_only: bool = True) -> tuple[list[int], list[int]]:
    """input_ids and labels for one example, as the compiler makes them: the prompt and the
    completion tokenized separately (so the boundary is exact), eos appended and trained."""
    prompt = tokenizer.encode(example.prompt, add_special_tokens=False).ids
    completion = tokenizer.encode(example.completion, add_special_tokens=False).ids + [eos_id]
    ids = prompt + completion
    labels = ([-100] * len(prompt) if completion_only else prompt) + completion
    return ids, labels


def write_token_artifact(
    path: Path,
    rows: Sequence[tuple[list[int], list[int]]],
    *,
    packs: Sequence[int] | None = None,
) -> Path:
    """The compiler's token artifact: row_id, input_ids, labels, length (+ pack)."""
    columns = {
        "row_id": pa.array([f"r{i}" for i in range(len(rows))], pa.string()),
        "input_ids": pa.array([ids for ids, _ in rows], pa.list_(pa.int32())),
        "labels": pa.array([labels for _, labels in rows], pa.list_(pa.int32())),
        "length": pa.array([len(ids) for ids, _ in rows], pa.int32()),
    }
    if packs is not None:
        columns["pack"] = pa.array(list(packs), pa.int32())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def greedy_packs(lengths: Sequence[int], max_len: int) -> list[int]:
    """First-fit packing in row order: a stand-in for the compiler's planner in tests."""
    packs: list[int] = []
    fill: list[int] = []
    for n in lengths:
        for i, used in enumerate(fill):
            if used + n <= max_len:
                fill[i] += n
                packs.append(i)
                break
        else:
            fill.append(n)
            packs.append(len(fill) - 1)
    return packs
