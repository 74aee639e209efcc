#!/usr/bin/env python3
"""GPU benchmark of DPO: ftc (unsloth and hf backends) against plain TRL DPOTrainer + PEFT by hand.

recipes/dpo.json (LLaMA-Factory's dpo_en_demo pairs, LoRA r=8 on all linear layers, seq 2048,
batch 1 x 8) on a Qwen2 with random weights of the Qwen2.5-7B shape (gpu_bench.py's make-model).
One process per variant, in one device call:
  u   ftc run --backend unsloth   (the compiled ids, TRL DPOTrainer under unsloth)
  h   ftc run --backend hf        (the compiled ids, TRL DPOTrainer + PEFT, reference = adapter off)
  t   the usual way, by hand: TRL DPOTrainer + PEFT LoraConfig on the same pairs as TRL's
      conversational dataset (TRL tokenizes), gradient checkpointing on, bf16, the same seed
Each reports real (non-padding) tokens/s over the steps after the warm-up, peak GPU memory and
the first losses (the three must agree: same pairs, same order, same weights).

CPU side (writes .bench/dpo-<shape>.lock and the tokenizer copy; prints what to carry):
  .venv/bin/python tests/bench/gpu_dpo.py prepare --shape 7b
Device side:
  python3 tests/bench/gpu_dpo.py run --shape 7b --out $OUT --steps 12 --warmup 2
CPU smoke test of the whole thing (tiny shape, seq 128, hf and TRL only):
  .venv/bin/python tests/bench/gpu_dpo.py --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import BENCH, ROOT, SHAPES, WORK, log, model_dir  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lock_path(shape: str) -> Path:
    return BENCH / f"dpo-{shape}.lock"


def prepare(args) -> None:
    """Compile recipes/dpo.json for the shape's random model (the folder make-model writes on the device)."""
    import shutil

    BENCH.mkdir(exist_ok=True)
    tok = BENCH / "tok"
    if not tok.exists():
        shutil.copytree(ROOT.parent / "shared" / "tokenizers" / "qwen2.5-bpe", tok)
    seq = 128 if args.shape == "tiny" else 2048
    cmd = [sys.executable, "-m", "ftc", "compile", str(ROOT / "recipes" / "dpo.json"), "-o", str(lock_path(args.shape)),
           "--set", f"model.name={model_dir(args.shape)}", "--set", f"model.tokenizer={tok}",
           "--set", f"model.max_seq_length={seq}"]
    subprocess.run(cmd, check=True)
    log(f"carry: .bench (lock, artifacts under .bench and recipes/.ftc, tokenizer); lock {lock_path(args.shape)}")


def pairs_of(lock: dict) -> list[dict]:
    """The lock's train pairs as TRL's conversational dataset, in the artifact's order."""
    import pyarrow.parquet as pq

    recipe_dir = (Path(lock["_path"]).parent / lock["recipe"]["path"]).parent
    table = pq.read_table(recipe_dir / lock["artifacts"]["data"]["train"]["path"])
    text = lambda v: v if isinstance(v, str) else v.get("value", v.get("content"))  # noqa: E731
    return [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": text(r["chosen"])}],
             "rejected": [{"role": "assistant", "content": text(r["rejected"])}]} for r in table.to_pylist()]


