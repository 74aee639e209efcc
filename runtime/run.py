"""`ftc run` and the commands on a run folder (infer, eval, export), top to bottom.

run: verify the plan -> choose the backend -> guard the output folder -> the run skeleton
(session.py) with the plan's method (methods.py), here or in the unsloth process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ftc.compiler.lock import Plan, canonical
from ftc.errors import FtcError
from ftc.runtime.verify import verify

RUN_LOCK = "plan.lock"  # a copy of the plan, kept in the run folder


def choose_backend(asked: str, *, world_size: int = 1) -> tuple[str, str]:
    """(backend, why). unsloth needs CUDA and the unsloth package and runs SFT or GRPO on one
    GPU in its own process (runtime/unsloth_process.py); hf runs anywhere. `auto` takes unsloth
    when it can run, since it is the faster one there, else hf, and says why; unsloth asked for
    by name where it cannot run (FTC701) or with several processes (FTC702) is refused."""
    import importlib.util

    has_unsloth = importlib.util.find_spec("unsloth") is not None
    import torch

    cuda = torch.cuda.is_available()
    if asked == "hf":
        return "hf", "asked for with --backend hf"
    if asked == "unsloth":
        if not cuda or not has_unsloth:
            missing = " and ".join(x for x, ok in (("a CUDA GPU", cuda), ("the unsloth package", has_unsloth)) if not ok)
            raise FtcError("FTC701", missing=missing)
        if world_size > 1:
            raise FtcError("FTC702", world_size=world_size)
        return "unsloth", "asked for with --backend unsloth"
    if not cuda:
        return "hf", "auto: no CUDA GPU"
    if not has_unsloth:
        return "hf", "auto: unsloth is not installed"
    if world_size > 1:
        return "hf", "auto: the unsloth backend runs on one GPU, and this run has several processes"
    return "unsloth", "auto: a CUDA GPU and unsloth are here"


def run_dir_for(plan: Plan, output: str | None) -> Path:
    return Path(output) if output else Path("runs") / f"{plan.name}-{plan.plan_hash[:8]}"


def guard_output(out: Path, plan: Plan, resume: bool) -> None:
    """An output folder holds one plan's run; never train a second plan into it."""
    kept = out / RUN_LOCK
    if kept.exists():
        other = json.loads(kept.read_text(encoding="utf-8")).get("plan_hash", "")
        if other != plan.plan_hash:
            raise FtcError("FTC704", folder=str(out), other=other[:12] or "no plan_hash", ours=plan.plan_hash[:12])
    elif out.exists() and any(out.iterdir()) and not resume:
        raise FtcError("FTC705", folder=str(out))


def run_plan(lock_path: str, *, output: str | None = None, resume: bool = False, backend: str = "auto",
             max_steps: int | None = None) -> dict:
    from ftc.runtime.launch import finish_distributed, world

    plan = verify(lock_path)
    rank, world_size = world()
    chosen, why = choose_backend(backend, world_size=world_size)
    out = run_dir_for(plan, output)
    guard_output(out, plan, resume)
    from ftc.runtime.session import CHECKPOINTS, refuse_resume

    if resume:  # refused before the run folder is written to
        refuse_resume(out / CHECKPOINTS)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        # the run folder's copy of the plan, re-anchored there: infer/eval/export resolve every path from it
        (out / RUN_LOCK).write_text(canonical(plan.anchored_at(out / RUN_LOCK)), encoding="utf-8")
    print(f"ftc: plan {plan.plan_hash[:12]} verified; backend {chosen} ({why}); output {out}", file=sys.stderr)
    if plan.rebuilt:
        print(f"ftc: rebuilt from the sources: {', '.join(plan.rebuilt)}", file=sys.stderr)
    if chosen == "unsloth":  # its own process: unsloth must be imported first and patches TRL
        from ftc.runtime.unsloth_process import train_in_child

        facts = train_in_child(plan, output_dir=out, resume=resume, max_steps_override=max_steps, backend_reason=why)
    else:
        from ftc.runtime.methods import method_for
        from ftc.runtime.session import run_method

        facts = run_method(method_for(plan.method), plan, output_dir=out, resume=resume, backend="hf", backend_reason=why,
                           max_steps_override=max_steps, world_size=world_size)
    finish_distributed()
    if rank != 0 or not facts:
        return {}  # rank 0 wrote run.json and the report
    return {**facts, "output_dir": str(out)}


# ---------------------------------------------------------------- inference with the training template

def run_plan_of(run_dir: Path) -> Plan:
    """The plan a run folder trained on (its own copy of the lock, anchored at the folder)."""
    p = Path(run_dir) / RUN_LOCK
    if not p.exists():
        raise FtcError("FTC708", folder=str(run_dir), missing=RUN_LOCK)
    return Plan.load(p)


def run_lock(run_dir: Path) -> dict:
    return run_plan_of(run_dir).lock


def plan_tokenizer(run_dir: Path) -> Any:
    """The tokenizer the plan was compiled with (not the copy saved in the run folder), through
    the compiler's one loader, refused if it changed since: its ids must be the training ids."""
    from ftc.compiler.inputs import tokenizer_drift
    from ftc.compiler.tokenizer import load_tokenizer

    plan = run_plan_of(Path(run_dir))
    changed = tokenizer_drift(plan)
    if changed:
        raise changed.error(plan)
    model = plan.settings["model"]
    tok, _ = load_tokenizer(plan.tokenizer_location, model["tokenizer_revision"], model["trust_remote_code"])
    return tok


def encode_requests(run_dir: Path, requests: list[dict]) -> tuple[Any, list[tuple[str | list[dict], list[int]]]]:
    """(the plan's tokenizer, [(prompt, prompt ids) per request, in order]): the plan's templates
    and `encode_prompt`, exactly as training made its prompt part. No model is loaded."""
    from ftc.compiler.encode import prompt_of_request

    lock = run_lock(Path(run_dir))
    tok = plan_tokenizer(Path(run_dir))
    return tok, [prompt_of_request(lock, req, tok) for req in requests]


def infer(run_dir: str, requests: list[dict], *, max_new_tokens: int, temperature: float, top_p: float,
          stream: bool = True, seed: int | None = 0) -> list[str]:
    from ftc.runtime.infer import generate, load_trained, text_streamer

    _, encoded = encode_requests(Path(run_dir), requests)  # a bad request is refused before the weights load
    trained = load_trained(Path(run_dir))
    tok = trained.tokenizer  # the run folder's copy: decoding, eos and pad
    outs = []
    for _, ids in encoded:
        new = generate(trained.model, ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                       temperature=temperature or 1.0, top_p=top_p, seed=seed, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, streamer=text_streamer(tok) if stream else None)
        outs.append(tok.decode(new, skip_special_tokens=True))
    return outs
