#!/usr/bin/env python3
"""GPU benchmark of ftc's training backends against the usual way (a script; pytest does not collect it).

LoRA r=16 on q,k,v,o,gate,up,down, max_seq_length 2048, on the compiled medical data,
with a Qwen2 model built from a config with random weights (shape of Qwen2.5-7B or -1.5B).
One process per variant, all in one device call:
  v1   ftc run --backend unsloth      (the plan: compiler's BFD packs, padding-free)
  v2   ftc run --backend hf           (same lock: TRL SFTTrainer + PEFT, padding-free packs, sdpa)
  v3   the usual way, as the seed article: plain TRL SFTTrainer on the rendered text
       (prompt + completion from the data artifact), padded batches 2 x GA 4, no packing,
       gradient checkpointing on
  v4   v1 written by hand against unsloth (FastLanguageModel + SFTTrainer(packing=True) on
       the same token rows): ftc's overhead
  v1q, v3q   the same as v1, v3 with QLoRA (bitsandbytes nf4)
Each reports real (non-padding) tokens/s over the steps after the warm-up, MFU, peak GPU
memory, padding waste. FLOPs/token = 4*N_linear + 6*N_lora + 12*layers*d_attn*c (c: mean
causal context of a token in its own row), peak 790 TFLOP/s (bf16, measured on the H200).

CPU side, before the call (writes .bench/, git-ignored; prints what to carry):
  .venv/bin/python tests/bench/gpu_bench.py prepare
Device side (see BENCHMARKS.md for the exact command):
  python3 tests/bench/gpu_bench.py run --shape 7b --out $OUT --deadline 480
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
BENCH = ROOT / ".bench"
WORK = Path(os.environ.get("FTC_BENCH_WORK", "/tmp/ftc-bench"))
PEAK = 790e12
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
H200_GIB = 139.8


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_dir(shape: str) -> Path:
    return WORK / f"qwen2-{shape}-random"


# ------------------------------------------------------------------ prepare (CPU)

def prepare(args) -> None:
    """Compile the medical recipe into locks under .bench/ for each shape: as the recipe is
    (gradient checkpointing and micro-batch "auto": the runtime picks them for the GPU it
    finds), the same with QLoRA (-q), and with the recipe's 2 x 4 split kept (-2x4)."""
    from types import SimpleNamespace

    from ftc.runtime.memory_plan import advise

    BENCH.mkdir(exist_ok=True)
    tok = BENCH / "tok"
    if not tok.exists():
        shutil.copytree(ROOT.parent / "shared" / "tokenizers" / "qwen2.5-bpe", tok)
        for f in tok.iterdir():
            f.chmod(0o644)
    plans = {}
    for shape in args.shapes:
        cfg = SimpleNamespace(**SHAPES[shape])
        for suffix, extra, q in (("", [], False), ("-q", [], True), ("-2x4", ["train.micro_batch=plan"], False)):
            lock = BENCH / f"medical-{shape}{suffix}.lock"
            sets = [f"model.name={model_dir(shape)}", "model.tokenizer=.bench/tok", "model.max_seq_length=2048",
                    "model.dtype=bfloat16", f"model.load_in_4bit={'true' if q else 'false'}", "train.packing=true",
                    "train.optim=adamw_torch", "train.save_steps=1000", *extra]
            cmd = [sys.executable, "-m", "ftc.cli", "compile", "recipes/medical.json", "-o", str(lock), "-q"]
            for s in sets:
                cmd += ["--set", s]
            subprocess.run(cmd, cwd=ROOT, check=True)
            # what the runtime will pick on the H200 (unsloth backend), for the log
            memory = advise(cfg, gpu_gib=H200_GIB, tokens_per_item=2048, micro_batch=2, accumulation=4,
                            split="plan" if extra else "auto", lora_r=16, lora_targets=TARGETS, load_in_4bit=q, backend="unsloth")
            plans[lock.name] = {"sets": sets, "expected_on_h200": memory["used"], "reason": memory["reason"]}
    (BENCH / "plans.json").write_text(json.dumps(plans, indent=1))
    from ftc.compiler.lock import Plan  # a lock's paths are relative to its recipe: the Plan view resolves them

    view = Plan.load(BENCH / f"medical-{args.shapes[0]}.lock")
    arts = sorted({os.path.relpath(view.path(a["path"]), ROOT) for _, _, a in view.artifacts()})
    print(json.dumps({"carry": [".whl", ".bench", *arts], "plans": plans}, indent=1))


