#!/usr/bin/env python3
"""GPU benchmark of DPO: ftc (unsloth and hf backends) against plain TRL DPOTrainer + PEFT by hand.

recipes/dpo.json (LLaMA-Factory's dpo_en_demo pairs, LoRA r=8 on all linear layers, seq 2048,
batch 1 x 8) on a Qwen2 with random weights of the Qwen2.5-7B shape (gpu_bench.py's make-model).
One process per variant, in one device call:
  u   ftc run --backend unsloth   (the compiled ids, TRL DPOTrainer under unsloth) on dpo-<shape>.lock
  h   ftc run --backend hf        (the compiled ids, TRL DPOTrainer + PEFT, reference = adapter off), same lock
  up, hp   the same on dpo-<shape>-plain.lock: train.gradient_checkpointing=true, train.micro_batch=plan,
      TRL's memory setting (1 x 8, checkpointing on) instead of what ftc's memory plan picks
  ub  u with unsloth's per-decoder-layer torch.compile off (UNSLOTH_BLOCK_COMPILE=0): the check of why
      unsloth's first loss is not ln 2 (BENCHMARKS.md "DPO on the GPU")
  t   the usual way, by hand: TRL DPOTrainer + PEFT LoraConfig on the same pairs as TRL's
      conversational dataset (TRL tokenizes), gradient checkpointing on, bf16, the same seed
Each reports real (non-padding) tokens/s over the steps after the warm-up, peak GPU memory and
the first losses (same pairs, same order, same weights), and for the hf and TRL variants the
pairs each optimizer step trained on (hashes of the chosen sequences' token ids).

CPU side (writes .bench/dpo-<shape>.lock, dpo-<shape>-plain.lock and the tokenizer copy):
  .venv/bin/python tests/bench/gpu_dpo.py prepare --shape 7b
Device side:
  python3 tests/bench/gpu_dpo.py run --shape 7b --out $OUT --steps 8 --warmup 2 --variants hp,up,t
CPU smoke test of the whole thing (tiny shape, seq 128, hf, hf-plain and TRL):
  .venv/bin/python tests/bench/gpu_dpo.py --tiny
CPU study of where ftc's and TRL's losses part (tiny shape in float32, untruncated pairs; see
BENCHMARKS.md "DPO on the GPU"): ftc and TRL at 1 x 8 and at 2 x 4, losses and pair order compared:
  .venv/bin/python tests/bench/gpu_dpo.py study --steps 8   (about 40 min on 2 shared cores; the seconds-long
  version of the same check is tests/test_preference_vs_trl.py)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import BENCH, ROOT, SHAPES, WORK, log, model_dir  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# the locks prepare writes, by suffix: the recipe as it is (memory plan "auto"), and TRL's memory setting
LOCKS = {"": [], "-plain": ["train.gradient_checkpointing=true", "train.micro_batch=plan"]}
# variant -> (backend, lock suffix, environment)
FTC_VARIANTS = {"u": ("unsloth", "", {}), "h": ("hf", "", {}), "up": ("unsloth", "-plain", {}), "hp": ("hf", "-plain", {}),
                # unsloth with its per-decoder-layer torch.compile off (unsloth/models/_block_compile.py `_enabled`)
                "ub": ("unsloth", "", {"UNSLOTH_BLOCK_COMPILE": "0"})}


def lock_path(shape: str, suffix: str = "") -> Path:
    return BENCH / f"dpo-{shape}{suffix}.lock"


def compile_lock(lock: Path, shape: str, seq: int, sets: list[str]) -> None:
    """recipes/dpo.json for the shape's random model (the folder make-model writes), with `sets`."""
    BENCH.mkdir(exist_ok=True)
    tok = BENCH / "tok"
    if not tok.exists():
        shutil.copytree(ROOT.parent / "shared" / "tokenizers" / "qwen2.5-bpe", tok)
    cmd = [sys.executable, "-m", "ftc", "compile", str(ROOT / "recipes" / "dpo.json"), "-o", str(lock),
           "--set", f"model.name={model_dir(shape)}", "--set", f"model.tokenizer={tok}",
           "--set", f"model.max_seq_length={seq}"]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True)


