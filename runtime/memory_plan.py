"""Gradient checkpointing and the micro-batch from the model's size and the GPU's memory.

On an H200 memory, not arithmetic, decides the fastest setting: checkpointing recomputes
every layer's forward in the backward pass (about a third more work), so it should be on
only when the activations would not fit, and a larger micro-batch (fewer accumulation
steps for the same batch) runs faster while it fits. `train.gradient_checkpointing` and
`train.micro_batch` are "auto" by default: the runtime estimates the peak from the model's
shape, the micro-batch and the GPU it finds (without one, the machine's RAM), and picks
(see `advise`). The reviewed batch (per_device_train_batch_size x gradient_accumulation_steps)
never changes, only how it is cut. Values set in the plan are used as written, with a hint
when the estimate disagrees.
run.json's `memory_plan` records the estimate, the settings, what was used and why.

Per token and decoder layer, a bf16 forward keeps about 2 bytes x (10 h + 3.5 i) for the
backward (h hidden, i MLP width: norm inputs, q/k/v and rope copies, attention output, the
MLP's gate, up, activation and product); unsloth's fused kernels keep about 0.7 of that.
Both factors are fitted to the peaks measured on the H200 (BENCHMARKS.md, Qwen2.5-7B shape,
2 packs of 2048 tokens, no checkpointing): hf 43.4 GiB measured / 44.5 estimated, unsloth
31.9 / 31.6, unsloth QLoRA 21.5 / 23.2; at 4 and 8 packs unsloth measured 48.4 / 46.8 and
80.7 / 77.4 (the estimate runs about 4% low there, inside the 15% headroom). With
checkpointing only each layer's input (2 h bytes) stays, plus one layer's activations while it is recomputed; unsloth also offloads
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
             load_in_4bit: bool = False, backend: str = "hf", dtype_bytes: int = 2) -> dict:
    """Peak GiB with and without gradient checkpointing, and its parts. `dtype_bytes`: 2 for
    bf16/fp16, 4 for float32 (the CPU's default)."""
    s = _shape(config)
    t = tokens_per_micro_batch
    weights = (s["layer_params"] * 0.5625 if load_in_4bit else s["layer_params"] * dtype_bytes) + s["embed_params"] * dtype_bytes
    adapters = lora_params(config, lora_r, lora_targets) * 16  # fp32 weight, grad, two Adam moments
    per_token_layer = dtype_bytes * (10 * s["h"] + 3.5 * s["i"]) * (0.7 if backend == "unsloth" else 1.0)
    full = s["layers"] * t * per_token_layer
    kept_inputs = 0 if backend == "unsloth" else s["layers"] * t * s["h"] * dtype_bytes
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


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def advise(config: Any, *, gpu_gib: float | None, tokens_per_item: int, micro_batch: int, accumulation: int = 1,
           checkpointing: bool | str = "auto", split: str = "plan", lora_r: int = 16,
           lora_targets: list[str] | str = "all-linear", load_in_4bit: bool = False, backend: str = "hf",
           ram_gib: float | None = None, dtype_bytes: int = 2) -> dict:
    """Gradient checkpointing and the micro-batch for this GPU: the run.json fact.

    `checkpointing` is the plan's train.gradient_checkpointing (True, False or "auto");
    `split` its train.micro_batch ("auto" or "plan"). The per-device batch of an optimizer
    step, micro_batch x accumulation items, never changes; "auto" only cuts it into fewer,
    larger micro-batches (or more, smaller ones when the planned one would not fit). The
    Trainer normalizes the loss by the tokens of the whole accumulated batch, so the
    samples and the loss of every step are the same either way; larger micro-batches are
    faster on a GPU with room (BENCHMARKS.md: 7B shape on an H200, 2 x 4 packs 11.8k tok/s,
    8 x 1 14.4k tok/s).

    Preference under "auto": no checkpointing with the largest micro-batch that fits;
    else checkpointing with the largest micro-batch that fits. Without a GPU the machine's
    RAM (`ram_gib`) is the budget and the plan's split is kept (a larger micro-batch is not
    faster on a CPU); with neither, checkpointing is off under "auto"."""
    batch = micro_batch * accumulation
    on_gpu = bool(gpu_gib)
    cut = split if on_gpu else "plan"  # how the batch may be cut here
    memory = gpu_gib if on_gpu else ram_gib
    budget = HEADROOM * memory if memory else None
    kw = dict(lora_r=lora_r, lora_targets=lora_targets, load_in_4bit=load_in_4bit, backend=backend, dtype_bytes=dtype_bytes)

    def peak(m: int, ckpt: bool) -> float:
        est = estimate(config, tokens_per_micro_batch=m * tokens_per_item, **kw)
        return est["checkpointing_gib" if ckpt else "no_checkpointing_gib"]

    def largest(ckpt: bool) -> int | None:
        sizes = _divisors(batch) if cut == "auto" else [micro_batch]
        return next((m for m in sizes if peak(m, ckpt) <= budget), None)

    out: dict[str, Any] = {"gpu_gib": round(gpu_gib, 1) if gpu_gib else None, "headroom": HEADROOM,
                           "ram_gib": None if on_gpu or not ram_gib else round(ram_gib, 1),
                           "setting": {"gradient_checkpointing": checkpointing, "micro_batch": split},
                           "plan": {"per_device_train_batch_size": micro_batch, "gradient_accumulation_steps": accumulation}}
    why = []
    if budget is None:
        ckpt = checkpointing is True
        m = micro_batch
        why.append("no GPU and no RAM size: the plan's split" + ("; checkpointing off" if checkpointing == "auto" else ""))
    else:
        options = [False, True] if checkpointing == "auto" else [bool(checkpointing)]
        ckpt, m = options[-1], None
        for option in options:
            m = largest(option)
            if m is not None:
                ckpt = option
                break
        where = f"the GPU's {gpu_gib:.0f} GiB" if on_gpu else f"the machine's {ram_gib:.0f} GiB of RAM (no GPU)"
        if m is None:  # nothing fits by the estimate: the smallest step there is, and say so
            m = 1 if cut == "auto" else micro_batch
            out["hint"] = (f"by the estimate even {m} item(s) per micro-batch need about {peak(m, ckpt)} GiB, more than "
                           f"{HEADROOM:.0%} of {where}: it may run out of memory")
        limit = f"{HEADROOM:.0%} of {where}"
        why.append(f"about {peak(m, ckpt)} GiB {'with' if ckpt else 'without'} checkpointing at {m} x {batch // m}, within {limit}"
                   if peak(m, ckpt) <= budget else f"about {peak(m, ckpt)} GiB at {m} x {batch // m}, over {limit}")
        if checkpointing == "auto" and ckpt:
            why.append(f"without checkpointing even the smallest micro-batch tried needs about {peak(m if cut == 'plan' else 1, False)} GiB")
        if checkpointing is True and largest(False) is not None:
            out["hint"] = ("this run fits without gradient checkpointing: train.gradient_checkpointing=\"auto\" (or false) "
                           "saves about a third of the work per step")
    out["used"] = {"gradient_checkpointing": ckpt, "per_device_train_batch_size": m, "gradient_accumulation_steps": batch // m}
    out["reason"] = "; ".join(why)
    out["estimate"] = estimate(config, tokens_per_micro_batch=m * tokens_per_item, **kw)
    return out


def plan_memory(model: dict, lora: dict, train: dict, *, tokens_per_item: int, backend: str, can_split: bool = True) -> dict:
    """advise() for this machine and the plan's resolved sections, before the model loads (the
    backend needs the answer to load it). The model's shape comes from its config.json;
    when that cannot be read, "auto" keeps checkpointing on and the plan's split.
    `can_split=False` (GRPO, whose batch is a group of completions) keeps the plan's split."""
    checkpointing = train["gradient_checkpointing"]
    split = train["micro_batch"] if can_split else "plan"
    micro = train["per_device_train_batch_size"]
    accum = train["gradient_accumulation_steps"]
    gpu_gib = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    except ImportError:
        pass
    from ftc.runtime.model import model_config, resolve_dtype

    dtype_bytes = 4 if resolve_dtype(model["dtype"], "cuda" if gpu_gib else "cpu") == "float32" else 2
    try:
        config = model_config(model)
    except Exception as err:  # noqa: BLE001  (loading the model reports the real problem next)
        return {"gpu_gib": round(gpu_gib, 1) if gpu_gib else None, "estimate": None,
                "setting": {"gradient_checkpointing": checkpointing, "micro_batch": split},
                "plan": {"per_device_train_batch_size": micro, "gradient_accumulation_steps": accum},
                "used": {"gradient_checkpointing": True if checkpointing == "auto" else bool(checkpointing),
                         "per_device_train_batch_size": micro, "gradient_accumulation_steps": accum},
                "reason": f"the model's config could not be read ({type(err).__name__}), so no estimate: the plan's split"
                          + ("; auto keeps checkpointing on" if checkpointing == "auto" else "")}
    out = advise(config, gpu_gib=gpu_gib, tokens_per_item=tokens_per_item, micro_batch=micro, accumulation=accum,
                 checkpointing=checkpointing, split=split, lora_r=lora["r"],
                 lora_targets=lora["target_modules"], load_in_4bit=model["load_in_4bit"],
                 backend=backend, ram_gib=None if gpu_gib else _ram_gib(), dtype_bytes=dtype_bytes)
    if not can_split:
        out["reason"] += "; GRPO keeps the plan's split (a batch is a group of completions)"
    return out


def _ram_gib() -> float | None:
    """The machine's physical memory (the budget of a run without a GPU)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return None


def apply(model: dict, lora: dict, train: dict, *, tokens_per_item: int, backend: str, can_split: bool = True,
          announce: bool = True) -> tuple[dict, dict]:
    """(train with the chosen checkpointing and split, the run.json memory_plan); prints the
    choice when `announce` (the main process)."""
    memory = plan_memory(model, lora, train, tokens_per_item=tokens_per_item, backend=backend, can_split=can_split)
    if announce:
        import sys

        used = memory["used"]
        print(f"ftc: gradient checkpointing {'on' if used['gradient_checkpointing'] else 'off'}, micro-batch "
              f"{used['per_device_train_batch_size']} x {used['gradient_accumulation_steps']} accumulation ({memory['reason']})"
              + (f"; hint: {memory['hint']}" if memory.get("hint") else ""), file=sys.stderr)
    return {**train, **memory["used"]}, memory
