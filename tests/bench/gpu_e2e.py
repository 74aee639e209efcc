#!/usr/bin/env python3
"""The three recipes end to end on the GPU with the unsloth backend (a script; pytest does not collect it).

What it shows (issue 6, "also run for real"): `ftc run` trains the alpaca and medical recipes for a
few hundred steps on a Qwen2.5-1.5B-shaped model (the loss falls, the adapter is saved) and
`ftc infer` answers through the training template; `recipes/gsm8k_grpo.json` runs a few GRPO steps
with the unsloth backend. Nothing can be downloaded on the lent machine, so the model is the
recipe's own architecture at the 1.5B shape built with random weights (`model.init=random`, its
config in .e2e/qwen2-1.5b/, seeded, fingerprinted); the tokenizer is the real Qwen2.5 one from
../shared. Random weights mean the answers are not meaningful text and the GRPO rewards stay 0;
what is checked is that every stage runs on the GPU as planned and what it records.

CPU side (writes .e2e/, git-ignored, and the compiled artifacts; prints what to carry):
  .venv/bin/python tests/bench/gpu_e2e.py prepare
Device side (the three runs in parallel on the one GPU; see BENCHMARKS.md for the command):
  python3 tests/bench/gpu_e2e.py run --out $OUT
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
E2E = ROOT / ".e2e"
SHAPE_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 rope_theta=1000000.0, hidden_act="silu", model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                 torch_dtype="bfloat16", use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)
COMMON = ["model.name=.e2e/qwen2-1.5b", "model.init=random", "model.tokenizer=.e2e/tok", "model.load_in_4bit=false"]
JOBS = {
    # name: (recipe, extra --set, ftc run --max-steps, infer input)
    "alpaca": ("recipes/alpaca.json", [], 300,
               {"instruction": "Give three tips for staying healthy.", "input": ""}),
    # one pack pair per step (instead of 2 x 4) so that 300 steps fit the call; 2 epochs of the packs
    "medical": ("recipes/medical.json", ["train.gradient_accumulation_steps=1"], 300,
                {"input": "高血压患者平时饮食需要注意什么?"}),
    "gsm8k_grpo": ("recipes/gsm8k_grpo.json", [], 5,
                   {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                                "How many clips did Natalia sell altogether in April and May?"}),
}


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(args) -> None:
    E2E.mkdir(exist_ok=True)
    (E2E / "qwen2-1.5b").mkdir(exist_ok=True)
    (E2E / "qwen2-1.5b" / "config.json").write_text(json.dumps(SHAPE_15B, indent=1))
    tok = E2E / "tok"
    if not tok.exists():
        shutil.copytree(ROOT.parent / "shared" / "tokenizers" / "qwen2.5-bpe", tok)
        for f in tok.iterdir():
            f.chmod(0o644)
    carry = {".e2e", "recipes/.ftc"}  # the run needs only the locks' artifacts (listed), but a call carries 8 paths at most
    for name, (recipe, sets, _, _) in JOBS.items():
        lock = E2E / f"{name}.lock"
        cmd = [sys.executable, "-m", "ftc.cli", "compile", recipe, "-o", str(lock), "-q"]
        for s in COMMON + sets:
            cmd += ["--set", s]
        subprocess.run(cmd, cwd=ROOT, check=True)
        from ftc.compiler.lock import Plan  # a lock's paths are relative to its recipe: the Plan view resolves them

        view = Plan.load(lock)
        artifacts = sorted(os.path.relpath(view.path(a["path"]), ROOT) for _, _, a in view.artifacts())
        print(f"{name}: {lock.relative_to(ROOT)} needs {', '.join(artifacts)}")
    print(json.dumps({"carry": sorted(carry)}, indent=1))


def run(args) -> None:
    import threading

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    deadline = time.time() + args.deadline
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "backend": args.backend, "jobs": {}}
    lock = threading.Lock()

    def job(name: str, steps: int, prompt: dict) -> None:
        run_dir = work / name
        (work / f"{name}.input.json").write_text(json.dumps(prompt, ensure_ascii=False))
        cli = [sys.executable, "-m", "ftc.cli"]
        rc: dict = {}
        t = time.time()
        with open(out / f"{name}.log", "w") as logf:
            for stage, cmd in (("run", cli + ["run", str(E2E / f"{name}.lock"), "--backend", args.backend, "--output", str(run_dir),
                                              "--max-steps", str(steps)]),
                               ("infer", cli + ["infer", str(run_dir), "--input", str(work / f"{name}.input.json"),
                                                "--max-new-tokens", "48"])):
                if stage == "infer" and rc.get("run") != 0:
                    break
                log(f"{name} {stage}: {' '.join(cmd)}")
                try:
                    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE if stage == "infer" else logf,
                                       stderr=logf, text=True, timeout=max(deadline - time.time(), 1))
                    rc[stage] = p.returncode
                    if stage == "infer":
                        (work / f"{name}.infer.txt").write_text(p.stdout or "")
                except subprocess.TimeoutExpired:
                    rc[stage] = "timeout"
                log(f"{name} {stage}: exit {rc[stage]} after {time.time() - t:.0f} s")
        with lock:
            results["jobs"][name] = {"rc": rc, "wall_s": round(time.time() - t, 1), **summary(run_dir, work / f"{name}.infer.txt")}
            (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str))

    threads = [threading.Thread(target=job, args=(name, steps, prompt))
               for name, (_, _, steps, prompt) in JOBS.items() if not args.only or name in args.only]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for name in results["jobs"]:
        for f in ("run.json", "metrics.jsonl", "report.md", "loss.png", "rewards.png"):
            if (work / name / f).exists():
                shutil.copy(work / name / f, out / f"{name}_{f}")
    print(json.dumps(results, indent=1, ensure_ascii=False, default=str))


def summary(run_dir: Path, infer: Path) -> dict:
    out: dict = {}
    if (run_dir / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        losses = [r["loss"] for r in rows if r.get("loss") is not None]
        tenth = max(len(losses) // 10, 1)
        out["steps_logged"] = len(losses)
        out["loss_first_tenth_mean"] = round(sum(losses[:tenth]) / tenth, 4) if losses else None
        out["loss_last_tenth_mean"] = round(sum(losses[-tenth:]) / tenth, 4) if losses else None
        out["rewards"] = [r.get("reward") for r in rows if "reward" in r]
    if (run_dir / "run.json").exists():
        f = json.loads((run_dir / "run.json").read_text())
        out.update({k: f.get(k) for k in ("backend", "backend_reason", "backend_facts", "throughput_tokens_per_second", "mfu",
                                          "peak_memory", "memory_plan", "eval", "grpo")})
        out["train"] = f.get("train")
        out["model"] = {k: (f.get("model") or {}).get(k) for k in ("random_init", "fingerprint", "num_parameters", "trainable_parameters",
                                                                   "attn_implementation")}
    out["adapter_saved"] = (run_dir / "adapter_model.safetensors").exists()
    out["infer"] = infer.read_text() if infer.exists() else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    s = sub.add_parser("run")
    s.add_argument("--out", required=True)
    s.add_argument("--work", default="/tmp/ftc-e2e")
    s.add_argument("--backend", default="unsloth")
    s.add_argument("--deadline", type=float, default=500)
    s.add_argument("--only", nargs="*")
    args = p.parse_args()
    {"prepare": prepare, "run": run}[args.cmd](args)


if __name__ == "__main__":
    main()
