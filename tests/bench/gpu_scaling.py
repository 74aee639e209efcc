#!/usr/bin/env python3
"""The same plan on 1 and on 2 GPUs (a script; pytest does not collect it).

LoRA r=16 on all linear layers, seq 2048, packed real medical data, a Qwen2.5-1.5B-shaped
model with random weights. The plan's global batch (4 packs x 2 accumulation = 8 packs
of 2048 tokens) is the same in both runs: on 2 GPUs each rank accumulates 1.

CPU side (writes .scal/, git-ignored):
    .venv/bin/python tests/bench/gpu_scaling.py prepare
Device side (nvidia-h200-x2; see BENCHMARKS.md for the exact command):
    python3 tests/bench/gpu_scaling.py run --steps 30 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCAL = ROOT / ".scal"
SHAPE = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


def prepare() -> None:
    shutil.rmtree(SCAL, ignore_errors=True)
    (SCAL / "recipes").mkdir(parents=True)
    shutil.copytree(ROOT / "templates", SCAL / "templates")
    shutil.copytree(ROOT.parent / "shared/tokenizers/qwen2.5-bpe", SCAL / "tok")
    model = SCAL / "model"
    model.mkdir()
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_position_embeddings": 32768,
           "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "torch_dtype": "bfloat16",
           "bos_token_id": 151643, "eos_token_id": 151645, **SHAPE}
    (model / "config.json").write_text(json.dumps(cfg, indent=2))
    recipe = json.loads((ROOT / "recipes/medical.json").read_text(encoding="utf-8"))
    recipe["sources"]["medical"]["path"] = str(Path(os.path.relpath(ROOT.parent / "shared/data/medical", SCAL / "recipes")))
    (SCAL / "recipes/medical.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    sets = ["model.name=.scal/model", "model.init=random", "model.tokenizer=.scal/tok", "model.max_seq_length=2048",
            "model.load_in_4bit=false", "model.dtype=bfloat16", "train.packing=true", "train.optim=adamw_torch",
            "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2", "train.logging_steps=1",
            "train.save_steps=1000", "train.gradient_checkpointing=true", "train.learning_rate=1e-4", "split.eval=0"]
    cmd = [sys.executable, "-m", "ftc", "compile", str(SCAL / "recipes/medical.json"), "-o", str(SCAL / "plan.lock"), "-q"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(subprocess.run(["du", "-sh", str(SCAL)], capture_output=True, text=True).stdout)


def run(steps: int, out: Path, gpu_counts: tuple[int, ...] = (1, 2)) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for gpus in gpu_counts:
        run_dir = Path(f"/tmp/scal-run-{gpus}")
        shutil.rmtree(run_dir, ignore_errors=True)
        t = time.time()
        cmd = [sys.executable, "-m", "ftc", "run", str(SCAL / "plan.lock"), "--backend", "hf", "--gpus", str(gpus),
               "--max-steps", str(steps), "--output", str(run_dir)]
        with open(out / f"log-{gpus}.txt", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wall = time.time() - t
        facts = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()] if (run_dir / "metrics.jsonl").exists() else []
        losses = [m["loss"] for m in metrics if "loss" in m]
        tps = [m["tokens_per_second"] for m in metrics if "tokens_per_second" in m and "loss" in m]
        warm = tps[5:] or tps  # after warm-up
        results[gpus] = {"rc": rc, "wall_s": round(wall, 1), "losses": losses,
                         "tokens_per_second_rank0_median": sorted(warm)[len(warm) // 2] if warm else None,
                         "distributed": facts.get("distributed"), "peak_memory": facts.get("peak_memory"),
                         "throughput_tokens_per_second": facts.get("throughput_tokens_per_second")}
        shutil.copy(run_dir / "metrics.jsonl", out / f"metrics-{gpus}.jsonl") if (run_dir / "metrics.jsonl").exists() else None
        print(f"gpus={gpus} rc={rc} wall={wall:.0f}s losses={[round(x, 3) for x in losses]}", flush=True)
    one, two = results.get(1), results.get(2)
    if one and two and one["losses"] and two["losses"]:
        n = min(len(one["losses"]), len(two["losses"]))
        diffs = [abs(a - b) / a for a, b in zip(one["losses"][:n], two["losses"][:n])]
        results["max_rel_loss_diff"] = max(diffs)
        r1, r2 = one["tokens_per_second_rank0_median"], two["tokens_per_second_rank0_median"]
        if r1 and r2:
            results["scaling_total_over_one"] = round(2 * r2 / r1, 3)  # 2 ranks x rank-0 rate over 1 GPU
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k in ("max_rel_loss_diff", "scaling_total_over_one")}))
    for g in gpu_counts:
        r = results[g]
        print(f"{g} GPU: rank-0 tok/s {r['tokens_per_second_rank0_median']}, total {r['distributed'] and r['distributed'].get('tokens_per_second_total')}, peak {r['peak_memory']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["prepare", "run"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="/tmp/scal-out")
    ap.add_argument("--gpu-counts", default="1,2")
    a = ap.parse_args()
    prepare() if a.what == "prepare" else run(a.steps, Path(a.out), tuple(int(x) for x in a.gpu_counts.split(",")))
