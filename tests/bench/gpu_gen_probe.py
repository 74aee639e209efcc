#!/usr/bin/env python3
"""Where GRPO's fast generation loses time, measured in one process (issue 13; a script, pytest does not collect it).

The standalone measurement (../shared/gpu/README.md) gave 2.34 s for 8 x 512 new tokens with the LoRA
merged and a static, compiled cache; `ftc run` of the same work spends 4.4-4.6 s a step in
`MergedGenerator.generate`. This probe builds the bench's 1.5B-shaped model (.bench/grpo, from
`gpu_grpo.py prepare`) with the recipe's LoRA, one `MergedGenerator`, and times `generate` under one
change at a time, with torch.compile's counters (graphs compiled, recompiles) after each call:
  exact      prompt width exact (PROMPT_BUCKET 1), the fewest sampling settings
  exact_trl  the same width, TRL's generation kwargs (top_p, top_k, min_p, repetition_penalty, bos)
  bucket     width padded to a multiple of 64 (what ftc does), TRL's kwargs
  alternate  two prompt lengths whose buckets differ (192 / 256), one after the other
  synced     after the LoRA changed and `sync` wrote it into the copy (an optimizer step)
  trained    after a forward + backward of the training model (what a GRPO step does in between)
  eager      the same static cache without compiling the decode step
Writes probe.json under --out. Device side: python3 tests/bench/gpu_gen_probe.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("FTC_PROBE_WORK", ROOT / ".bench" / "grpo"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--new", type=int, default=512, help="new tokens per completion")
    args = p.parse_args()
    import pyarrow.parquet as pq
    import torch
    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ftc.runtime import generation

    lock = json.loads((WORK / "auto.lock").read_text())
    lora = lock["settings"]["lora"]
    tok = AutoTokenizer.from_pretrained(WORK / "tok")
    # the compiled prompt ids, what ftc feeds the generator
    prompts = pq.read_table(WORK / lock["artifacts"]["tokens"]["train"]["path"]).column("input_ids").to_pylist()
    short = next(p for p in prompts if len(p) <= 192)  # bucket 192
    long = next((p for p in prompts if 192 < len(p) <= 256), short + short[-(200 - len(short)):])  # bucket 256
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(WORK / "model"), dtype=torch.bfloat16,
                                            attn_implementation="sdpa").to(dev)
    model = get_peft_model(base, LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=0.0,
                                            target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    gen = generation.MergedGenerator(model, compile_cache=dev == "cuda")
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    minimal = {"max_new_tokens": args.new, "do_sample": True, "temperature": 1.0, "pad_token_id": tok.pad_token_id,
               "eos_token_id": eos}
    trl = {**minimal, "bos_token_id": tok.bos_token_id, "top_p": 1.0, "top_k": 0, "min_p": None,
           "repetition_penalty": 1.0, "cache_implementation": None}
    results: list[dict] = []

    def timed(label: str, batch: list[list[int]], kwargs: dict, calls: int, compile_cache: bool = True) -> None:
        gen.compile_cache = compile_cache and dev == "cuda"
        for i in range(calls):
            before = {k: dict(v) for k, v in counters.items()}
            sync()
            t0 = time.perf_counter()
            out = gen.generate(batch, generation_kwargs=kwargs, eos_token_ids=eos, pad_token_id=tok.pad_token_id, device=dev)
            sync()
            s = time.perf_counter() - t0
            new = sum(len(o) for o in out)
            delta = {f"{k}.{n}": c - before.get(k, {}).get(n, 0) for k, v in counters.items() for n, c in v.items()
                     if c != before.get(k, {}).get(n, 0)}
            row = {"label": label, "call": i + 1, "width": max(len(b) for b in batch), "bucket": generation.PROMPT_BUCKET,
                   "seconds": round(s, 3), "new_tokens": new, "tokens_per_s": round(new / s, 1),
                   "dynamo": {k: v for k, v in delta.items() if k.split(".")[0] in ("stats", "recompiles", "inductor", "graph_break")}}
            results.append(row)
            print(json.dumps(row)[:500], flush=True)

    batch = [short] * 8
    generation.PROMPT_BUCKET = 1
    timed("exact", batch, minimal, args.calls)
    timed("exact_trl", batch, trl, 2)
    generation.PROMPT_BUCKET = 64
    timed("bucket", batch, trl, args.calls)
    timed("alternate_256", [long] * 8, trl, 2)
    timed("alternate_192", batch, trl, 2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)
    merge = gen.sync(model, 1)
    timed("synced", batch, trl, 2)
    model.train()
    ids = torch.tensor([short + short[:100]] * 8, device=dev)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    del loss
    timed("trained", batch, trl, 2)
    timed("eager", batch, trl, 1, compile_cache=False)
    facts = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "merge_seconds": merge,
             "copy_build_seconds": gen.build_seconds, "short_len": len(short), "long_len": len(long),
             "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None, "results": results}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe.json").write_text(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main()
