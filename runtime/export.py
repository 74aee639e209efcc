"""Merge a run's LoRA adapter into its base weights: a plain model folder (safetensors +
config + tokenizer) that `AutoModelForCausalLM.from_pretrained` loads without PEFT, for
serving stacks that do not speak adapters.
"""

from __future__ import annotations

from pathlib import Path

from ftc.runtime.infer import load_trained


def export_merged(run_dir: Path, out_dir: Path, *, dtype: str | None = None) -> Path:
    """Write the merged model to out_dir and return it.

    A 4-bit run is merged into its base loaded unquantized: merging into nf4 weights would
    round the update away. `dtype` (e.g. "bfloat16") casts the merged weights; default: the
    run's dtype.
    """
    import torch

    trained = load_trained(Path(run_dir), device="cpu", quantized=False)
    merged = trained.model.merge_and_unload()
    if dtype:
        merged = merged.to(getattr(torch, dtype))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    trained.tokenizer.save_pretrained(str(out_dir))
    return out_dir
