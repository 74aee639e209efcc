#!/usr/bin/env python3
"""GRPO step time on the GPU, issue 13: ftc's fast generation path against TRL's own (a script; pytest does not collect it).

The gsm8k_grpo recipe's work (1 prompt x 8 completions of up to 512 tokens, LoRA r=16 on all
linear layers) at the Qwen2.5-1.5B shape with random weights (nothing can be downloaded on the
lent machine; random weights never emit eos, so every completion runs to max_completion_length,
the worst case). One process per variant, one after another on the one GPU:
  ftc_hf_fast        ftc run --backend hf, train.grpo.generation=auto (the merged, compiled copy)
  ftc_unsloth_fast   ftc run --backend unsloth, generation=auto (skipped without CUDA + unsloth)
  ftc_hf_generate    ftc run --backend hf, generation=generate (TRL's model.generate through the adapter)
  trl_plain          TRL GRPOTrainer + PEFT written by hand (the anchor), the same settings
Each reports seconds per step after the first (TRL's own step_time), generated tokens per second
(completion tokens / step time; and over the generation alone where ftc's fast path times it),
the LoRA merge cost per optimizer step, and peak GPU memory. Results: one JSON per variant and summary.json under --out.

CPU side, once (writes .bench/grpo/, git-ignored; compiles with the real Qwen2.5 tokenizer):
  .venv/bin/python tests/bench/gpu_grpo.py prepare            # add --tiny for the CPU check
Device side (carry [".whl", ".bench/grpo"]; see ../shared/gpu/README.md for the install line):
  python3 tests/bench/gpu_grpo.py run --out $OUT --steps 6
CPU check of the whole script: prepare --tiny, then run --tiny --out /tmp/g --steps 2.
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
WORK = ROOT / ".bench" / "grpo"  # git-ignored (.bench/)
SHAPE_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, hidden_act="silu", model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                 torch_dtype="bfloat16", use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)
TINY = {**SHAPE_15B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "torch_dtype": "float32"}
ROWS = 64  # prompts compiled: more than the steps take


def log(msg: str) -> None:
    print(f"[grpo-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def settings(tiny: bool) -> list[str]:
    """--set overrides of recipes/gsm8k_grpo.json shared by every ftc variant (the TRL one reads the lock)."""
    common = [f"model.name={WORK / 'model'}", "model.init=random", f"model.tokenizer={WORK / 'tok'}", "split.eval=0", "train.optim=adamw_torch",
              "train.warmup_ratio=0", "train.save_steps=100000", "train.logging_steps=1"]
    if tiny:
        common += ["model.dtype=float32", "train.grpo.max_completion_length=16", "train.grpo.num_generations=4",
                   "train.per_device_train_batch_size=4", "model.max_seq_length=512"]
    return common


def prepare(args) -> None:
    """The model config, the tokenizer and one compiled lock per generation setting."""
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "model").mkdir(exist_ok=True)
    (WORK / "model" / "config.json").write_text(json.dumps(TINY if args.tiny else SHAPE_15B, indent=1))
    if not (WORK / "tok").exists():
        shutil.copytree(ROOT.parent / "shared" / "tokenizers" / "qwen2.5-bpe", WORK / "tok")
    recipe = json.loads((ROOT / "recipes" / "gsm8k_grpo.json").read_text(encoding="utf-8"))
    recipe.pop("$schema", None)
    data = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
    (WORK / "train.jsonl").write_text("".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:ROWS]), encoding="utf-8")
    recipe["sources"]["gsm8k"]["path"] = "train.jsonl"
    shutil.copy(ROOT / "templates" / "gsm8k_system.jinja", WORK / "gsm8k_system.jinja")
    recipe["template"]["prompt"][0]["content"]["file"] = "gsm8k_system.jinja"
    (WORK / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    for gen in ("auto", "generate"):
        cmd = [sys.executable, "-m", "ftc", "compile", str(WORK / "recipe.json"), "-o", str(WORK / f"{gen}.lock"),
               *[a for s in [*settings(args.tiny), f"train.grpo.generation={gen}"] for a in ("--set", s)]]
        subprocess.run(cmd, check=True, cwd=ROOT)
    log(f"prepared {WORK} ({'tiny' if args.tiny else '1.5b'} shape); carry it with .whl")


def summarize(metrics: list[dict], warmup: int = 1) -> dict:
    """s/step after the first `warmup` steps, generated tokens/s and ftc's own generation timings."""
    rows = [m for m in metrics if m.get("step_time") is not None][warmup:]
    if not rows:
        return {"steps_timed": 0}
    step = sum(m["step_time"] for m in rows) / len(rows)
    tokens = [m["completions/mean_length"] * m.get("_completions", 0) for m in rows if m.get("completions/mean_length")]
    out = {"steps_timed": len(rows), "s_per_step": round(step, 3)}
    if tokens and all(tokens):
        out["generated_tokens_per_s"] = round(sum(tokens) / sum(m["step_time"] for m in rows), 1)
    for key in ("generation/seconds", "generation/merge_seconds"):
        vals = [m[key] for m in rows if m.get(key) is not None]
        if vals:
            out[key.replace("/", "_")] = round(sum(vals) / len(vals), 4)
    if tokens and out.get("generation_seconds"):  # tokens/s of the generation alone (the fast path times it)
        out["generation_only_tokens_per_s"] = round(sum(tokens) / len(tokens) / out["generation_seconds"], 1)
    return out


