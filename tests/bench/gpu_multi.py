#!/usr/bin/env python3
"""Issue 16 on two GPUs of one host: DDP, FSDP with LoRA, unsloth, GRPO (a script; pytest does not collect it).

One lock per purpose, compiled on the CPU; every variant is `ftc run` as shipped, in a process of its own
(torchrun for 2 ranks, the way `ftc run --gpus 2` launches), with a benchmark-only spy installed in each
rank before ftc's CLI starts (nothing in ftc's runtime changes):
  ddp1 / ddp2    the medical plan, packed, the memory plan's split, on 1 and 2 GPUs (the SAME lock)
  fsdp2          the same plan with train.fsdp="full_shard auto_wrap" on 2 GPUs; then the saved adapter
                 loads with PEFT on one GPU and `ftc infer` answers a short request
  fsdp1          the FSDP plan on one GPU, as `ftc run --gpus 1` launches it (torchrun, one rank: the Trainer
                 takes FSDP in distributed training only), checked as fsdp2; against ddp1
  unsloth2       `ftc run --backend unsloth --gpus 2` as it is today (refused: FTC702, runtime/run.py
                 choose_backend); if the refusal were lifted the same variant measures it (metrics.jsonl)
  grpo1 / grpo2  gsm8k_grpo (gpu_grpo.py's work, generation=auto: the fast path) on 1 and 2 GPUs
The spy (per rank, rank<r>.json, rewritten every step): wall seconds per optimizer step (CUDA-synchronized),
the dataloader wait per step (Trainer.get_batch_samples), tokens per step, DDP all-reduce time per step (a
communication hook timing each bucket from "ready" to "reduced", CUDA events on the GPU), peak memory, and
the fast generator's calls. Each variant's JSON is written under --out as it finishes; run folders go to /tmp.

CPU side:   .venv/bin/python tests/bench/gpu_multi.py prepare --shape 7b      (writes .bench/multi/, .bench/grpo/)
Device:     python3 tests/bench/gpu_multi.py run --shape 7b --variants ddp1,ddp2 --steps 30 --out $OUT
CPU check:  prepare --shape tiny, then run --shape tiny --steps 3 --out /tmp/multi-out (gloo, 2 processes)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import BENCH, SHAPES, model_dir  # noqa: E402  (the 7B shape, the model built on the device)

MULTI = BENCH / "multi"
WORK_GRPO = BENCH / "grpo"  # gpu_grpo.py's folder (its WORK)
RUNS = Path(os.environ.get("FTC_MULTI_RUNS", "/tmp/ftc-multi"))  # adapters: never under --out
FSDP = "full_shard auto_wrap"
WARMUP = 5  # steps left out of the medians (the first steps are reported on their own)


def log(msg: str) -> None:
    print(f"[multi {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def compile_lock(recipe: Path, lock: Path, sets: list[str]) -> None:
    cmd = [sys.executable, "-m", "ftc", "compile", str(recipe), "-o", str(lock), "-q", *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, cwd=ROOT)


def prepare(args) -> None:
    """sft-<shape>.lock (medical, packed, micro_batch as the recipe: the memory plan's split),
    fsdp-<shape>.lock (the same + train.fsdp), grpo-<shape>.lock (gpu_grpo.py's work, the recipe's
    8 completions a step as 4 x 2 accumulation so that 2 ranks can divide it)."""
    tiny = args.shape == "tiny"
    MULTI.mkdir(parents=True, exist_ok=True)
    grpo = [sys.executable, str(ROOT / "tests/bench/gpu_grpo.py"), "prepare"] + (["--tiny"] if tiny else [])
    subprocess.run(grpo, check=True, cwd=ROOT)  # also the one tokenizer copy every lock here names (18 MB)
    import gpu_grpo
    shutil.copytree(ROOT / "templates", MULTI / "templates", dirs_exist_ok=True)  # the recipe's ../templates/
    (MULTI / "recipes").mkdir(exist_ok=True)
    recipe = json.loads((ROOT / "recipes/medical.json").read_text(encoding="utf-8"))
    recipe.pop("$schema", None)
    recipe["sources"]["medical"]["path"] = os.path.relpath(ROOT.parent / "shared/data/medical", MULTI / "recipes")
    (MULTI / "recipes/medical.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    # paths relative to the recipe's folder (the lock keeps them so): the device's checkout lies elsewhere
    sets = [f"model.name={model_dir(args.shape)}", "model.tokenizer=../../grpo/tok", "model.load_in_4bit=false",
            "train.packing=true", "train.optim=adamw_torch", "train.save_steps=100000", "train.logging_steps=1",
            "split.eval=0"]
    sets += (["model.dtype=float32", "model.max_seq_length=256", "train.gradient_checkpointing=false"] if tiny
             else ["model.dtype=bfloat16", "model.max_seq_length=2048"])
    compile_lock(MULTI / "recipes/medical.json", MULTI / f"sft-{args.shape}.lock", sets)
    compile_lock(MULTI / "recipes/medical.json", MULTI / f"fsdp-{args.shape}.lock", [*sets, f"train.fsdp={FSDP}"])
    # Random weights score 0 on both gsm8k rewards (no std in a group: loss 0, nothing to compare across
    # GPU counts); a third reward that about half of random completions earn gives the groups a spread.
    grpo_recipe = json.loads((gpu_grpo.WORK / "recipe.json").read_text(encoding="utf-8"))
    grpo_recipe["train"]["grpo"]["rewards"].append({"kind": "regex", "name": "starts_latin", "weight": 1.0, "pattern": "^\\s*[A-Za-z]"})
    (gpu_grpo.WORK / "recipe-multi.json").write_text(json.dumps(grpo_recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    split = ["train.per_device_train_batch_size=2"] if tiny else ["train.per_device_train_batch_size=4"]
    compile_lock(gpu_grpo.WORK / "recipe-multi.json", MULTI / f"grpo-{args.shape}.lock",
                 [*gpu_grpo.settings(tiny), "train.grpo.generation=auto", *split, "train.gradient_accumulation_steps=2",
                  "model.name=model", "model.tokenizer=tok"])  # gpu_grpo's absolute paths, made relative
    sizes = subprocess.run(["du", "-sh", str(BENCH)], capture_output=True, text=True).stdout.strip()
    log(f"prepared {MULTI} for {args.shape} ({sizes}); carry .whl-bench, .bench/multi and .bench/grpo (not .bench/tok)")


# ------------------------------------------------------------------ the spy (in each rank, before ftc starts)

def install_spy(spy_dir: Path) -> None:
    """Wrap transformers.Trainer (every TRL trainer calls its __init__) so that each rank records its own
    step times, dataloader wait, tokens, all-reduce time and peak memory in spy_dir/rank<r>.json."""
    import torch
    import transformers

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    rec: dict = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "step_s": [], "data_wait_s": [],
                 "tokens": [], "allreduce": [], "generate_calls": 0, "generate_s": 0.0, "device": "cpu"}
    pending: list = []  # (step, bucket index, start, end): CUDA events resolve at the next step end
    spy_dir.mkdir(parents=True, exist_ok=True)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = {"t": None, "wait": 0.0, "tokens": 0, "step": 0}

    def flush() -> None:
        sync()
        per: dict[int, list[float]] = {}
        for step, _, start, end in pending:
            ms = start.elapsed_time(end) if cuda else (end["t"] - start) * 1e3
            per.setdefault(step, []).append(round(ms, 3))
        pending.clear()
        for step, buckets in sorted(per.items()):
            rec["allreduce"].append({"step": step, "buckets": len(buckets), "sum_ms": round(sum(buckets), 3),
                                     "last_ms": buckets[-1], "max_ms": max(buckets)})
        if cuda:  # read here, not at install: CUDA is not initialized before ftc picks this rank's GPU
            rec["device"] = f"{torch.cuda.get_device_name()} (cuda:{torch.cuda.current_device()})"
            rec["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rec["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        (spy_dir / f"rank{rank}.json").write_text(json.dumps(rec, indent=1))

    def timed_hook(state, bucket):
        import torch.distributed as dist

        step = clock["step"]
        tensor = bucket.buffer().div_(dist.get_world_size())
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start, end = time.perf_counter(), {}
        fut = dist.all_reduce(tensor, async_op=True).get_future()

        def done(f):
            if cuda:
                end.record()  # on the stream the reduced value is ready on
            else:
                end["t"] = time.perf_counter()
            pending.append((step, bucket.index(), start, end))
            return f.value()[0]

        return fut.then(done)

    def hook_ddp(trainer) -> None:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = trainer.model_wrapped
        if "wrapper" not in rec:  # which parallelism the Trainer really applied (FSDP is not applied on the CPU)
            rec["wrapper"] = f"{type(wrapped).__name__}; Trainer.is_fsdp_enabled={getattr(trainer, 'is_fsdp_enabled', None)}"
        if rec.get("comm_hook") is None and isinstance(wrapped, DistributedDataParallel):
            wrapped.register_comm_hook(None, timed_hook)
            rec["comm_hook"] = "DDP buckets timed from ready to reduced"
        elif rec.get("comm_hook") is None:
            rec["comm_hook"] = f"none: the model is a {type(wrapped).__name__}"

    class Spy(transformers.TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_train_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            clock["t"] = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            hook_ddp(self.trainer)  # the Trainer wraps the model in DDP inside train(): before the first backward
            clock["step"] = state.global_step + 1

        def on_step_end(self, args, state, control, **kw):
            sync()
            now = time.perf_counter()
            rec["step_s"].append(round(now - clock["t"], 4))
            rec["data_wait_s"].append(round(clock["wait"], 4))
            rec["tokens"].append(clock["tokens"])
            clock.update(t=now, wait=0.0, tokens=0)
            flush()

        def on_train_end(self, args, state, control, **kw):
            flush()

    plain_init, plain_batches = transformers.Trainer.__init__, transformers.Trainer.get_batch_samples

    def init(self, *a, **kw):
        plain_init(self, *a, **kw)
        self.add_callback(Spy(self))

    def batches(self, epoch_iterator, num_batches, device):
        t0 = time.perf_counter()
        out = plain_batches(self, epoch_iterator, num_batches, device)
        clock["wait"] += time.perf_counter() - t0
        for b in out[0]:
            ids = b.get("input_ids") if isinstance(b, dict) else None
            if ids is not None:
                mask = b.get("attention_mask")
                clock["tokens"] += int(mask.sum()) if mask is not None else int(ids.numel())
        return out

    transformers.Trainer.__init__, transformers.Trainer.get_batch_samples = init, batches
    try:
        from ftc.runtime import generation

        plain_generate = generation.MergedGenerator.generate

        def generate(self, *a, **kw):
            sync()
            t0 = time.perf_counter()
            out = plain_generate(self, *a, **kw)
            sync()
            rec["generate_calls"] += 1
            rec["generate_s"] = round(rec["generate_s"] + time.perf_counter() - t0, 3)
            return out

        generation.MergedGenerator.generate = generate
    except (ImportError, AttributeError) as err:
        rec["generate_spy"] = f"not installed: {err}"


def worker(args) -> None:
    install_spy(Path(args.spy))
    from ftc.cli import main as ftc_main

    raise SystemExit(ftc_main(args.rest))


# ------------------------------------------------------------------ the variants (parent process)

def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return round(xs[len(xs) // 2], 4) if xs else None


def summarize(spy: Path, run_dir: Path) -> dict:
    ranks = [json.loads(p.read_text()) for p in sorted(spy.glob("rank*.json"))]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if (run_dir / "metrics.jsonl").exists() else []
    facts = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    out: dict = {"losses": [m["loss"] for m in metrics if "loss" in m], "per_rank": []}
    for r in ranks:
        steady = slice(WARMUP, None) if len(r["step_s"]) > WARMUP + 2 else slice(1, None)
        step, tokens = r["step_s"][steady], r["tokens"][steady]
        red = r["allreduce"][steady] if r["allreduce"] else []
        out["per_rank"].append({
            "rank": r["rank"], "device": r["device"], "steps": len(r["step_s"]), "first_steps_s": r["step_s"][:3],
            "median_step_s": median(step), "median_data_wait_s": median(r["data_wait_s"][steady]),
            "tokens_per_s": round(sum(tokens) / sum(step), 1) if step and sum(step) and sum(tokens) else None,
            "median_allreduce_sum_ms": median([a["sum_ms"] for a in red]), "median_allreduce_last_bucket_ms": median([a["last_ms"] for a in red]),
            "buckets_per_step": red[0]["buckets"] if red else 0, "wrapper": r.get("wrapper"), "comm_hook": r.get("comm_hook"),
            "peak_allocated_gib": r.get("peak_allocated_gib"), "peak_reserved_gib": r.get("peak_reserved_gib"),
            "generate_calls": r["generate_calls"], "generate_s": r["generate_s"]})
    rates = [r["tokens_per_s"] for r in out["per_rank"] if r["tokens_per_s"]]
    out["tokens_per_s_total"] = round(sum(rates), 1) if rates else None
    if not ranks and facts:  # no spy in this process tree (the unsloth backend trains in a child process)
        warm = [m["tokens_per_second"] for m in metrics if "tokens_per_second" in m][WARMUP:]
        out["tokens_per_s_total"] = round(median(warm) * (facts.get("distributed") or {}).get("world_size", 1), 1) if warm else None
        out["spy"] = "none: tokens/s from rank 0's metrics.jsonl (median after the warm-up) x world size"
    if facts:
        out["facts"] = {k: facts.get(k) for k in ("backend", "distributed", "peak_memory", "memory_plan", "throughput_tokens_per_second")}
        if facts.get("grpo"):
            try:
                cfg_file = Path(facts["settings"]["model"]["name"]) / "config.json"
                out["grpo_model_hidden_size"] = json.loads(cfg_file.read_text())["hidden_size"]  # 1536: gpu_grpo's 1.5B shape; 64: its tiny one
            except (KeyError, OSError, ValueError):
                out["grpo_model_hidden_size"] = None
            out["grpo"] = {"generation": facts["grpo"].get("generation"), "generation_batch_size": facts["grpo"].get("generation_batch_size")}
            keys = ("reward", "reward_std", "loss", "grad_norm", "step_time", "generation/seconds", "completions/mean_length")
            out["per_step"] = [{k: m.get(k) for k in keys if k in m} for m in metrics if "loss" in m]
    return out


def train(args, name: str, lock: str, gpus: int, backend: str = "hf") -> tuple[dict, Path]:
    run_dir, spy = RUNS / name, RUNS / f"{name}.spy"
    for p in (run_dir, spy):
        shutil.rmtree(p, ignore_errors=True)
    ftc_args = ["run", str(MULTI / lock), "--backend", backend, "--gpus", str(gpus), "--max-steps", str(args.steps), "--output", str(run_dir)]
    me = [str(Path(__file__).resolve()), "worker", "--spy", str(spy), "--"]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    from ftc.runtime.launch import needs_launch

    if needs_launch(str(MULTI / lock), gpus=gpus, nnodes=1):  # what `ftc run --gpus N` runs, with the spy as the entry point
        env["FTC_DISTRIBUTED_WORKER"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *me, *ftc_args]
    else:  # the first GPU, as `ftc run --gpus 1` pins it (set here: the spy imports torch first)
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
        cmd = [sys.executable, *me, *ftc_args]
    t0 = time.time()
    log_file = Path(args.out) / f"{name}.log"
    with log_file.open("w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    result = {"rc": rc, "wall_s": round(time.time() - t0, 1), "lock": lock, "gpus": gpus, "backend": backend}
    if rc != 0:
        text = log_file.read_text(errors="replace")
        result["tail"] = text[-2500:]
        refused = sorted({line.strip() for line in text.splitlines() if line.startswith("error[FTC")})
        if refused:  # a rank refused the run (unsloth2 today: FTC702, or FTC701 without CUDA/unsloth)
            result["refused"] = refused
    return {**result, **summarize(spy, run_dir)}, run_dir


def compare(a: dict | None, b: dict | None) -> dict:
    if not (a and b and a.get("losses") and b.get("losses")):
        return {}
    n = min(len(a["losses"]), len(b["losses"]))
    out = {"steps_compared": n, "max_abs_loss_diff": round(max(abs(x - y) for x, y in zip(a["losses"][:n], b["losses"][:n])), 6)}
    if a.get("per_step") and b.get("per_step"):  # GRPO: the logged loss is ~0 on-policy; rewards and gradients say more
        mean = lambda rows, k: round(sum(r.get(k) or 0 for r in rows[:n]) / n, 4)  # noqa: E731
        out.update({f"mean_{k}": [mean(a["per_step"], k), mean(b["per_step"], k)] for k in ("reward", "grad_norm", "step_time")})
        out["max_abs_grad_norm_diff"] = round(max(abs((x.get("grad_norm") or 0) - (y.get("grad_norm") or 0))
                                                  for x, y in zip(a["per_step"][:n], b["per_step"][:n])), 6)
    return out


def check_adapter(args, run_dir: Path, name: str) -> dict:
    """The FSDP adapter on one GPU: PEFT loads it onto the base (every LoRA tensor found, B non-zero:
    trained), and `ftc infer` answers a short request."""
    code = ("import json,sys,torch; from peft import PeftModel; from transformers import AutoModelForCausalLM\n"
            "d=sys.argv[1]; lock=json.load(open(d+'/plan.lock')); name=lock['settings']['model']['name']\n"
            "dev='cuda' if torch.cuda.is_available() else 'cpu'\n"
            "base=AutoModelForCausalLM.from_pretrained(name, dtype=torch.bfloat16 if dev=='cuda' else torch.float32).to(dev)\n"
            "m=PeftModel.from_pretrained(base, d)\n"
            "b=[p for n,p in m.named_parameters() if 'lora_B' in n]\n"
            "print(json.dumps({'lora_B_tensors': len(b), 'lora_B_nonzero': sum(int(p.abs().sum()>0) for p in b)}))\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    peft = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
    req = json.dumps({"input": "What helps a mild headache?"})
    infer = subprocess.run([sys.executable, "-m", "ftc", "infer", str(run_dir), "--input", req, "--max-new-tokens", "8",
                            "--output", str(RUNS / f"{name}-infer.jsonl")], cwd=ROOT, env=env, capture_output=True, text=True)
    answers = (RUNS / f"{name}-infer.jsonl").read_text() if (RUNS / f"{name}-infer.jsonl").exists() else ""
    return {"peft_rc": peft.returncode, "peft": peft.stdout.strip()[-400:] or peft.stderr[-1500:],
            "infer_rc": infer.returncode, "infer_answer": answers[:600], "infer_tail": "" if infer.returncode == 0 else infer.stderr[-1500:]}


PAIRS = (("ddp1", "ddp2"), ("ddp2", "fsdp2"), ("ddp1", "fsdp1"), ("ddp2", "unsloth2"), ("grpo1", "grpo2"))


def cross(res: dict, name: str) -> None:
    """res[name] against the variant it is measured against (loss curves, scaling, peak memory)."""
    for a, b in PAIRS:
        if b == name and a in res:
            res[name][f"loss_vs_{a}"] = compare(res[a], res[name])
    one = res.get("ddp1", {}).get("tokens_per_s_total")
    if name in ("ddp2", "fsdp2", "unsloth2") and one and res[name].get("tokens_per_s_total"):
        res[name]["scaling_vs_ddp1"] = round(res[name]["tokens_per_s_total"] / one, 3)
    for fsdp, ddp in (("fsdp2", "ddp2"), ("fsdp1", "ddp1")):
        if name == fsdp and res.get(ddp):
            res[name][f"peak_allocated_gib_vs_{ddp}"] = [[r.get("peak_allocated_gib") for r in res[v]["per_rank"]] for v in (fsdp, ddp)]


def compare_dirs(args) -> None:
    """The comparisons across device calls: every <variant>.json under the folders given (fetched from
    each call's $OUT), compared as `run` compares within one call; written to --write."""
    res = {}
    for d in args.dirs:
        for p in sorted(Path(d).rglob("*.json")):
            if p.stem in dict.fromkeys(v for pair in PAIRS for v in pair):
                res[p.stem] = json.loads(p.read_text())
    for name in list(res):
        cross(res, name)
    table = {n: {k: r.get(k) for k in ("tokens_per_s_total", "scaling_vs_ddp1", "peak_allocated_gib_vs_ddp2",
                                     "peak_allocated_gib_vs_ddp1", "refused",
                                     *(f"loss_vs_{a}" for a, b in PAIRS if b == n))} for n, r in res.items()}
    Path(args.write).write_text(json.dumps(res, indent=1))
    print(json.dumps(table, indent=1))


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s, res = args.shape, {}
    plan = {"ddp1": (f"sft-{s}.lock", 1, "hf"), "ddp2": (f"sft-{s}.lock", 2, "hf"), "fsdp2": (f"fsdp-{s}.lock", 2, "hf"),
            "fsdp1": (f"fsdp-{s}.lock", 1, "hf"),
            "unsloth2": (f"sft-{s}.lock", 2, "unsloth"), "grpo1": (f"grpo-{s}.lock", 1, "hf"), "grpo2": (f"grpo-{s}.lock", 2, "hf")}
    if not (BENCH / "tok").exists():  # gpu_bench.py make-model copies BENCH/tok next to the weights
        shutil.copytree(WORK_GRPO / "tok", BENCH / "tok")
    if s != "tiny" or not model_dir(s).joinpath("config.json").exists():  # the SFT base, built once per machine
        if any(v in args.variants for v in ("ddp1", "ddp2", "fsdp1", "fsdp2", "unsloth2")):
            subprocess.run([sys.executable, str(ROOT / "tests/bench/gpu_bench.py"), "make-model", "--shape", s, "--dir", str(model_dir(s))],
                           cwd=ROOT, check=True)
    for name in args.variants:
        log(f"{name} ...")
        res[name], run_dir = train(args, name, *plan[name])
        if name in ("fsdp1", "fsdp2") and res[name]["rc"] == 0:
            res[name]["adapter_check"] = check_adapter(args, run_dir, name)
        cross(res, name)
        (out / f"{name}.json").write_text(json.dumps(res[name], indent=1))
        brief = {k: res[name].get(k) for k in ("rc", "wall_s", "tokens_per_s_total", "scaling_vs_ddp1", "loss_vs_ddp1", "loss_vs_ddp2",
                                               "loss_vs_grpo1", "refused", "adapter_check")}
        log(f"{name}: {json.dumps(brief)}")
        for r in res[name]["per_rank"]:
            log(f"  rank {r['rank']}: {json.dumps({k: v for k, v in r.items() if k != 'rank'})}")
    (out / "summary.json").write_text(json.dumps(res, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--shape", choices=list(SHAPES), default="7b")
    s = sub.add_parser("run")
    s.add_argument("--shape", choices=list(SHAPES), default="7b")
    s.add_argument("--variants", type=lambda x: x.split(","), default=["ddp1", "ddp2", "fsdp2", "unsloth2", "grpo1", "grpo2"])
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--out", default=os.environ.get("OUT", "/tmp/multi-out"))
    s = sub.add_parser("compare", help="compare variants measured in different calls (their fetched $OUT folders)")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--write", default="/tmp/multi-compare.json")
    s = sub.add_parser("worker", help="one rank: the spy, then ftc's CLI with the arguments after --")
    s.add_argument("--spy", required=True)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.cmd == "worker" and args.rest[:1] == ["--"]:
        args.rest = args.rest[1:]
    {"prepare": prepare, "run": run_all, "compare": compare_dirs, "worker": worker}[args.cmd](args)


if __name__ == "__main__":
    main()
