"""Load the base model the plan names, and describe the LoRA adapter to put on it.

The `model` and `lora` dicts are the resolved recipe sections (`compiler/recipe.schema.json`
`$defs.model` / `$defs.lora`, every default filled in by the compiler's resolver); their keys
are passed straight to transformers and PEFT, like torchtune's config keys are constructor
arguments. They are read as the resolver stored them, never re-defaulted here: a key the
resolver always writes is indexed (a missing one is a broken lock, and says so).

torch, transformers and peft are imported inside the functions: the CLI imports this module
to wire commands and must start without paying for them.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any

from ftc.compiler.tokenizer import OFFLINE_REASON, hub_kwargs
from ftc.errors import FtcError

# Attention paths that honour sequence boundaries in a packed row: transformers' mask
# builders (`masking_utils`) turn restarting position_ids into a block-diagonal causal mask
# for these when no 2D attention_mask and no cache is given; flash-attention reads them
# as varlen boundaries. Any other (custom) kernel would let packed rows see each other.
PACKING_SAFE_ATTENTION = frozenset({"sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"})


@dataclass(frozen=True)
class LoadedModel:
    """The base model plus the facts about it that run.json records."""

    model: Any  # transformers.PreTrainedModel
    dtype: str  # the torch dtype actually used, e.g. "float32"
    device: str  # "cuda" or "cpu"
    random_init: bool
    fingerprint: str  # sha256 of the weights when random_init, else ""
    num_parameters: int


def device_kind() -> str:
    """'cuda' when a GPU is visible, else 'cpu' (Trainer makes the same choice)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> str:
    """`auto` means the fastest dtype that trains well where we are: bf16 on GPUs that have it,
    fp16 on older GPUs, fp32 on the CPU (bf16 matmuls on a CPU are slow and lossy)."""
    if name != "auto":
        return name
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def weights_fingerprint(model: Any) -> str:
    """sha256 over every parameter (name, shape, float32 bytes), in name order.

    A random-init base is not saved (it can be a gigabyte); it is rebuilt from its config
    and seed, and this fingerprint proves the rebuild is the model the adapter was trained on.
    """
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_base_model(model: dict, *, seed: int, device: str | None = None) -> LoadedModel:
    """The base model of `model` (the resolved recipe section), ready for PEFT.

    init="pretrained" loads weights from a local folder or hub id; init="random" builds the
    architecture from `name`'s config.json plus `config` overrides with random weights drawn
    from `seed` on the CPU, so the same seed gives the same base on any machine.
    """
    import torch
    import transformers

    device = device or device_kind()
    dtype_name = resolve_dtype(model["dtype"], device)
    dtype = getattr(torch, dtype_name)
    name = model["name"]
    common = {"trust_remote_code": model["trust_remote_code"], "attn_implementation": "sdpa", **hub_kwargs(name)}
    if model["revision"]:
        common["revision"] = model["revision"]

    refuse_unloadable(model, device)
    if model["init"] == "random":
        try:
            config = model_config(model)  # config.json plus the plan's model.config overrides
        except (OSError, ValueError) as err:
            raise FtcError("FTC711", path="model.name", name=name, reason=str(err).strip()) from err
        print(
            f"ftc: WARNING model.init=random: {config.model_type} built from {name}'s config with RANDOM weights "
            f"(seed {seed}); this is not a pretrained model",
            file=sys.stderr,
        )
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            built = transformers.AutoModelForCausalLM.from_config(
                config, dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=common["trust_remote_code"]
            )
        finally:
            torch.random.set_rng_state(state)
        fingerprint = weights_fingerprint(built)  # of the base itself, before any adapter is merged in
        built = merge_adapter(built, model, fingerprint=fingerprint).to(dtype)  # merged in float32, then cast
        return LoadedModel(built, dtype_name, device, True, fingerprint, built.num_parameters())

    kwargs: dict[str, Any] = {**common, "dtype": dtype}
    if common.get("local_files_only"):  # its look-up of an adapter config ignores local_files_only otherwise
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    if model["load_in_4bit"]:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if dtype_name == "float32" else dtype,
        )
        kwargs["device_map"] = {"": 0}
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        reason = OFFLINE_REASON if hub_kwargs(name) else str(err).strip()
        raise FtcError("FTC713", path="model.name", name=name, loader="transformers", reason=reason) from err
    loaded = merge_adapter(loaded, model)
    return LoadedModel(loaded, dtype_name, device, False, "", loaded.num_parameters())


def refuse_unloadable(model: dict, device: str | None = None) -> None:
    """The checks that need no loading, made before any (`ftc run` calls it first thing, so a
    4-bit plan on a machine without CUDA is refused in a second, not after the tokenizer and
    the data were read): 4-bit quantizes trained weights, on a CUDA GPU, with bitsandbytes."""
    if not model["load_in_4bit"]:
        return
    if model["init"] == "random":
        raise FtcError("FTC710", path="model.load_in_4bit")
    if (device or device_kind()) != "cuda":
        raise FtcError("FTC712", missing="a CUDA GPU (bitsandbytes runs there)")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise FtcError("FTC712", missing="the bitsandbytes package")