def variant_trl(args) -> None:
    """Plain TRL DPOTrainer + PEFT, written as its documentation shows, on the lock's pairs."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    lock = json.loads(Path(args.lock).read_text())
    lock["_path"] = args.lock
    s = lock["settings"]
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    lora = s["lora"]
    peft = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    t = s["train"]
    cfg = DPOConfig(output_dir=str(Path(args.result).parent / "trl-run"), max_length=s["model"]["max_seq_length"],
                    per_device_train_batch_size=t["per_device_train_batch_size"],
                    gradient_accumulation_steps=t["gradient_accumulation_steps"], learning_rate=t["learning_rate"],
                    lr_scheduler_type=t["lr_scheduler_type"], max_steps=args.warmup + args.steps,
                    # the warmup ftc resolves for --max-steps (schedule.run_warmup_steps): the same learning rates
                    warmup_steps=math.ceil((args.warmup + args.steps) * t["warmup_ratio"]),
                    beta=t["dpo"]["beta"], loss_type=[t["dpo"]["loss_type"]], seed=t["seed"], logging_steps=1,
                    bf16=cuda, use_cpu=not cuda, gradient_checkpointing=cuda, report_to=[], save_strategy="no")
    marks: list[tuple[float, int]] = []
    real = [0]

    class Count(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            real[0] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), real[0]))

    trainer = Count(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(pairs_of(lock)), processing_class=tok,
                    peft_config=peft, callbacks=[Clock()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, r0), (t1, r1) = marks[args.warmup - 1], marks[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    write(args.result, {"tokens_per_second": round((r1 - r0) / (t1 - t0), 1), "timed_steps": len(marks) - args.warmup,
                        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                        "loss": losses, "accuracies": [h.get("rewards/accuracies") for h in trainer.state.log_history if "loss" in h]})


def ftc_summary(run_dir: Path, warmup: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    timed = steps[warmup:]
    seconds = sum((r["tokens"] - p["tokens"]) / r["tokens_per_second"] for p, r in zip(steps[warmup - 1:], timed))
    facts = json.loads((run_dir / "run.json").read_text())
    return {"tokens_per_second": round((timed[-1]["tokens"] - steps[warmup - 1]["tokens"]) / seconds, 1),
            "timed_steps": len(timed), "peak_allocated_gib": (facts.get("peak_memory") or {}).get("gib"),
            "loss": [r["loss"] for r in steps], "accuracies": [r.get("rewards/accuracies") for r in steps],
            "backend": facts["backend"], "memory_plan": facts.get("memory_plan")}


def write(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_dir(args.shape)
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_bench.py")), "make-model", "--shape", args.shape,
                        "--dir", str(model)], check=True)
    lock, results = lock_path(args.shape), {"shape": args.shape, "config": SHAPES[args.shape], "variants": {}}
    steps = args.warmup + args.steps
    for v in args.variants:
        t0 = time.perf_counter()
        result = out / f"{v}.json"
        if v == "t":
            cmd = [sys.executable, __file__, "trl", "--lock", str(lock), "--model", str(model), "--result", str(result),
                   "--warmup", str(args.warmup), "--steps", str(args.steps)]
        else:
            cmd = [sys.executable, "-m", "ftc", "run", str(lock), "--output", str(WORK / f"dpo-{v}"), "--max-steps", str(steps),
                   "--backend", {"u": "unsloth", "h": "hf"}[v]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out / f"{v}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            results["variants"][v] = {"error": proc.stderr[-2000:]}
        else:
            results["variants"][v] = json.loads(result.read_text()) if v == "t" else ftc_summary(WORK / f"dpo-{v}", args.warmup)
        results["variants"][v]["wall_s"] = round(time.perf_counter() - t0, 1)
        log(f"{v}: {json.dumps({k: results['variants'][v].get(k) for k in ('tokens_per_second', 'peak_allocated_gib')})}")
    base = results["variants"].get("t", {}).get("tokens_per_second")
    for v, r in results["variants"].items():
        if base and r.get("tokens_per_second"):
            r["speedup_vs_trl"] = round(r["tokens_per_second"] / base, 3)
    write(str(out / "results.json"), results)
    for v, r in results["variants"].items():
        print(f"{v}: {r.get('tokens_per_second')} tok/s, x{r.get('speedup_vs_trl')}, peak {r.get('peak_allocated_gib')} GiB, "
              f"first losses {[round(x, 4) for x in (r.get('loss') or [])[:3]]}" if "error" not in r else f"{v}: FAILED")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: prepare + run on the tiny shape, hf and TRL")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("prepare")
    s.add_argument("--shape", default="7b")
    s = sub.add_parser("trl")
    for k in ("--lock", "--model", "--result"):
        s.add_argument(k, required=True)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=10)
    s = sub.add_parser("run")
    s.add_argument("--shape", default="7b")
    s.add_argument("--out", required=True)
    s.add_argument("--variants", type=lambda x: x.split(","), default=["u", "h", "t"])
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    if args.tiny:
        prepare(argparse.Namespace(shape="tiny"))
        run_all(argparse.Namespace(shape="tiny", out=str(WORK / "dpo-tiny-results"), variants=["h", "t"], warmup=1, steps=2))
        return
    {"prepare": prepare, "trl": variant_trl, "run": run_all}[args.cmd](args)


if __name__ == "__main__":
    main()
