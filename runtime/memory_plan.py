"""Does a LoRA run fit on this GPU without gradient checkpointing? An estimate, recorded in run.json.

On an H200 memory, not arithmetic, decides the fastest setting: checkpointing recomputes
every layer's forward in the backward pass (about a third more work), so it should be on
only when the activations would not fit. The lock is the truth, so the runtime does not
override `train.gradient_checkpointing`; it estimates the peak with and without it from
the model's shape, the plan's micro-batch and the GPU's memory, records the estimate and
the recommended setting, and says so when the plan chose otherwise.

Per token and decoder layer, a bf16 forward keeps about 2 bytes x (10 h + 3.5 i) for the
backward (h hidden, i MLP width: norm inputs, q/k/v and rope copies, attention output, the
MLP's gate, up, activation and product); unsloth's fused kernels keep about 0.7 of that.
Both factors are fitted to the peaks measured on the H200 (BENCHMARKS.md, Qwen2.5-7B shape,
2 packs of 2048 tokens, no checkpointing): hf 43.4 GiB measured / 44.5 estimated, unsloth
31.9 / 32.0, unsloth QLoRA 21.5 / 23.2. With checkpointing only each layer's input (2 h
bytes) stays, plus one layer's activations while it is recomputed; unsloth also offloads
those inputs to the CPU. The loss adds the logits of a micro-batch (bf16, an fp32 copy and
its gradient) unless the backend chunks the cross-entropy (unsloth does).
"""

from __future__ import annotations

from typing import Any

GIB = 2**30
HEADROOM = 0.85  # of the GPU's memory: allocator fragmentation, CUDA context, spikes


def _shape(config: Any) -> dict:
    c = getattr(config, "text_config", None) or config
    h, layers = int(c.hidden_size), int(c.num_hidden_layers)
    heads = int(c.num_attention_heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads)
    hd = int(getattr(c, "head_dim", None) or h // heads)
    i = int(c.intermediate_size)
    vocab = int(c.vocab_size)
    tied = bool(getattr(c, "tie_word_embeddings", False))
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * i
    return {"h": h, "layers": layers, "i": i, "vocab": vocab, "kv_width": kv * hd, "q_width": heads * hd,
            "layer_params": per_layer * layers, "embed_params": vocab * h * (1 if tied else 2)}


def lora_params(config: Any, r: int, targets: list[str] | str) -> int:
    s = _shape(config)
    h, i, q, kv = s["h"], s["i"], s["q_width"], s["kv_width"]
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    names = list(dims) if isinstance(targets, str) else [t for t in targets if t in dims]
    return s["layers"] * sum(r * (a + b) for a, b in (dims[n] for n in names))


def estimate(config: Any, *, tokens_per_micro_batch: int, lora_r: int = 16, lora_targets: list[str] | str = "all-linear",
             load_in_4bit: bool = False, backend: str = "hf") -> dict:
    """Peak GiB with and without gradient checkpointing, and its parts."""
    s = _shape(config)
    t = tokens_per_micro_batch
    weights = (s["layer_params"] * 0.5625 if load_in_4bit else s["layer_params"] * 2) + s["embed_params"] * 2
    adapters = lora_params(config, lora_r, lora_targets) * 16  # fp32 weight, grad, two Adam moments
    per_token_layer = 2 * (10 * s["h"] + 3.5 * s["i"]) * (0.7 if backend == "unsloth" else 1.0)
    full = s["layers"] * t * per_token_layer
    kept_inputs = 0 if backend == "unsloth" else s["layers"] * t * s["h"] * 2
    checkpointed = kept_inputs + 2 * t * per_token_layer  # one layer recomputed, plus its gradients
    logits = 0 if backend == "unsloth" else t * s["vocab"] * 10
    fixed = weights + adapters + logits + 1.5 * GIB
    return {
        "no_checkpointing_gib": round((fixed + full) / GIB, 1),
        "checkpointing_gib": round((fixed + checkpointed) / GIB, 1),
        "weights_gib": round(weights / GIB, 1),
        "activations_no_checkpointing_gib": round(full / GIB, 1),
        "logits_gib": round(logits / GIB, 1),
        "tokens_per_micro_batch": t,
    }


def advise(config: Any, *, gpu_gib: float | None, tokens_per_micro_batch: int, used_checkpointing: bool,
           lora_r: int = 16, lora_targets: list[str] | str = "all-linear", load_in_4bit: bool = False,
           backend: str = "hf") -> dict:
    """The run.json fact: estimate, recommendation, what the plan used, and a hint when they differ."""
    est = estimate(config, tokens_per_micro_batch=tokens_per_micro_batch, lora_r=lora_r, lora_targets=lora_targets,
                   load_in_4bit=load_in_4bit, backend=backend)
    out: dict[str, Any] = {"gpu_gib": round(gpu_gib, 1) if gpu_gib else None, "estimate": est,
                           "used": {"gradient_checkpointing": used_checkpointing}, "headroom": HEADROOM}
    if not gpu_gib:
        out["recommended"] = None
        return out
    fits = est["no_checkpointing_gib"] <= HEADROOM * gpu_gib
    out["recommended"] = {"gradient_checkpointing": not fits}
    if fits and used_checkpointing:
        out["hint"] = (f"this run fits without gradient checkpointing (about {est['no_checkpointing_gib']} GiB of "
                       f"{gpu_gib:.0f}): compile with train.gradient_checkpointing=false for about a third less work per step")
    elif not fits and not used_checkpointing:
        out["hint"] = (f"without gradient checkpointing this run needs about {est['no_checkpointing_gib']} GiB, more than "
                       f"{HEADROOM:.0%} of {gpu_gib:.0f}: if it runs out of memory, compile with train.gradient_checkpointing=true")
    return out
