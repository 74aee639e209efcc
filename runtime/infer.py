"""Generate with a trained run: the base model the run used, plus its adapter.

Formatting a prompt is not done here: `ftc infer` renders it with the plan's own template
and encodes it with the compiler's `encode_prompt`, the very function that made the training
ids (train/inference skew is a classic silent bug), then hands the token ids to `generate`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ftc.errors import FtcError
from ftc.runtime.model import load_base_model, load_tokenizer


@dataclass(frozen=True)
class Trained:
    model: Any  # peft.PeftModel, in eval mode
    tokenizer: Any  # the tokenizer saved next to the adapter
    facts: dict  # run.json


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FtcError("FTC708", folder=str(run_dir), missing=path.name)
    return json.loads(path.read_text())


def load_base_for_run(facts: dict, *, quantized: bool = True) -> Any:
    """The exact base model the run trained on. A random-init base is rebuilt from its config
    and seed and must match the fingerprint run.json recorded. `quantized=False` loads a
    4-bit run's base unquantized (for merging)."""
    settings = dict(facts["settings"]["model"])
    if not quantized:
        settings["load_in_4bit"] = False
    loaded = load_base_model(settings, seed=facts["settings"]["train"]["seed"])
    expected = facts["model"].get("fingerprint", "")
    if loaded.random_init and expected and loaded.fingerprint != expected:
        raise FtcError("FTC714", got=loaded.fingerprint[:12], expected=expected[:12])
    return loaded.model


def load_trained(run_dir: Path, *, device: str | None = None, quantized: bool = True) -> Trained:
    """Base model + the run's adapter, ready to generate."""
    import torch
    from peft import PeftModel

    run_dir = Path(run_dir)
    facts = read_run(run_dir)
    base = load_base_for_run(facts, quantized=quantized)
    base.config.use_cache = True
    model = PeftModel.from_pretrained(base, str(run_dir))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not getattr(base, "is_loaded_in_4bit", False):
        model = model.to(device)
    model.eval()
    tokenizer = load_tokenizer(str(run_dir))
    return Trained(model, tokenizer, facts)


def text_streamer(tokenizer: Any, *, file: Any = None) -> Any:
    """A transformers TextStreamer that prints only the new text, as it is generated."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            print(text, flush=True, end="" if not stream_end else "\n", file=file or sys.stdout)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate(
    model: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    streamer: Any = None,
) -> list[int]:
    """The new token ids after `prompt_ids` (greedy unless do_sample), eos included if hit.

    Takes token ids, never text: the caller owns the template. `seed` makes sampling
    repeatable; `streamer` (see `text_streamer`) prints text as it comes.
    """
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    config = model.generation_config if hasattr(model, "generation_config") else None
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "attention_mask": torch.ones_like(ids),
        "use_cache": True,
        "streamer": streamer,
        "eos_token_id": eos_token_id if eos_token_id is not None else getattr(config, "eos_token_id", None),
        "pad_token_id": pad_token_id if pad_token_id is not None else getattr(config, "pad_token_id", None),
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:  # the model's generation_config may ask for sampling; greedy means greedy
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, **kwargs)
    return out[0, ids.shape[1] :].tolist()
