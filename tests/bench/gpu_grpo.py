#!/usr/bin/env python3
"""GRPO step time on the GPU, issue 13: ftc's fast generation path against TRL's own (a script; pytest does not collect it).

The gsm8k_grpo recipe's work (1 prompt x 8 completions of up to 512 tokens, LoRA r=16 on all
linear layers) at the Qwen2.5-1.5B shape with random weights (nothing can be downloaded on the
lent machine; random weights never emit eos, so every completion runs to max_completion_length,
the worst case). One process per variant, one after another on the one GPU:
  ftc_hf_fast        ftc run --backend hf, train.grpo.generation=auto (the merged, compiled copy)
  ftc_unsloth_fast   ftc run --backend unsloth, generation=auto (skipped without CUDA + unsloth)
  ftc_hf_generate    ftc run --backend hf, generation=generate (TRL's model.generate through the adapter)
  ftc_unsloth_copy   ftc run --backend unsloth with the merged copy kept (auto takes TRL's generate there)
  ftc_hf_7b_qlora    the 7B shape with a 4-bit base (TRL's generate): the memory figure
  trl_plain          TRL GRPOTrainer + PEFT written by hand (the anchor), the same settings
Each reports seconds per step after the first (TRL's own step_time), generated tokens per second
(completion tokens / step time; and over the generation alone where ftc's fast path times it),
the LoRA merge cost per optimizer step, and peak GPU memory. Results: one JSON per variant and summary.json under --out.

CPU side, once (writes .bench/grpo/, git-ignored; compiles with the real Qwen2.5 tokenizer):
  .venv/bin/python tests/bench/gpu_grpo.py prepare            # add --tiny for the CPU check
Device side (carry [".whl", ".bench/grpo"]; see ../shared/gpu/README.md for the install line):
  python3 tests/bench/gpu_grpo.py run --out $OUT --steps 6 [--variants trl_plain,ftc_hf_fast,...] [--trace]
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


def model_7b() -> Path:
    """The folder of gpu_bench.py make-model's random 7B model (it saves it there on the device)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_bench import model_dir

    return model_dir("7b")

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
    if not args.tiny:  # the 7B shape with QLoRA, for the memory figure (variant ftc_hf_7b_qlora)
        # 4-bit needs saved weights (FTC710 refuses it with model.init=random): gpu_bench.py make-model's random
        # 7B folder, which the variant builds on the device first
        sets = [*settings(False), f"model.name={model_7b()}", "model.init=pretrained", "model.load_in_4bit=true"]
        subprocess.run([sys.executable, "-m", "ftc", "compile", str(WORK / "recipe.json"), "-o", str(WORK / "qlora7b.lock"),
                        *[a for s in sets for a in ("--set", s)]], check=True, cwd=ROOT)
    log(f"prepared {WORK} ({'tiny' if args.tiny else '1.5b'} shape); carry it with .whl")


