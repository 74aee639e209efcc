"""The hf backend's model setup: transformers loads the base model, TRL puts PEFT's LoRA on it.

One of the two `ModelSetup` functions the run skeleton (session.py) calls; the other is
unsloth's (backend_unsloth.py), which only runs in its own process.
"""

from __future__ import annotations

from pathlib import Path

from ftc.runtime.model import PACKING_SAFE_ATTENTION, ModelSetup, load_base_model, lora_config


def hf_setup(model: dict, lora: dict, train: dict, *, seed: int, output_dir: Path, tokenizer_path: str) -> ModelSetup:
    """transformers + PEFT: the base model as the plan names it; the trainer adds the LoRA adapter
    (`peft_config`), so gradient checkpointing stays the trainer's (TrainingArguments)."""
    loaded = load_base_model(model, seed=seed)
    attention = loaded.model.config._attn_implementation
    return ModelSetup(loaded=loaded, peft_config=lora_config(lora), backend="hf", attention=attention,
                      packing_safe=attention in PACKING_SAFE_ATTENTION)