# ------------------------------------------------------------------ the model (device)

def make_model(args) -> None:
    """A Qwen2 of the given shape with random weights (seeded), saved with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    out = Path(args.dir)
    if (out / "config.json").exists():
        log(f"{out} exists")
        return
    t0 = time.perf_counter()
    cfg = Qwen2Config(**SHAPES[args.shape], max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    n = sum(p.numel() for p in model.parameters())
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * 2 * n:  # RAM-backed: every variant reads it again
        real = shm / out.name
        real.mkdir(parents=True, exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.is_symlink():
            out.symlink_to(real)
    model.save_pretrained(str(out), max_shard_size="20GB")
    for f in (BENCH / "tok").iterdir():
        shutil.copy(f, out / f.name)
    log(f"model {args.shape}: {n / 1e9:.3f}B parameters, built and saved to {out} in {time.perf_counter() - t0:.1f} s")


# ------------------------------------------------------------------ timing helpers (inside a variant's process)

class Meter:
    """Real tokens, slots and wall time per optimizer step (synchronized at each step end)."""

    def __init__(self) -> None:
        self.real = self.slots = 0
        self.steps: list[tuple[float, int, int]] = []  # (time, real, slots) at each step end

    def add(self, batch: dict) -> None:
        ids = batch["input_ids"]
        self.slots += int(ids.numel())
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else int(ids.numel())

    def callback(self):
        import torch
        from transformers import TrainerCallback

        meter = self

        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

        class StepEnd(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                sync()
                meter.steps.append((time.perf_counter(), meter.real, meter.slots))

            def on_step_end(self, args, state, control, **kw):
                sync()
                meter.steps.append((time.perf_counter(), meter.real, meter.slots))

        return StepEnd()

    def summary(self, warmup: int) -> dict:
        (t0, r0, s0), (t1, r1, s1) = self.steps[warmup], self.steps[-1]
        times = [b[0] - a[0] for a, b in zip(self.steps, self.steps[1:])]
        return {"timed_steps": len(self.steps) - 1 - warmup, "real_tokens": r1 - r0, "slots": s1 - s0,
                "seconds": round(t1 - t0, 3), "tokens_per_second": round((r1 - r0) / (t1 - t0), 1),
                "padding_waste": round(1 - (r1 - r0) / max(s1 - s0, 1), 4), "step_seconds": [round(t, 3) for t in times]}


def counting_trainer(base: type, meter: Meter) -> type:
    class Counting(base):
        def training_step(self, model, inputs, num_items_in_batch=None):
            meter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    return Counting


def memory() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def write_result(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=1, default=str))


# ------------------------------------------------------------------ v3: the usual way (plain TRL, padded)

def variant_v3(args) -> None:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    kw = {}
    if args.q4:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                       bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0} if torch.cuda.is_available() else None, **kw)
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = pq.read_table(args.data, columns=["prompt", "completion"]).to_pylist()
    ds = Dataset.from_list([{"text": r["prompt"] + r["completion"]} for r in rows])  # the article's rendered text
    meter = Meter()
    cfg = SFTConfig(output_dir=str(WORK / "v3-out"), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                    max_steps=args.warmup + args.steps, learning_rate=2e-4, warmup_steps=5, lr_scheduler_type="linear",
                    weight_decay=0.01, optim="adamw_torch", seed=3407, logging_steps=1, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
                    gradient_checkpointing=True, max_length=2048, packing=False, dataset_text_field="text",
                    save_strategy="no", report_to="none", disable_tqdm=True)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    trainer = counting_trainer(SFTTrainer, meter)(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                                                  peft_config=lora, callbacks=[meter.callback()])
    setup_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    write_result(args.result, {"setup_s": round(setup_s, 1), **meter.summary(args.warmup), **memory(),
                               "loss": [h.get("loss") for h in trainer.state.log_history if "loss" in h]})


# ------------------------------------------------------------------ v4: v1 by hand against unsloth

def variant_v4(args) -> None:
    t0 = time.perf_counter()
    import unsloth  # noqa: F401  (first)

    import_s = time.perf_counter() - t0
    log(f"v4: unsloth imported in {import_s:.1f} s")
    if args.go:  # imported while another variant ran; start when told
        while not Path(args.go).exists():
            time.sleep(0.2)
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    t1 = time.perf_counter()
    gc = "unsloth" if args.checkpointing else False
    model, tok = FastLanguageModel.from_pretrained(model_name=args.model, max_seq_length=2048, dtype=torch.bfloat16,
                                                   load_in_4bit=args.q4, use_exact_model_name=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, target_modules=TARGETS, bias="none",
                                             use_gradient_checkpointing=gc, random_state=3407)
    table = pq.read_table(args.tokens, columns=["input_ids", "labels"]).to_pylist()
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": [int(l != -100) for l in r["labels"]]} for r in table])
    setup_s = time.perf_counter() - t1
    result: dict = {"import_s": round(import_s, 1), "setup_s": round(setup_s, 1)}
    # --splits: the same global batch (8 packs) split as micro-batch x accumulation, one trainer each,
    # on the one loaded model (the first split also pays unsloth's compile: it gets --warmup steps more)
    for i, (micro, accum) in enumerate(args.splits):
        meter = Meter()
        cfg = SFTConfig(output_dir=str(WORK / "v4-out"), per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                        max_steps=args.warmup + args.steps, learning_rate=2e-4, warmup_steps=5, lr_scheduler_type="linear",
                        weight_decay=0.01, optim="adamw_torch", seed=3407, logging_steps=1, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
                        max_length=2048, packing=True, completion_only_loss=True, save_strategy="no", report_to="none",
                        disable_tqdm=True)
        trainer = counting_trainer(SFTTrainer, meter)(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                                                      callbacks=[meter.callback()])
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        run = {**meter.summary(args.warmup), **memory(), "loss": [h.get("loss") for h in trainer.state.log_history if "loss" in h],
               "unsloth_packing": bool(getattr(trainer.args, "packing", None)),
               "unsloth_padding_free": bool(getattr(trainer.args, "padding_free", None))}
        if i == 0:
            result.update(run)  # the plan's split: the v4 figure
        else:
            result.setdefault("splits", {})[f"{micro}x{accum}"] = run
        log(f"v4 split {micro}x{accum}: {run['tokens_per_second']} tok/s, peak {run.get('peak_allocated_gib')} GiB")
        write_result(args.result, result)  # the timing first: the check below must not lose it
        del trainer
    try:
        result["packing_isolation"] = packing_isolation(model)
    except Exception as e:  # noqa: BLE001
        result["packing_isolation"] = {"error": repr(e)[:500]}
    write_result(args.result, result)


def packing_isolation(model) -> dict:
    """Logits of sequence B packed after A (restarting position_ids, one row, no mask) against B
    alone; a leak (B attending to A) is what continuing positions give."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 150000, (300,), generator=g)
    b = torch.randint(0, 150000, (200,), generator=g)
    dev = next(model.parameters()).device
    with torch.no_grad():
        def logits(ids, pos):
            return model(input_ids=ids[None].to(dev), position_ids=pos[None].to(dev), use_cache=False).logits[0].float()

        alone = logits(b, torch.arange(200))
        packed = logits(torch.cat([a, b]), torch.cat([torch.arange(300), torch.arange(200)]))[300:]
        leaked = logits(torch.cat([a, b]), torch.arange(500))[300:]
    rel = lambda x: float((x - alone).norm() / alone.norm())  # noqa: E731
    return {"packed_vs_alone_rel_err": rel(packed), "leaky_vs_alone_rel_err": rel(leaked)}