def prepare(args) -> None:
    """Compile the locks of LOCKS for the shape."""
    seq = 128 if args.shape == "tiny" else 2048
    for suffix, sets in LOCKS.items():
        compile_lock(lock_path(args.shape, suffix), args.shape, seq, sets)
    log(f"carry: .bench (locks, tokenizer) and recipes/.ftc (artifacts); locks {', '.join(str(lock_path(args.shape, x)) for x in LOCKS)}")


def pairs_of(lock: dict) -> list[dict]:
    """The lock's train pairs as TRL's conversational dataset, in the artifact's order: the rendered pairs
    that the token artifact kept (train.overlong=drop may have dropped some), so both train on the same rows."""
    import pyarrow.parquet as pq

    recipe_dir = (Path(lock["_path"]).parent / lock["recipe"]["path"]).parent
    table = pq.read_table(recipe_dir / lock["artifacts"]["data"]["train"]["path"])
    kept = set(pq.read_table(recipe_dir / lock["artifacts"]["tokens"]["train"]["path"], columns=["row_id"])
               .column("row_id").to_pylist())
    text = lambda v: v if isinstance(v, str) else v.get("value", v.get("content"))  # noqa: E731
    return [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": text(r["chosen"])}],
             "rejected": [{"role": "assistant", "content": text(r["rejected"])}]}
            for r in table.to_pylist() if r["row_id"] in kept]


def pair_hashes(inputs: dict) -> list[str]:
    """Which pairs a DPO micro-batch holds: a hash of each chosen sequence's real token ids (the batch is
    [chosen..., rejected...], right-padded), the same in ftc's batches and TRL's when the ids are the same."""
    import hashlib

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    half = ids.shape[0] // 2
    return [hashlib.sha1(str(ids[i][mask[i].bool()].tolist()).encode()).hexdigest()[:10] for i in range(half)]


