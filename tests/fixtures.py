"""Test helpers (not part of the package): tiny models, tiny recipes compiled by the real
compiler, and the run skeleton called the way `ftc run` calls it.

A tiny model is a config.json folder (`model.init=random` builds it with random weights). A
plan is what `ftc compile` makes from a recipe and a few data rows written into a test's tmp
folder; the runtime tests train on that, not on hand-built artifacts. `write_token_artifact`
remains for the few tests that need an artifact the compiler would never write (a broken
contract) or that check the attention kernel on a batch laid out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_tiny_model_dir(path: Path, **overrides: object) -> Path:
    """A folder holding only config.json: the `model.name` of a `model.init=random` plan."""
    from transformers import AutoConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    values = {**TINY_QWEN2, **overrides}
    AutoConfig.for_model(values.pop("model_type"), **values).save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def compile_plan(folder: Path, recipe: dict, *overrides: str, tokenize: bool = True) -> Any:
    """`ftc compile recipe.json --set ...` in `folder`, then the plan as `ftc run` reads it (verified)."""
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe
    from ftc.runtime.verify import verify

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    lock = folder / "plan.lock"
    compile_recipe(load_recipe(path, list(overrides)), lock, tokenize=tokenize)
    return verify(lock)


def train(plan: Any, output_dir: Path, **kwargs: Any) -> dict:
    """The run skeleton with the plan's method, as `ftc run` calls it on the hf backend."""
    from ftc.runtime.methods import method_for
    from ftc.runtime.session import run_method

    return run_method(method_for(plan.method), plan, output_dir=output_dir, show_progress=False, **kwargs)


def resolved(model: dict, lora: dict | None = None, train: dict | None = None) -> dict:
    """The model/lora/train sections as the compiler's resolver fills them (schema defaults
    included), for unit tests of the runtime that need sections, not a compiled plan."""
    from ftc.compiler.recipe import resolve

    recipe = {"name": "t", "sources": {"s": {"path": "s.jsonl"}}, "template": {"format": "text", "text": "{{ t }}"},
              "model": model, "lora": lora or {}, "train": train or {}}
    return resolve(recipe, "test")


def write_token_artifact(path: Path, rows: Sequence[tuple[list[int], list[int]]], *,
                         packs: Sequence[int] | None = None) -> Path:
    """A token artifact laid out by hand (row_id, input_ids, labels, length, + pack): only for
    what the compiler cannot make (a broken contract) or a batch the test arranges itself."""
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


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores shared with other jobs: a second intra-op thread spins against them and makes
    the tiny matmuls hundreds of times slower, so training tests use one. A module takes it with
    `from fixtures import one_torch_thread` (autouse, module scope)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
