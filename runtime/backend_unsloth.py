"""The unsloth backend's model setup: the hf backend's plan, data, masks and packing, with unsloth's model.

It runs only inside the unsloth process (unsloth_process.py), which imports unsloth before
trl, transformers and peft; the run skeleton (session.py) then calls `unsloth_setup` where
the hf backend calls `backend_hf.hf_setup`. Only the model and TRL's classes differ (unsloth
swaps SFTTrainer/GRPOTrainer and their configs for its own on import; the skeleton refuses to
run when those change a setting of the plan, see `trainer_config.refuse_changes`):

- FastLanguageModel.from_pretrained(use_exact_model_name=True): the model the lock names,
  never a pre-quantized look-alike unsloth would map the name to; load_in_4bit is the plan's
  model.load_in_4bit (QLoRA, bitsandbytes nf4), not unsloth's default of True.
- get_peft_model with the plan's LoRA keys; use_gradient_checkpointing is "unsloth"
  (checkpoints offloaded to the CPU) when the memory plan turned checkpointing on, else False.
  The trainer's own checkpointing stays off: unsloth does it inside the model.
- model.init=random: the base is built from its config exactly as the hf backend builds it
  (CPU, seeded, fingerprinted), saved once under the run folder (random_base/) and loaded
  from there, because unsloth patches a model while loading it and takes no model object.
- Packing: the collator's padding-free row (one row, restarting position_ids, no
  attention_mask) comes with `packed_seq_lengths` (the rows' lengths, a CPU tensor), which
  unsloth's fast forward uses for its varlen attention, so packed rows do not attend to
  each other here either (`tests/bench/gpu_bench.py` checks it on the GPU). Unsloth's own
  packing and padding-free switches stay off: the compiler packed, and our collator is
  passed to the trainer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftc.errors import FtcError
from ftc.runtime.model import LoadedModel, ModelSetup, load_base_model, lora_kwargs, merge_adapter, resolve_dtype
from ftc.runtime.trainer_config import checkpointing_key

RANDOM_BASE = "random_base"

# Seconds `import unsloth` took in this process; unsloth_process.main records it, run.json reports it.
IMPORT_SECONDS: dict[str, float] = {}


def unsloth_setup(model: dict, lora: dict, train: dict, *, seed: int, output_dir: Path, tokenizer_path: str) -> ModelSetup:
    """ModelSetup for the run skeleton: unsloth's FastLanguageModel with the plan's LoRA on it."""
    import torch
    from unsloth import FastLanguageModel

    if not torch.cuda.is_available():
        raise FtcError("FTC701", missing="a CUDA GPU")
    dtype_name = resolve_dtype(model["dtype"], "cuda")
    name, random_init, fingerprint, random_base = model["name"], model["init"] == "random", "", None
    if random_init:
        name, fingerprint = _random_base(model, seed=seed, folder=Path(output_dir) / RANDOM_BASE)
        random_base = RANDOM_BASE
    checkpointing = "unsloth" if train["gradient_checkpointing"] is True else False  # decided by the memory plan
    kwargs: dict[str, Any] = {}
    if model["revision"] and not random_init:
        kwargs["revision"] = model["revision"]
    try:
        base, _ = FastLanguageModel.from_pretrained(
            model_name=name,
            tokenizer_name=str(tokenizer_path),
            max_seq_length=model["max_seq_length"],
            dtype=getattr(torch, dtype_name),
            load_in_4bit=model["load_in_4bit"],
            use_exact_model_name=True,
            fix_tokenizer=False,  # the compiler tokenized; the model must not be resized for a tokenizer fix
            trust_remote_code=model["trust_remote_code"],
            use_gradient_checkpointing=checkpointing,
            random_state=seed,
            **kwargs,
        )
    except (OSError, RuntimeError, ValueError) as err:  # unsloth wraps a missing model in a RuntimeError
        raise FtcError("FTC713", path="model.name", name=name, loader="unsloth", reason=str(err).strip()) from err
    if not random_init:  # a random base has model.adapter merged already (load_base_model, in _random_base)
        base = merge_adapter(base, model)
    peft_model = FastLanguageModel.get_peft_model(
        base,
        **lora_kwargs(lora),
        use_gradient_checkpointing=checkpointing,
        random_state=seed,
        max_seq_length=model["max_seq_length"],
    )
    loaded = LoadedModel(peft_model, dtype_name, "cuda", random_init, fingerprint, peft_model.num_parameters())
    return ModelSetup(
        loaded=loaded,
        peft_config=None,  # get_peft_model already put the adapter on
        backend="unsloth",
        attention="unsloth (varlen attention over the packed_seq_lengths the collator hands it)",
        packing_safe=True,
        trainer_overrides={checkpointing_key(): False},  # unsloth checkpoints inside the model (above)
        packed_lengths_key="packed_seq_lengths",  # from the collator, on the CPU: no GPU sync to find them
        facts={"versions": _versions(), "gradient_checkpointing": checkpointing or False,
               "compile_cache": os.environ.get("UNSLOTH_COMPILE_LOCATION"), "random_base": random_base,
               "import_unsloth_s": IMPORT_SECONDS.get("unsloth")},
    )


def _random_base(model: dict, *, seed: int, folder: Path) -> tuple[str, str]:
    """Build the random-init base as the hf backend does; save it once; (folder, fingerprint)."""
    import gc

    loaded = load_base_model(model, seed=seed, device="cuda")  # built on the CPU from the seed
    stamp = folder / "ftc_fingerprint.txt"
    if not (stamp.exists() and stamp.read_text().strip() == loaded.fingerprint):
        loaded.model.save_pretrained(str(folder), safe_serialization=True)
        stamp.write_text(loaded.fingerprint + "\n")
    fingerprint = loaded.fingerprint
    del loaded
    gc.collect()
    return str(folder), fingerprint


def _versions() -> dict:
    from ftc.runtime.facts import versions

    return versions(("unsloth", "unsloth_zoo", "bitsandbytes", "triton"), python=False)
