"""GRPO's fast generation path: sample from the current policy with its LoRA merged into a
generation copy of the weights, with a static, compiled KV cache on CUDA.

Why (measured on the H200, ../shared/gpu/README.md): a GRPO step is generation, and
`model.generate` through an unmerged PEFT adapter is per-token launch overhead plus the
adapter's extra kernels: 25.4 s for the gsm8k_grpo batch, 2.3 s with the LoRA merged and a
static compiled cache. So:
- The copy is built once (`copy.deepcopy` of the PEFT model, `merge_and_unload`, and any
  forward a trainer patched onto the instance removed: see `_drop_forward_patches`): a plain
  transformers model, in eval mode, no gradients. Its memory is one more copy of the base.
- After every optimizer step (checked when a generation batch starts, like TRL's vLLM weight
  sync on `global_step`) each LoRA layer's merged weight, base + `get_delta_weight`, is written
  into the copy's Linear in place (`sync`); the seconds it takes are logged as
  `generation/merge_seconds`. In-place writes keep the tensors' addresses, so a compiled decode
  step stays valid.
- Decoding is transformers' own `generate` with the trainer's sampling settings; on CUDA over a
  static KV cache with compilation allowed (TRL turns it off for its own path). No hand-written
  decoder. The cache is ONE `StaticCache` for the run, as long as the longest prompt the plan
  allows (in PROMPT_BUCKET steps) plus max_completion_length, `reset()` and passed again on
  every call: transformers' own `cache_implementation="static"` allocates a new cache per call,
  sized to that call's prompt, so a longer prompt compiled the decode step again (about 45 s on
  the H200) and every call re-recorded its CUDA graph (measured: tests/bench/gpu_gen_probe.py).
- Only the samples come from the copy: the log-probabilities of the loss (and the old-policy
  ones) are computed by the training model, so the importance ratios stay exact.

`plan_generation` decides what runs and says why (run.json, the start line, the report).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from ftc.errors import FtcError

FAST = "fast"  # ftc's merged copy
GENERATE = "generate"  # TRL's own model.generate through the adapter
VLLM = "vllm"  # TRL's colocated vLLM


@dataclass(frozen=True)
class GenerationChoice:
    """What generates a GRPO run's completions, and why (run.json's grpo.generation)."""

    asked: str  # train.grpo.generation
    path: str  # FAST | GENERATE | VLLM
    reason: str


def plan_generation(asked: str, *, load_in_4bit: bool, world_size: int = 1, fsdp: str = "") -> GenerationChoice:
    """The path for `train.grpo.generation`, decided before any model loads. "vllm" without an
    importable vllm is FTC782. "auto" takes the fast path except where it does not apply: a
    4-bit base (merging into nf4 weights rounds the update away) and FSDP (`train.fsdp`: each rank
    holds a shard, and the copy would need the whole weights gathered). Under DDP (several
    processes, no FSDP) every rank holds the whole model, so each builds its own copy and generates
    for its own prompts; the copies stay alike because DDP keeps the adapters alike."""
    if asked == VLLM:
        try:
            import vllm  # noqa: F401
        except Exception as err:  # ImportError, or a vllm built for another torch failing at import
            raise FtcError("FTC782", path="train.grpo.generation", reason=" ".join(str(err).split())[:200]) from err
        return GenerationChoice(asked, VLLM, "asked for: TRL's colocated vLLM")
    if asked == GENERATE:
        return GenerationChoice(asked, GENERATE, "asked for: TRL's model.generate through the unmerged adapter")
    if load_in_4bit:
        return GenerationChoice(asked, GENERATE, "auto: the base is 4-bit, and merging the LoRA into nf4 weights would round it")
    if fsdp:
        return GenerationChoice(asked, GENERATE, f"auto: train.fsdp ({fsdp!r}) shards the weights, and the copy would need "
                                                 "them gathered on every rank")
    where = f", one copy on each of the {world_size} processes" if world_size > 1 else ""
    return GenerationChoice(asked, FAST, f"auto: LoRA merged into a generation copy, re-merged after every optimizer step{where}")


def for_plan(train: dict, model: dict, *, world_size: int = 1) -> GenerationChoice:
    """`plan_generation` for a plan's settings (`train.grpo.generation`, `model.load_in_4bit`,
    `train.fsdp`): the one place both the backend choice and GRPO's preparation ask."""
    return plan_generation(train["grpo"]["generation"], load_in_4bit=model["load_in_4bit"], world_size=world_size,
                           fsdp=train.get("fsdp") or "")


def for_backend(choice: GenerationChoice, backend: str) -> GenerationChoice:
    """`choice` once the backend is known. Under unsloth (which `auto` no longer picks for GRPO
    where the copy applies, see run.choose_backend) "auto" takes TRL's own generate. unsloth
    patches the Qwen2/Llama classes process-wide, so a merged copy runs unsloth's forward: on the
    H200 at the 1.5B shape it measured 19.4 s a step (generation 18.8 s, 217 tokens/s) against
    24.0 s with TRL's generate under unsloth and 3.0 s for the copy on the hf backend
    (BENCHMARKS.md, issue 13). The copy's greedy agreement with the training model is tested on
    the hf backend only, not under unsloth's patched classes, and 1.2x does not pay for that."""
    if backend == "unsloth" and choice.asked == "auto" and choice.path == FAST:
        return GenerationChoice(choice.asked, GENERATE, "auto: the unsloth backend (the merged copy would run unsloth's "
                                                        "patched classes, untested there; 19.4 s a step against 24.0 s "
                                                        "with TRL's generate, 3.0 s on --backend hf; BENCHMARKS.md)")
    return choice


PROMPT_BUCKET = 64  # prompt widths and the static cache's length go in these steps (see MergedGenerator.static_cache)