def merge_adapter(base: Any, model: dict, *, fingerprint: str = "") -> Any:
    """`base` with `model.adapter` (the earlier run a plan starts from) merged into its weights; `base`
    itself when the plan names none. Merged, not stacked: the first adapter is frozen anyway, so
    merging gives the same function while the training graph (and GRPO's generation, its cost)
    carries one adapter's kernels, not two; and `ftc infer`/`eval`/`export` of the later run load
    the base through this same function, so every command sees the same weights. A run folder
    whose own run started from an adapter has that one merged first (a chain SFT -> SFT -> GRPO).

    Refused: an adapter changed since the lock fingerprinted it (FTC783; `ftc run` refuses it
    earlier, FTC520), a run folder trained on another random-init base (FTC781, by the
    fingerprint of `base`'s weights), and an adapter that does not fit the base (FTC780)."""
    folder = model.get("adapter")  # .get: a lock of an ftc before model.adapter has no such key
    if not folder:
        return base
    import json
    from pathlib import Path

    from peft import PeftModel

    from ftc.compiler.inputs import adapter_changes

    folder = Path(folder)
    changed = adapter_changes(folder, model["adapter_files"])
    if changed:
        raise FtcError("FTC783", file=str(folder), changed=", ".join(changed))
    run_file = folder / "run.json"
    if run_file.is_file():
        facts = json.loads(run_file.read_text(encoding="utf-8"))
        expected = facts["model"].get("fingerprint", "")
        if fingerprint and expected and expected != fingerprint:
            raise FtcError("FTC781", path="model.adapter", folder=str(folder), expected=expected[:12], got=fingerprint[:12])
        base = merge_adapter(base, facts["settings"]["model"], fingerprint=fingerprint)
    try:
        peft_model = PeftModel.from_pretrained(base, str(folder))
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, target modules not in the base
        reason = " ".join(str(err).split())[:300]
        raise FtcError("FTC780", path="model.adapter", folder=str(folder), reason=reason) from err
    return peft_model.merge_and_unload()


def model_config(model: dict) -> Any:
    """The transformers config of the plan's model (its config.json plus `model.config`
    overrides for init=random), read without loading any weights."""
    import transformers

    kwargs: dict[str, Any] = {"trust_remote_code": model["trust_remote_code"], **hub_kwargs(model["name"])}
    if model["revision"]:
        kwargs["revision"] = model["revision"]
    config = transformers.AutoConfig.from_pretrained(model["name"], **kwargs)
    if model["init"] == "random":
        config = _override_config(config, model["config"])
    return config


def _override_config(config: Any, overrides: dict) -> Any:
    """The config with `overrides`, rebuilt through its class so that per-layer lists that
    follow num_hidden_layers (layer_types) are derived again instead of kept at the old size."""
    values = {**config.to_dict(), **overrides}
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        values.pop("layer_types", None)
    return type(config).from_dict(values)


def lora_kwargs(lora: dict) -> dict[str, Any]:
    """The resolved `lora` section as LoRA keywords (LoraConfig's own names; unsloth's
    get_peft_model takes the same), so both backends read the plan the same way."""
    target = lora["target_modules"]
    return dict(
        r=int(lora["r"]),
        lora_alpha=float(lora["lora_alpha"]),
        lora_dropout=float(lora["lora_dropout"]),
        target_modules=target if isinstance(target, str) else list(target),
        bias=lora["bias"],
        use_rslora=bool(lora["use_rslora"]),
    )


def lora_config(lora: dict) -> Any:
    """peft.LoraConfig from the resolved `lora` section."""
    from peft import LoraConfig

    return LoraConfig(**lora_kwargs(lora), task_type="CAUSAL_LM")


@dataclass(frozen=True)
class ModelSetup:
    """What a backend (backend_hf.py, backend_unsloth.py) hands the run skeleton: the model and how to train it.

    `loaded.model` is the base model when `peft_config` is given (the trainer adds LoRA, the
    hf backend) or a model that already carries its adapters (unsloth's get_peft_model).
    """

    loaded: LoadedModel
    peft_config: Any | None
    backend: str
    attention: str  # what computes attention; run.json records it
    packing_safe: bool  # whether that kernel keeps packed rows apart
    trainer_overrides: dict = field(default_factory=dict)  # SFTConfig/GRPOConfig fields the backend decides
    packed_lengths_key: str | None = None  # the forward kwarg that takes packed rows' lengths, if any
    facts: dict = field(default_factory=dict)  # extra run.json facts under "backend_facts"


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer the compiler used, through the compiler's one loader (`ftc.compiler.tokenizer`),
    with a pad token: the Trainer's collator pads with it, and a tokenizer without one pads with
    eos. (Only here, not in the compiler's loader: the lock records the tokenizer's own pad id.)"""
    from ftc.compiler.tokenizer import load_tokenizer as load

    tok, _ = load(path, revision, trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def align_pad_token(model: Any, tokenizer: Any) -> None:
    """The model's config and generation config told the pad id the tokenizer pads with (see
    `load_tokenizer`). The Trainer makes the same change when training starts, but logs a warning
    on every run whose model config names no pad token (Qwen2.5's does not): the choice is ftc's,
    so ftc makes it here. BOS/EOS are left to the Trainer, whose warning there is news."""
    pad = tokenizer.pad_token_id
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if pad is None or getattr(config, "pad_token_id", None) == pad:
        return
    config.pad_token_id = pad
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = pad