# ------------------------------------------------------------------ run all variants (device)

def ftc_summary(run_dir: Path, warmup: int) -> dict:
    """Real tokens/s after the warm-up from ftc's metrics.jsonl (tokens and tokens/s of each step)."""
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    steps = [r for r in rows if "loss" in r]
    timed = steps[warmup:]
    prev = steps[warmup - 1]["tokens"] if warmup else 0
    tokens = timed[-1]["tokens"] - prev
    seconds = sum((r["tokens"] - p["tokens"]) / r["tokens_per_second"] for p, r in zip(steps[warmup - 1:], timed)) if warmup else None
    out = {"timed_steps": len(timed), "real_tokens": tokens, "seconds": round(seconds, 3),
           "tokens_per_second": round(tokens / seconds, 1), "loss": [r["loss"] for r in steps],
           "step_seconds": [round((r["tokens"] - p["tokens"]) / r["tokens_per_second"], 3) for p, r in zip(steps, steps[1:])],
           "gpu_mem_gib_log": steps[-1].get("gpu_mem_gib"), "peak_allocated_gib": steps[-1].get("gpu_mem_gib")}
    rj = run_dir / "run.json"
    if rj.exists():
        facts = json.loads(rj.read_text())
        out.update(peak_allocated_gib=(facts.get("peak_memory") or {}).get("gib") or out["peak_allocated_gib"], backend=facts.get("backend"),
                   backend_reason=facts.get("backend_reason"), padding_waste=round(1 - (facts["tokens"]["padding_efficiency"] or 1), 4),
                   pack_fill=facts["tokens"].get("pack_fill"), run_mfu=facts.get("mfu"), memory_plan=facts.get("memory_plan"),
                   flops=facts.get("flops"), backend_facts=facts.get("backend_facts"), run_throughput=facts.get("throughput_tokens_per_second"))
    return out


