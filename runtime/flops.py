"""Model FLOPs per trained token and MFU, the way BENCHMARKS.md states them.

LoRA training of a frozen base, per token:
    4 * N_linear   forward (2N) + the backward pass through the frozen weights for the
                   activations' gradient (2N); frozen weights get no weight gradient
  + 6 * N_lora     the adapters train fully: forward 2N, backward 4N
  + 12 * L * d_attn * c   attention scores and values (2 matmuls x 2 FLOPs x (1 fwd + 2 bwd)),
                   with c the mean causal context of a token inside its own sequence
N_linear counts every nn.Linear weight the forward multiplies by (the LM head too, 4-bit
layers by their logical shape); embeddings are lookups and count nothing. Activation
recomputation under gradient checkpointing is not counted: MFU measures useful work.

Peaks are dense bf16 rates. The H200/H100 figure is the one measured on the lent H200
(8192^3 bf16 matmul through PyTorch, 769-798 TFLOP/s on random data), not the datasheet's 989.
"""

from __future__ import annotations

from typing import Any, Iterable

# dense bf16 FLOP/s by a substring of torch.cuda.get_device_name(); first match wins
PEAK_BF16 = (
    ("H200", 790e12),  # measured on the lent H200 (see the module docstring)
    ("H100", 790e12),  # the same chip; datasheet 989e12
    ("A100", 312e12),  # datasheet
    ("L40S", 362e12),  # datasheet
    ("L4", 121e12),  # datasheet
    ("A10", 125e12),  # datasheet
)


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16:
        if key in device_name:
            return value
    return None


def mean_causal_context(lengths: Iterable[int]) -> float:
    """Token-weighted mean of the number of keys a token attends to within its own sequence."""
    total = pairs = 0
    for n in lengths:
        total += n
        pairs += n * (n + 1) // 2
    return pairs / total if total else 0.0


def count_parameters(model: Any) -> dict:
    """{"linear": base nn.Linear weights (incl. LM head), "lora": trainable adapter weights}."""
    import torch

    linear = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            linear += int(module.in_features) * int(module.out_features)
    lora = sum(int(p.numel()) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    return {"linear": linear, "lora": lora}


def attention_width(config: Any) -> tuple[int, int]:
    """(layers, query width) of a decoder config."""
    text = getattr(config, "text_config", None) or config
    layers = int(getattr(text, "num_hidden_layers"))
    heads = int(getattr(text, "num_attention_heads"))
    head_dim = getattr(text, "head_dim", None) or int(text.hidden_size) // heads
    return layers, heads * int(head_dim)


def flops_per_token(params: dict, layers: int, d_attn: int, context: float) -> float:
    return 4.0 * params["linear"] + 6.0 * params["lora"] + 12.0 * layers * d_attn * context


def model_flops(model: Any, context: float) -> dict:
    """The FLOPs/token fact for run.json, with its parts, for a (PEFT) causal LM."""
    params = count_parameters(model)
    layers, d_attn = attention_width(model.config)
    return {
        "flops_per_token": flops_per_token(params, layers, d_attn, context),
        "formula": "4*N_linear + 6*N_lora + 12*layers*d_attn*mean_causal_context",
        "n_linear": params["linear"],
        "n_lora": params["lora"],
        "layers": layers,
        "d_attn": d_attn,
        "mean_causal_context": round(context, 2),
    }


def flops_facts(model: Any, lengths: Iterable[int], *, device: str) -> dict:
    """run.json's "flops": FLOPs per token of `model` over sequences of `lengths`, and the GPU's peak (for MFU)."""
    flops = model_flops(model, mean_causal_context(lengths))
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
        flops["peak_flops"] = peak_flops(name)
        measured = flops["peak_flops"] and ("H200" in name or "H100" in name)
        flops["peak_note"] = f"dense bf16 of {name}" + (" (measured on the lent H200)" if measured else "")
    return flops


def mfu(tokens: int, seconds: float, flops: dict) -> float | None:
    """Model FLOPs utilization: real tokens per second x FLOPs per token over the peak; None without a peak."""
    if seconds <= 0 or not flops.get("peak_flops"):
        return None
    return round(tokens / seconds * flops["flops_per_token"] / flops["peak_flops"], 4)