def summarize(metrics: list[dict], warmup: int = 1, skip: int = 0) -> dict:
    """s/step after the first `warmup` steps, generated tokens/s and ftc's own generation timings;
    step `skip` (1-based: the one traced under torch.profiler) is left out."""
    rows = [m for k, m in enumerate(m for m in metrics if m.get("step_time") is not None) if k + 1 != skip][warmup:]
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
    traced = args.trace and name.endswith("_fast")
    entry = [__file__, "traced", "--trace", str(Path(args.out) / f"{name}.trace.json"), "--profile-call", str(args.profile_call),
             "--"] if traced else ["-m", "ftc"]
    env = dict(os.environ)
    if name.endswith("_copy"):  # the merged copy where `auto` takes TRL's generate (unsloth), in the child too
        env.update(FTC_BENCH_KEEP_COPY="1", PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parent / "keep_copy"), *filter(None, [env.get("PYTHONPATH")])]))
    steps = args.fast_steps if args.trace and args.fast_steps and name.endswith("_fast") else args.steps
    cmd = [sys.executable, *entry, "run", str(WORK / lock), "--backend", backend, "--max-steps", str(steps),
           "--output", str(run_dir)]
    t0 = time.time()
    log_file = Path(args.out) / f"{name}.log"
    with log_file.open("w") as fh:  # streamed: a call cut short still has the log so far
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "tail": log_file.read_text()[-1500:]}
    for kept in ("run.json", "metrics.jsonl"):
        shutil.copy(run_dir / kept, Path(args.out) / f"{name}.{kept}")
    facts = json.loads((run_dir / "run.json").read_text())
    completions = facts["grpo"]["generation_batch_size"] // facts["grpo"]["steps_per_generation"]
    metrics = [{**json.loads(line), "_completions": completions} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    profiled = args.profile_call if args.trace and name.endswith("_fast") else 0
    return {**summarize(metrics, skip=profiled), "steps_run": steps, "profiled_step_left_out": profiled or None,
            "wall_s": round(time.time() - t0, 1), "generation": facts["grpo"]["generation"],
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

    peak = lambda: round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None  # noqa: E731

    class Keep(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            metrics.append({**(logs or {}), "_completions": train["per_device_train_batch_size"]})
            log(f"trl_plain step {state.global_step}: {json.dumps(logs)[:300]}")  # progress, streamed to the log
            Path(args.result).write_text(json.dumps({**summarize(metrics), "peak_memory_gib": peak(), "partial": True}, indent=1))

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
    Path(args.result).write_text(json.dumps({**summarize(metrics), "peak_memory_gib": peak()}, indent=1))


def run_all(args) -> None:
    """Each variant of --variants in the order given (put the anchor first: a call cut short keeps it);
    summary.json is rewritten after every variant."""
    import importlib.util

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"env": {"cuda": torch.cuda.is_available(), "torch": torch.__version__,
                             "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
                     "steps": args.steps, "shape": json.loads((WORK / "model" / "config.json").read_text())["hidden_size"]}
    ftc = {"ftc_hf_fast": ("auto.lock", "hf"), "ftc_unsloth_fast": ("auto.lock", "unsloth"),
           "ftc_hf_generate": ("generate.lock", "hf"),
           # unsloth with the merged copy kept (generation.for_backend overridden): is the copy slower there?
           "ftc_unsloth_copy": ("auto.lock", "unsloth"),
           # the 7B shape, 4-bit base (auto takes TRL's generate there): the memory figure
           "ftc_hf_7b_qlora": ("qlora7b.lock", "hf"),
           # the same on unsloth: which backend should `auto` take for GRPO on a 4-bit base?
           "ftc_unsloth_7b_qlora": ("qlora7b.lock", "unsloth")}
    for name in args.variants:
        log(f"{name} ...")
        if name == "trl_plain":
            with (out / "trl_plain.log").open("w") as fh:
                proc = subprocess.run([sys.executable, __file__, "trl", "--out", str(out), "--steps", str(args.trl_steps or args.steps),
                                       "--result", str(out / "trl_plain.json")], stdout=fh, stderr=subprocess.STDOUT, text=True)
            results[name] = (json.loads((out / "trl_plain.json").read_text()) if proc.returncode == 0
                              else {"error": f"exit {proc.returncode}", "tail": (out / "trl_plain.log").read_text()[-1500:]})
        elif "unsloth" in name and not (torch.cuda.is_available() and importlib.util.find_spec("unsloth")):
            results[name] = {"skipped": "needs CUDA and unsloth"}
        else:
            if name.endswith("_7b_qlora") and not (model_7b() / "config.json").exists():
                bench_tok = ROOT / ".bench" / "tok"  # make-model copies it next to the weights; WORK/tok is the same tokenizer
                if not bench_tok.exists():
                    shutil.copytree(WORK / "tok", bench_tok)
                subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_bench.py")), "make-model", "--shape", "7b",
                                "--dir", str(model_7b())],
                               check=True)
            results[name] = ftc_variant(args, name, *ftc[name])
        log(f"{name}: {json.dumps(results[name])[:400]}")
        anchor = results.get("trl_plain", {}).get("s_per_step")
        for other in ftc:
            if anchor and results.get(other, {}).get("s_per_step"):
                results[other]["speedup_vs_trl_plain"] = round(anchor / results[other]["s_per_step"], 2)
        (out / "summary.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def traced(args) -> None:
    """`ftc run` in this process with `MergedGenerator.generate` timed per call (CUDA-synchronized wall
    seconds) and one call (--profile-call) under torch.profiler: is the in-trainer generation slower
    because the GPU works longer (other kernels) or because it waits on the CPU (launches, Python)?"""
    import torch

    from ftc.cli import main as ftc_main
    from ftc.runtime import generation

    calls: list[dict] = []
    plain = generation.MergedGenerator.generate

    def timed(self, prompt_ids, **kw):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        k = len(calls) + 1
        sync()
        t0 = time.perf_counter()
        if k == args.profile_call:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            with profile(activities=acts) as prof:
                out = plain(self, prompt_ids, **kw)
                sync()
            events = prof.key_averages()
            device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)
            table = events.table(sort_by="self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total",
                                 row_limit=30, max_name_column_width=60)
            Path(args.trace).with_suffix(".profile.txt").write_text(table)
        else:
            out = plain(self, prompt_ids, **kw)
            device_us = None
        sync()
        row = {"call": k, "seconds": round(time.perf_counter() - t0, 3), "new_tokens": sum(len(o) for o in out),
               "width": max(len(p) for p in prompt_ids), "cache_len": self.cache_shape[1], "caches_built": self.caches_built}
        if device_us is not None:
            row["profiled_device_busy_s"] = round(device_us / 1e6, 3)
        calls.append(row)
        log(f"generate {json.dumps(row)}")
        Path(args.trace).write_text(json.dumps(calls, indent=1))
        return out

    generation.MergedGenerator.generate = timed
    raise SystemExit(ftc_main(args.rest))


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
                           default=["trl_plain", "ftc_hf_fast", "ftc_unsloth_fast", "ftc_hf_generate"])
            s.add_argument("--trl-steps", type=int, default=0, help="steps for trl_plain (default: --steps)")
            s.add_argument("--fast-steps", type=int, default=0, help="with --trace: steps for the traced fast variants")
            s.add_argument("--trace", action="store_true", help="time every fast-path generate call (traced)")
            s.add_argument("--profile-call", type=int, default=3, help="with --trace: the call run under torch.profiler")
    s = sub.add_parser("traced", help="ftc run with the fast generator timed per call (what run --trace runs)")
    s.add_argument("--trace", required=True)
    s.add_argument("--profile-call", type=int, default=0)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.cmd == "traced" and args.rest[:1] == ["--"]:
        args.rest = args.rest[1:]
    {"prepare": prepare, "run": run_all, "trl": trl_plain, "traced": traced}[args.cmd](args)


if __name__ == "__main__":
    main()