def ftc_variant(args, name: str, lock: str, backend: str) -> dict:
    run_dir = Path(os.environ.get("FTC_BENCH_WORK", "/tmp/ftc-bench")) / "grpo-runs" / name  # kept out of --out: adapters are large
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "ftc", "run", str(WORK / lock), "--backend", backend, "--max-steps", str(args.steps),
           "--output", str(run_dir)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (Path(args.out) / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-1500:]}
    for kept in ("run.json", "metrics.jsonl"):
        shutil.copy(run_dir / kept, Path(args.out) / f"{name}.{kept}")
    facts = json.loads((run_dir / "run.json").read_text())
    completions = facts["grpo"]["generation_batch_size"] // facts["grpo"]["steps_per_generation"]
    metrics = [{**json.loads(line), "_completions": completions} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {**summarize(metrics), "wall_s": round(time.time() - t0, 1), "generation": facts["grpo"]["generation"],
            "peak_memory": facts.get("peak_memory"), "backend": facts["backend"]}


def trl_plain(args) -> None:
    """The anchor, in its own process: TRL's GRPOTrainer + PEFT with the lock's settings, by hand."""
    import datasets
    import pyarrow.parquet as pq
    import torch
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    lock = json.loads((WORK / "generate.lock").read_text())
    s, train, grpo = lock["settings"], lock["settings"]["train"], lock["settings"]["train"]["grpo"]
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(WORK / "model"), dtype=dtype).to("cuda" if cuda else "cpu")
    tok = AutoTokenizer.from_pretrained(WORK / "tok")
    table = pq.read_table(WORK / lock["artifacts"]["data"]["train"]["path"])
    ds = datasets.Dataset.from_dict({"prompt": table.column("prompt").to_pylist()})

    def reward(completions, **kw):  # a cheap reward: the timing is generation and training, not scoring
        return [float(len(str(c)) % 7) for c in completions]

    metrics: list[dict] = []

    class Keep(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            metrics.append({**(logs or {}), "_completions": train["per_device_train_batch_size"]})

    config = GRPOConfig(output_dir=str(Path(args.out) / "trl_plain"), max_steps=args.steps, learning_rate=train["learning_rate"],
                        per_device_train_batch_size=train["per_device_train_batch_size"], gradient_accumulation_steps=1,
                        num_generations=grpo["num_generations"], max_completion_length=grpo["max_completion_length"],
                        temperature=grpo["temperature"], beta=grpo["beta"], loss_type=grpo["loss_type"], logging_steps=1,
                        save_strategy="no", report_to=[], bf16=cuda, use_cpu=not cuda, optim="adamw_torch", seed=0)
    trainer = GRPOTrainer(model=model, args=config, train_dataset=ds, processing_class=tok, reward_funcs=[reward],
                          peft_config=LoraConfig(r=s["lora"]["r"], lora_alpha=s["lora"]["lora_alpha"], lora_dropout=0.0,
                                                 target_modules=s["lora"]["target_modules"], task_type="CAUSAL_LM"),
                          callbacks=[Keep()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    Path(args.result).write_text(json.dumps({**summarize(metrics), "peak_memory_gib": peak}, indent=1))


def run_all(args) -> None:
    import importlib.util

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"env": {"cuda": torch.cuda.is_available(), "torch": torch.__version__,
                             "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
                     "steps": args.steps, "shape": json.loads((WORK / "model" / "config.json").read_text())["hidden_size"]}
    variants = [("ftc_hf_fast", "auto.lock", "hf"), ("ftc_hf_generate", "generate.lock", "hf")]
    if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None:
        variants.insert(1, ("ftc_unsloth_fast", "auto.lock", "unsloth"))
    else:
        results["ftc_unsloth_fast"] = {"skipped": "needs CUDA and unsloth"}
    variants = [v for v in variants if v[0] in args.variants]
    for name, lock, backend in variants:
        log(f"{name} ...")
        results[name] = ftc_variant(args, name, lock, backend)
        log(f"{name}: {json.dumps(results[name])[:400]}")
    if "trl_plain" not in args.variants:
        (out / "summary.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results, indent=1))
        return
    log("trl_plain ...")
    proc = subprocess.run([sys.executable, __file__, "trl", "--out", str(out), "--steps", str(args.steps),
                           "--result", str(out / "trl_plain.json")], capture_output=True, text=True)
    (out / "trl_plain.log").write_text(proc.stdout + proc.stderr)
    results["trl_plain"] = (json.loads((out / "trl_plain.json").read_text()) if proc.returncode == 0
                            else {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-1500:]})
    log(f"trl_plain: {json.dumps(results['trl_plain'])[:400]}")
    anchor = results["trl_plain"].get("s_per_step")
    for name, _, _ in variants:
        if anchor and results[name].get("s_per_step"):
            results[name]["speedup_vs_trl_plain"] = round(anchor / results[name]["s_per_step"], 2)
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model and short completions (the CPU check)")
    for name in ("run", "trl"):
        s = sub.add_parser(name)
        s.add_argument("--out", default=os.environ.get("OUT", "bench_grpo_out"))
        s.add_argument("--steps", type=int, default=6)
        s.add_argument("--tiny", action="store_true", help="accepted for symmetry: the shape is what prepare wrote")
        if name == "trl":
            s.add_argument("--result", required=True)
        else:
            s.add_argument("--variants", type=lambda x: x.split(","),
                           default=["ftc_hf_fast", "ftc_unsloth_fast", "ftc_hf_generate", "trl_plain"])
    args = p.parse_args()
    {"prepare": prepare, "run": run_all, "trl": trl_plain}[args.cmd](args)


if __name__ == "__main__":
    main()