def flops_per_token(shape: str, tokens_path: Path) -> dict:
    import pyarrow.parquet as pq
    from types import SimpleNamespace

    from ftc.runtime.flops import flops_per_token as fpt, mean_causal_context
    from ftc.runtime.memory_plan import _shape, lora_params

    cfg = SimpleNamespace(**SHAPES[shape])
    s = _shape(cfg)
    n_linear = s["layer_params"] + s["vocab"] * s["h"]  # decoder linears + LM head
    n_lora = lora_params(cfg, 16, TARGETS)
    ctx = mean_causal_context(pq.read_table(tokens_path, columns=["length"]).column("length").to_pylist())
    return {"n_linear": n_linear, "n_lora": n_lora, "mean_causal_context": round(ctx, 2),
            "flops_per_token": fpt({"linear": n_linear, "lora": n_lora}, s["layers"], s["q_width"], ctx)}


def run_all(args) -> None:
    t_start = time.time()
    deadline = t_start + args.deadline
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    shape = args.shape
    lock = BENCH / f"medical-{shape}.lock"
    lock_q = BENCH / f"medical-{shape}-q.lock"
    lock_2x4 = BENCH / f"medical-{shape}-2x4.lock"
    from ftc.compiler.lock import Plan  # a lock's paths are relative to its recipe: the Plan view resolves them

    view = Plan.load(lock)
    plan = view.lock
    arts = {k: {s: view.artifact(k, s) for s in v} for k, v in plan["artifacts"].items()}
    checkpointing = plan["settings"]["train"]["gradient_checkpointing"] is True  # "auto" is off on the H200 (memory_plan)
    flops = flops_per_token(shape, arts["tokens"]["train"])
    results: dict = {"shape": shape, "config": SHAPES[shape], "flops": flops, "peak_flops": PEAK, "variants": {},
                     "plan_gradient_checkpointing": checkpointing, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    results["env"] = env_facts()
    save = lambda: (out / "results.json").write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    save()
    me = [sys.executable, str(Path(__file__).resolve())]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def sub(name: str, cmd: list[str], need: float, **kw) -> subprocess.CompletedProcess | None:
        left = deadline - time.time()
        if left < need:
            log(f"{name}: skipped, {left:.0f} s left and it needs about {need:.0f}")
            results["variants"][name] = {"skipped": f"{left:.0f} s left, needs about {need:.0f}"}
            save()
            return None
        log(f"{name}: {' '.join(map(str, cmd))}")
        t = time.time()
        try:
            p = subprocess.run(cmd, env=env, cwd=WORK, timeout=left - 3, **kw)
        except subprocess.TimeoutExpired:
            results["variants"][name] = {"error": f"timed out after {time.time() - t:.0f} s"}
            save()
            return None
        log(f"{name}: exit {p.returncode} after {time.time() - t:.1f} s")
        results["variants"].setdefault(name, {})["wall_s"] = round(time.time() - t, 1)
        if p.returncode != 0:
            results["variants"][name]["error"] = f"exit {p.returncode}"
        save()
        return p

    mdir = model_dir(shape)
    # v4 imports unsloth (30-40 s of CPU) while the model is built and v1..v3 run; it trains when told
    go = WORK / "v4.go"
    go.unlink(missing_ok=True)
    v4 = None
    if "v4" in args.variants:
        v4_cmd = me + ["v4", "--model", str(mdir), "--tokens", str(arts["tokens"]["train"]), "--warmup", str(args.warmup),
                       "--steps", str(args.steps), "--result", str(WORK / "v4.json"), "--go", str(go),
                       "--splits", args.v4_splits] + (["--checkpointing"] if checkpointing else [])
        v4 = subprocess.Popen(v4_cmd, env=env, cwd=WORK)
    sub("make_model", me + ["make-model", "--shape", shape, "--dir", str(mdir)], 20)
    if not (mdir / "config.json").exists():
        log("no model: nothing to benchmark")
        if v4 is not None:
            v4.kill()
        print_table(results)
        return
    steps = str(args.warmup + args.steps)

    def ftc(name: str, lock_path: Path, backend: str, need: float) -> None:
        run_dir = WORK / name
        shutil.rmtree(run_dir, ignore_errors=True)
        p = sub(name, [sys.executable, "-m", "ftc.cli", "run", str(lock_path), "--backend", backend, "--output", str(run_dir),
                       "--max-steps", steps], need)
        if p is not None and (run_dir / "metrics.jsonl").exists():
            try:
                results["variants"][name].update(ftc_summary(run_dir, args.warmup))
            except Exception as e:  # noqa: BLE001
                results["variants"][name]["summary_error"] = repr(e)
            if (run_dir / "run.json").exists():
                shutil.copy(run_dir / "run.json", out / f"{name}_run.json")
        save()

    def script(name: str, variant: str, extra: list[str], need: float) -> None:
        res = WORK / f"{name}.json"
        res.unlink(missing_ok=True)
        sub(name, me + [variant, "--model", str(mdir), "--warmup", str(args.warmup_padded if variant == "v3" else args.warmup),
                        "--steps", str(args.steps_padded if variant == "v3" else args.steps), "--result", str(res)] + extra, need)
        if res.exists():
            results["variants"][name].update(json.loads(res.read_text()))
        save()

    for name in args.variants:
        if name == "v1":
            ftc("v1", lock, "auto", args.need_v1)  # auto: unsloth when it can run (run.json says why)
        elif name == "v1p":  # v1 with the recipe's 2 x 4 split kept (train.micro_batch=plan)
            ftc("v1p", lock_2x4, "auto", args.need_v1)
        elif name == "v2":
            ftc("v2", lock, "hf", args.need_v2)
        elif name == "v3":
            script("v3", "v3", ["--data", str(arts["data"]["train"])], args.need_v3)
        elif name == "v4" and v4 is not None:
            left = deadline - time.time()
            if left < args.need_v4:
                v4.kill()
                results["variants"]["v4"] = {"skipped": f"{left:.0f} s left"}
                continue
            log("v4: go")
            t = time.time()
            go.touch()
            try:
                rc = v4.wait(timeout=left - 3)
            except subprocess.TimeoutExpired:
                v4.kill()
                rc = "timeout"
            results["variants"]["v4"] = {"wall_s": round(time.time() - t, 1), **({"error": f"exit {rc}"} if rc != 0 else {})}
            if (WORK / "v4.json").exists():
                results["variants"]["v4"].update(json.loads((WORK / "v4.json").read_text()))
            save()
        elif name == "v1q":
            ftc("v1q", lock_q, "unsloth", args.need_v1q)
        elif name == "v3q":
            script("v3q", "v3", ["--data", str(arts["data"]["train"]), "--q4"], args.need_v3q)
    if v4 is not None and v4.poll() is None:
        v4.kill()
    for v in results["variants"].values():
        if v.get("tokens_per_second"):
            v["mfu"] = round(v["tokens_per_second"] * flops["flops_per_token"] / PEAK, 4)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["wall_s"] = round(time.time() - t_start, 1)
    save()
    print_table(results)


def env_facts() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "unsloth", "unsloth_zoo", "bitsandbytes", "triton"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        out["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                     "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out["gpu"] = None
    out["python"] = sys.version.split()[0]
    return out


def print_table(results: dict) -> None:
    v1 = results["variants"].get("v1", {}).get("tokens_per_second")
    v3 = results["variants"].get("v3", {}).get("tokens_per_second")
    v4 = results["variants"].get("v4", {}).get("tokens_per_second")
    print(f"\nshape {results['shape']}  FLOPs/token {results['flops']['flops_per_token'] / 1e9:.2f} G  peak {PEAK / 1e12:.0f} TFLOP/s  "
          f"plan checkpointing={results['plan_gradient_checkpointing']}")
    print(f"{'variant':8} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9} {'pad waste':>9} {'steps':>5}  note")
    for name, v in results["variants"].items():
        if name == "make_model":
            continue
        tps = v.get("tokens_per_second")
        mem = v.get("peak_allocated_gib")
        note = v.get("error") or v.get("skipped") or ""
        if name == "v4" and "packing_isolation" in v:
            note += f" isolation packed {v['packing_isolation']['packed_vs_alone_rel_err']:.2e} leaky {v['packing_isolation']['leaky_vs_alone_rel_err']:.2e}"
        print(f"{name:8} {tps if tps else '-':>9} {format(v['mfu'], '.1%') if v.get('mfu') else '-':>6} {mem if mem else '-':>9} "
              f"{format(v['padding_waste'], '.1%') if v.get('padding_waste') is not None else '-':>9} {v.get('timed_steps', '-'):>5}  {note}")
    if v1 and v3:
        print(f"v1/v3 = {v1 / v3:.1f}x", end="  ")
    if v1 and v4:
        print(f"v1/v4 = {v1 / v4:.3f}", end="")
    print()


def _splits(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in pair.split("x")) for pair in text.split(",")]  # type: ignore[misc]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--shapes", nargs="+", default=["7b", "1.5b"])
    s = sub.add_parser("make-model")
    s.add_argument("--shape", required=True)
    s.add_argument("--dir", required=True)
    for name in ("v3", "v4"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--data")
        s.add_argument("--tokens")
        s.add_argument("--warmup", type=int, default=2)
        s.add_argument("--steps", type=int, default=6)
        s.add_argument("--result", required=True)
        s.add_argument("--q4", action="store_true")
        s.add_argument("--go")
        s.add_argument("--checkpointing", action="store_true")
        s.add_argument("--splits", type=_splits, default=[(2, 4)],
                       help="v4: micro-batch x accumulation pairs, e.g. 2x4,4x2,8x1 (the first is the v4 figure)")
    s = sub.add_parser("run")
    s.add_argument("--shape", default="7b")
    s.add_argument("--out", required=True)
    s.add_argument("--deadline", type=float, default=480, help="seconds for everything")
    s.add_argument("--variants", type=lambda x: x.split(","), default=["v1", "v2", "v3", "v4", "v1q", "v3q"])
    s.add_argument("--warmup", type=int, default=2, help="optimizer steps left out of the timing (packed)")
    s.add_argument("--steps", type=int, default=6, help="timed optimizer steps (packed)")
    s.add_argument("--v4-splits", default="2x4", help="v4: micro-batch x accumulation pairs (the first is the v4 figure)")
    s.add_argument("--warmup-padded", type=int, default=3)
    s.add_argument("--steps-padded", type=int, default=12)
    for name, need in (("v1", 100), ("v2", 70), ("v3", 45), ("v4", 40), ("v1q", 110), ("v3q", 60)):
        s.add_argument(f"--need-{name}", type=float, default=need, help=f"seconds {name} needs (skipped with less left)")
    args = p.parse_args()
    {"prepare": prepare, "make-model": make_model, "v3": variant_v3, "v4": variant_v4, "run": run_all}[args.cmd](args)


if __name__ == "__main__":
    main()