class OrderLog:
    """The pairs of every micro-batch a trainer's training_step sees, written to a JSON file at the end."""

    def __init__(self, path: str | None) -> None:
        self.path, self.batches = path, []

    def add(self, inputs: dict) -> None:
        if self.path:
            self.batches.append(pair_hashes(inputs))

    def write(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.batches) + "\n")


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
    t = s["train"]
    micro = args.micro or t["per_device_train_batch_size"]  # --micro: another cut of the same batch
    accumulation = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] // micro
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    lora = s["lora"]
    peft = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    cfg = DPOConfig(output_dir=str(Path(args.result).parent / "trl-run"), max_length=s["model"]["max_seq_length"],
                    per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
                    learning_rate=t["learning_rate"], optim=t["optim"], weight_decay=t["weight_decay"],
                    max_grad_norm=t["max_grad_norm"],  # the lock's, not DPOConfig's defaults (adamw_torch_fused)
                    lr_scheduler_type=t["lr_scheduler_type"], max_steps=args.warmup + args.steps,
                    # the warmup ftc resolves for --max-steps (schedule.run_warmup_steps): the same learning rates
                    warmup_steps=math.ceil((args.warmup + args.steps) * t["warmup_ratio"]),
                    beta=t["dpo"]["beta"], loss_type=[t["dpo"]["loss_type"]], seed=t["seed"], logging_steps=1,
                    bf16=cuda, use_cpu=not cuda, gradient_checkpointing=cuda, report_to=[], save_strategy="no")
    marks: list[tuple[float, int]] = []
    real = [0]
    order = OrderLog(args.order)

    class Count(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            real[0] += int(inputs["attention_mask"].sum())
            order.add(inputs)
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
    order.write()
    (t0, r0), (t1, r1) = marks[args.warmup - 1], marks[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    write(args.result, {"tokens_per_second": round((r1 - r0) / (t1 - t0), 1), "timed_steps": len(marks) - args.warmup,
                        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                        "loss": losses, "accuracies": [h.get("rewards/accuracies") for h in trainer.state.log_history if "loss" in h],
                        "micro_batch": [micro, accumulation], "gradient_checkpointing": cfg.gradient_checkpointing})


def variant_ftc(args) -> None:
    """`ftc run` in this process (hf backend), recording the pairs of each micro-batch: the trainer's
    count_batch, which every training_step calls, is wrapped (a benchmark-only spy, no change to ftc)."""
    import ftc.runtime.preference as preference
    from ftc.cli import main as ftc_main

    order, count = OrderLog(args.order), preference.count_batch

    def spy(counter, inputs):
        order.add(inputs)
        count(counter, inputs)

    preference.count_batch = spy
    code = ftc_main(args.ftc_args)
    order.write()
    sys.exit(code)


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


def run_variant(v: str, out: Path, *, model: Path, shape: str, warmup: int, steps: int, suffix: str | None = None,
                micro: int | None = None) -> dict:
    """One variant in its own process; its summary (or its error). `suffix` picks the lock (default: the
    variant's own, `-plain` for TRL), `micro` cuts TRL's batch differently."""
    result, order = out / f"{v}.json", out / f"{v}.order.json"
    env: dict = {}
    if v.startswith("t"):
        lock = lock_path(shape, "-plain" if suffix is None else suffix)
        cmd = [sys.executable, __file__, "trl", "--lock", str(lock), "--model", str(model), "--result", str(result),
               "--warmup", str(warmup), "--steps", str(steps), "--order", str(order)] + (["--micro", str(micro)] if micro else [])
    else:
        backend, own, env = FTC_VARIANTS[v.split("-")[0]]
        lock = lock_path(shape, own if suffix is None else suffix)
        shutil.rmtree(WORK / f"dpo-{v}", ignore_errors=True)  # a finished run of the same plan would not train again
        run = ["run", str(lock), "--output", str(WORK / f"dpo-{v}"), "--max-steps", str(warmup + steps), "--backend", backend]
        cmd = ([sys.executable, __file__, "ftc", "--order", str(order), *run] if backend == "hf"
               else [sys.executable, "-m", "ftc", *run])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    (out / f"{v}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    summary = json.loads(result.read_text()) if v.startswith("t") else ftc_summary(WORK / f"dpo-{v}", warmup)
    if order.exists():
        summary["order"] = json.loads(order.read_text())
    return summary


def steps_of(batches: list[list[str]], per_step: int) -> list[list[str]]:
    """Micro-batches' pairs grouped into optimizer steps of `per_step` pairs."""
    flat = [h for b in batches for h in b]
    return [flat[i : i + per_step] for i in range(0, len(flat), per_step)]


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_dir(args.shape)
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_bench.py")), "make-model", "--shape", args.shape,
                        "--dir", str(model)], check=True)
    results = {"shape": args.shape, "config": SHAPES[args.shape], "variants": {}}
    for v in args.variants:
        t0 = time.perf_counter()
        results["variants"][v] = run_variant(v, out, model=model, shape=args.shape, warmup=args.warmup, steps=args.steps)
        results["variants"][v]["wall_s"] = round(time.perf_counter() - t0, 1)
        log(f"{v}: {json.dumps({k: results['variants'][v].get(k) for k in ('tokens_per_second', 'peak_allocated_gib')})}")
    base = results["variants"].get("t", {}).get("tokens_per_second")
    for v, r in results["variants"].items():
        if base and r.get("tokens_per_second"):
            r["speedup_vs_trl"] = round(r["tokens_per_second"] / base, 3)
    pairs = {v: steps_of(r["order"], 8) for v, r in results["variants"].items() if r.get("order")}
    if pairs:  # per step, how many of the 8 pairs have the same ids as in the first variant's step
        first = next(iter(pairs.values()))  # (a pair that TRL truncates otherwise than ftc counts as a mismatch)
        results["pairs_matching_per_step"] = {v: [len(set(a) & set(b)) for a, b in zip(p, first)] for v, p in pairs.items()}
        print(f"pairs with the same ids as {next(iter(pairs))}'s, per step: {results['pairs_matching_per_step']}")
    write(str(out / "results.json"), results)
    for v, r in results["variants"].items():
        print(f"{v}: {r.get('tokens_per_second')} tok/s, x{r.get('speedup_vs_trl')}, peak {r.get('peak_allocated_gib')} GiB, "
              f"first losses {[round(x, 4) for x in (r.get('loss') or [])[:3]]}" if "error" not in r else f"{v}: FAILED")


def study(args) -> None:
    """Where ftc's DPO losses and TRL's part, on the CPU in float32 (no bf16 rounding): the tiny shape, pairs
    that fit in --seq untruncated (train.overlong=drop, so TRL's own truncation never differs from ftc's), a
    learning rate that moves the loss. ftc and TRL each at 1 x 8 and 2 x 4; the losses and pairs compared."""
    sets = ["model.dtype=float32", "train.overlong=drop", "train.micro_batch=plan", "train.gradient_checkpointing=false",
            f"train.learning_rate={args.lr}"]
    model = model_dir("tiny")
    for split, (micro, accumulation) in (("1x8", (1, 8)), ("2x4", (2, 4))):
        compile_lock(lock_path("tiny", f"-s{split}"), "tiny", args.seq, sets + [f"train.per_device_train_batch_size={micro}",
                                                                               f"train.gradient_accumulation_steps={accumulation}"])
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_bench.py")), "make-model", "--shape", "tiny",
                        "--dir", str(model)], check=True)
    out = WORK / "dpo-study"
    out.mkdir(parents=True, exist_ok=True)
    runs = {"ftc 1x8": ("h-1x8", "-s1x8", None), "trl 1x8": ("t-1x8", "-s1x8", None),
            "ftc 2x4": ("h-2x4", "-s2x4", None), "trl 2x4": ("t-2x4", "-s1x8", 2)}
    results = {}
    for name, (v, suffix, micro) in runs.items():
        results[name] = run_variant(v, out, model=model, shape="tiny", warmup=1, steps=args.steps - 1, suffix=suffix,
                                    micro=micro)
        log(f"{name}: {'FAILED ' + results[name]['error'][-400:] if 'error' in results[name] else 'done'}")
    losses = {k: r.get("loss") or [] for k, r in results.items()}
    print("step  " + "  ".join(f"{k:>10}" for k in losses))
    for i in range(args.steps):
        print(f"{i + 1:>4}  " + "  ".join(f"{x[i]:>10.6f}" if i < len(x) else f"{'-':>10}" for x in losses.values()))
    pairs = {k: steps_of(r.get("order") or [], 8) for k, r in results.items()}
    summary = {"losses": losses, "pairs_per_step": pairs}
    for a, b in (("ftc 1x8", "trl 1x8"), ("ftc 2x4", "trl 2x4"), ("ftc 1x8", "ftc 2x4"), ("trl 1x8", "trl 2x4")):
        diff = max((abs(x - y) for x, y in zip(losses[a], losses[b])), default=None)
        same = pairs[a] == pairs[b] and bool(pairs[a])
        summary[f"{a} vs {b}"] = {"max_abs_loss_difference": diff, "same_pairs_each_step": same}
        print(f"{a} vs {b}: max |loss difference| {diff}, same pairs each step: {same}")
    write(str(out / "study.json"), summary)
    log(f"wrote {out / 'study.json'}")


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
    s.add_argument("--micro", type=int, help="pairs per micro-batch (default: the lock's); the batch stays the same")
    s.add_argument("--order", help="write the pairs of each micro-batch here")
    s = sub.add_parser("ftc", help="`ftc run ...` in this process, recording each micro-batch's pairs")
    s.add_argument("--order")
    s.add_argument("ftc_args", nargs=argparse.REMAINDER)
    s = sub.add_parser("study", help="CPU: ftc against TRL at 1 x 8 and 2 x 4, tiny shape, float32, untruncated pairs")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--seq", type=int, default=512)
    s.add_argument("--lr", type=float, default=1e-3)
    s = sub.add_parser("run")
    s.add_argument("--shape", default="7b")
    s.add_argument("--out", required=True)
    s.add_argument("--variants", type=lambda x: x.split(","), default=["u", "h", "t"], help="of u, h, up, hp, ub, t")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    if args.tiny:
        prepare(argparse.Namespace(shape="tiny"))
        run_all(argparse.Namespace(shape="tiny", out=str(WORK / "dpo-tiny-results"), variants=["h", "hp", "t"], warmup=1,
                                   steps=2))
        return
    {"prepare": prepare, "trl": variant_trl, "ftc": variant_ftc, "run": run_all, "study": study}[args.cmd](args)


if __name__ == "__main__":
    main()