def bucketed(n: int) -> int:
    """`n` rounded up to a multiple of PROMPT_BUCKET."""
    return -(-n // PROMPT_BUCKET) * PROMPT_BUCKET


class MergedGenerator:
    """A generation copy of a PEFT model with its LoRA merged in, kept in step with the adapter."""

    def __init__(self, peft_model: Any, *, compile_cache: bool, max_prompt_length: int | None = None) -> None:
        """`compile_cache`: decode over one reused static cache with the step compiled (CUDA);
        `max_prompt_length`: the longest prompt the run feeds (the cache is sized for it once)."""
        t0 = time.perf_counter()
        self.copy = copy.deepcopy(peft_model).merge_and_unload()
        self.patches_dropped = _drop_forward_patches(self.copy)
        self.copy.eval()
        self.copy.requires_grad_(False)
        self.compile_cache = compile_cache
        self.max_prompt_length = max_prompt_length
        self.cache: Any = None  # the run's StaticCache, built at the first call (it needs the batch size)
        self.cache_shape: tuple[int, int] = (0, 0)  # (batch, max_cache_len) it was built for
        self.caches_built = 0
        self.synced_step: int | None = None
        self.build_seconds = time.perf_counter() - t0
        self.merge_seconds: list[float] = []
        self._targets = _lora_targets(peft_model, self.copy)

    def sync(self, peft_model: Any, step: int) -> float | None:
        """Write base + delta of every LoRA layer into the copy, once per optimizer step; seconds taken."""
        if self.synced_step == step:
            return None
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            for lora_layer, linear in self._targets:
                merged = lora_layer.base_layer.weight.detach().clone()
                for name in lora_layer.active_adapters:
                    if name in lora_layer.lora_A:
                        merged += lora_layer.get_delta_weight(name).to(merged.dtype)
                linear.weight.copy_(merged)
                if linear.bias is not None:  # lora.bias "all" / "lora_only" trains the biases too
                    linear.bias.copy_(lora_layer.base_layer.bias)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        self.synced_step = step
        self.merge_seconds.append(seconds)
        return seconds

    def generate(self, prompt_ids: list[list[int]], *, generation_kwargs: dict, eos_token_ids: list[int],
                 pad_token_id: int, device: Any) -> list[list[int]]:
        """Completion ids per prompt (left-padded batch, sampled with the trainer's settings), each cut
        after its first eos as TRL cuts its own."""
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompt_ids)
        if self.compile_cache:
            # Prompt widths in PROMPT_BUCKET steps: the prefill sees a few shapes, not one per step.
            width = bucketed(width)
        ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        kwargs = {k: v for k, v in generation_kwargs.items() if k != "cache_implementation"}
        extra: dict[str, Any] = {}
        if self.compile_cache:  # transformers compiles the decode step when the cache is a static one
            from transformers.generation.utils import ALL_CACHE_NAMES  # the keyword: past_key_values, later cache

            extra[ALL_CACHE_NAMES[0]] = self.static_cache(len(prompt_ids), width, kwargs["max_new_tokens"])
        config = GenerationConfig(**kwargs, disable_compile=not self.compile_cache)
        with torch.no_grad():
            out = self.copy.generate(input_ids=ids, attention_mask=mask, generation_config=config, **extra)
        return cut_after_eos(out[:, width:].tolist(), eos_token_ids)

    def static_cache(self, batch: int, width: int, max_new_tokens: int) -> Any:
        """The run's one StaticCache, reset for this call: same tensors, so the compiled decode step and
        its CUDA graph are reused. Rebuilt only when this batch does not fit it (another batch size,
        a prompt longer than the plan's max_prompt_length said)."""
        from transformers import StaticCache

        length = bucketed(max(width, self.max_prompt_length or 0)) + max_new_tokens
        if self.cache is not None:
            built_batch, built_length = self.cache_shape
            if built_batch == batch and built_length >= width + max_new_tokens:
                self.cache.reset()
                return self.cache
        self.cache, self.cache_shape = StaticCache(config=self.copy.config, max_cache_len=length), (batch, length)
        self.caches_built += 1
        return self.cache


def _drop_forward_patches(model: Any) -> list[str]:
    """Remove instance-level `forward` overrides from every module of the copy; the modules' names.

    Trainers patch the training model's forward in place: TRL's GRPOTrainer (`add_fused_lm_head`)
    sets `model.forward = MethodType(_fused_forward, model)`, whose closure calls the ORIGINAL
    model's bound forward. `deepcopy` rebinds the method to the copy but not the closure, so the
    copy's generate ran the training model, the LoRA unmerged (measured on the H200: two fp32
    LoRA GEMMs per Linear in every decode step, 40% of the GPU time). The copy only generates, so
    the class's own forward is the right one."""
    dropped = []
    for name, module in model.named_modules():
        if "forward" in vars(module):
            del module.forward
            dropped.append(name or "<root>")
    return dropped


def cut_after_eos(rows: list[list[int]], eos_token_ids: list[int]) -> list[list[int]]:
    """Each row up to and including its first eos (TRL's completion mask)."""
    eos, out = set(eos_token_ids), []
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
        out.append(row[: end + 1])
    return out


def _lora_targets(peft_model: Any, merged: Any) -> list[tuple[Any, Any]]:
    """(LoRA layer of the training model, the Linear it became in the merged copy), by module name."""
    from peft.tuners.lora import LoraLayer

    plain = dict(merged.named_modules())
    out = []
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            inner = name.split("base_model.model.", 1)[-1]  # PeftModel -> LoraModel -> the transformers model
            if inner not in plain:
                raise RuntimeError(f"the merged generation copy has no module {inner!r}")
            out.append((module, plain[inner]))
    return out
