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


def choose_backend(asked: str, *, world_size: int = 1, fast_grpo: bool = False, fsdp: str = "") -> tuple[str, str]:
    """(backend, why). unsloth needs CUDA and the unsloth package and runs SFT or GRPO on one
    GPU in its own process (runtime/unsloth_process.py); hf runs anywhere. `auto` takes unsloth
    when it can run, since it is the faster one there, else hf, and says why; unsloth asked for
    by name where it cannot run (FTC701) or with several processes (FTC702) is refused.
    `fast_grpo` (a GRPO plan whose generation takes the merged copy, `grpo_takes_the_copy`): `auto`
    takes hf, where the copy runs, since generation is most of a GRPO step; measured in one H200
    session at the 1.5B shape, 3.0 s a step on hf against 19.4-24.0 s under unsloth. Where the copy
    does not apply (a 4-bit base) unsloth stays: 32.2 s a step against 50.9 s on hf at the 7B shape.
    `fsdp` (the plan's train.fsdp): unsloth does not shard, so `auto` takes hf and unsloth by name
    is refused (FTC768), since FSDP plans run as torchrun ranks even on one GPU."""
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
        if fsdp:
            raise FtcError("FTC768", path="train.fsdp", fsdp=fsdp)
        if world_size > 1:
            raise FtcError("FTC702", world_size=world_size)
        return "unsloth", "asked for with --backend unsloth"
    if not cuda:
        return "hf", "auto: no CUDA GPU"
    if not has_unsloth:
        return "hf", "auto: unsloth is not installed"
    if fsdp:
        return "hf", f"auto: train.fsdp ({fsdp!r}) shards the model, which the unsloth backend does not do"
    if world_size > 1:
        return "hf", "auto: the unsloth backend runs on one GPU, and this run has several processes"
    if fast_grpo:
        return "hf", ("auto: GRPO generates from the merged copy, which runs on the hf backend (3.0 s a step against "
                      "19.4-24.0 s under unsloth on the H200, BENCHMARKS.md; --backend unsloth to use it anyway)")
    return "unsloth", "auto: a CUDA GPU and unsloth are here"


def backend_for(plan: Plan, asked: str, world_size: int) -> tuple[str, str]:
    """`choose_backend` with what it needs to know of `plan`: the one place `ftc run` (before it
    launches torchrun, for the refusals) and every rank (for the choice) derive it."""
    return choose_backend(asked, world_size=world_size, fast_grpo=grpo_takes_the_copy(plan, world_size),
                          fsdp=plan.settings["train"].get("fsdp") or "")


def grpo_takes_the_copy(plan: Plan, world_size: int) -> bool:
    """The plan is GRPO and its generation takes the merged copy (ftc.runtime.generation.for_plan)."""
    if plan.method != "grpo":
        return False
    from ftc.runtime.generation import FAST, for_plan

    return for_plan(plan.settings["train"], plan.settings["model"], world_size=world_size).path == FAST


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


def finished_run(out: Path, plan: Plan, max_steps: int | None) -> dict | None:
    """run.json of the run of this very plan that `out` already holds, finished (not interrupted)
    with the same --max-steps; else None. Training it again would give the same adapter, so
    `ftc run` (with or without --resume) says so and changes nothing."""
    path = out / "run.json"
    if not path.is_file() or not (out / RUN_LOCK).is_file():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a broken run.json is no finished run: the folder guard and the Trainer decide
    train = facts.get("train") or {}
    same = facts.get("plan_hash") == plan.plan_hash and facts.get("settings", {}).get("max_steps_override") == max_steps
    done = not train.get("interrupted") and train.get("global_step") is not None and train.get("global_step") == train.get("max_steps")
    return facts if same and done else None


def trained_nothing(out: Path) -> bool:
    """No optimizer step left a trace in `out`: no checkpoint, no metrics line, no run.json."""
    from ftc.runtime.session import CHECKPOINTS, last_checkpoint

    metrics = out / "metrics.jsonl"
    return (last_checkpoint(out / CHECKPOINTS) is None and not (out / "run.json").exists()
            and not (metrics.is_file() and metrics.read_text(encoding="utf-8").strip()))


def run_plan(lock_path: str, *, output: str | None = None, resume: bool = False, backend: str = "auto",
             max_steps: int | None = None) -> dict:
    from ftc.runtime.launch import finish_distributed, world

    plan = verify(lock_path)
    rank, world_size = world()
    chosen, why = backend_for(plan, backend, world_size)
    out = run_dir_for(plan, output)
    guard_output(out, plan, resume)
    done = finished_run(out, plan, max_steps)
    if done is not None:  # nothing to train, nothing written
        if rank != 0:
            return {}
        step = done["train"]["global_step"]
        print(f"ftc: {out} holds the finished run of plan {plan.plan_hash[:12]} ({step} of {step} steps); nothing to "
              f"{'resume' if resume else 'train'}, nothing changed. To train again, choose another --output.", file=sys.stderr)
        return {**done, "output_dir": str(out), "already_finished": True}
    from ftc.runtime.model import refuse_unloadable
    from ftc.runtime.session import CHECKPOINTS, refuse_resume
    from ftc.runtime.trainer_config import refuse_missing_trackers, refuse_unsharded_fsdp

    refuse_unloadable(plan.settings["model"])  # 4-bit without CUDA or on random weights: before any loading
    refuse_missing_trackers(plan.settings["train"])
    refuse_unsharded_fsdp(plan.settings["train"])
    if resume:  # refused before the run folder is written to
        refuse_resume(out / CHECKPOINTS)
    fresh = not out.exists() or not any(out.iterdir())  # this run makes the folder: a failure before training removes it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        # the run folder's copy of the plan, re-anchored there: infer/eval/export resolve every path from it
        (out / RUN_LOCK).write_text(canonical(plan.anchored_at(out / RUN_LOCK)), encoding="utf-8")
    print(f"ftc: plan {plan.plan_hash[:12]} verified; backend {chosen} ({why}); output {out}", file=sys.stderr)
    if plan.rebuilt:
        print(f"ftc: rebuilt from the sources: {', '.join(plan.rebuilt)}", file=sys.stderr)
    try:
        facts = _train(plan, chosen, why, out, resume=resume, max_steps=max_steps, world_size=world_size)
    except BaseException:
        # a run that failed before its first step leaves no folder behind: the next run of the
        # fixed plan (another plan hash) would be refused by the folder guard
        if rank == 0 and fresh and out.is_dir() and trained_nothing(out):
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            print(f"ftc: the run failed before training started; removed {out}", file=sys.stderr)
        raise
    finish_distributed()
    if rank != 0 or not facts:
        return {}  # rank 0 wrote run.json and the report
    return {**facts, "output_dir": str(out)}


def _train(plan: Plan, chosen: str, why: str, out: Path, *, resume: bool, max_steps: int | None, world_size: int) -> dict:
    """The run skeleton with the plan's method, here or in the unsloth process."""
    if chosen == "unsloth":  # its own process: unsloth must be imported first and patches TRL
        from ftc.runtime.unsloth_process import train_in_child

        return train_in_child(plan, output_dir=out, resume=resume, max_steps_override=max_steps, backend_reason=why)
    from ftc.runtime.methods import method_for
    from ftc.runtime.session import run_method

    return run_method(method_for(plan.method), plan, output_dir=out, resume=resume, backend="hf", backend_reason=why,
                      max_steps_override=max_steps, world_size=world_size)


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
    from ftc.compiler.request import prompt_of_request

    lock = run_lock(Path(run_dir))
    tok = plan_tokenizer(Path(run_dir))
    return tok, [prompt_of_request(lock, req, tok) for req in requests]


class InferSession:
    """A trained run ready to answer: the plan's tokenizer and templates at once, the model
    (base + adapter) on the first answer and then kept, so an interactive session or a file
    of requests pays for loading once."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.lock = run_lock(self.run_dir)
        self._plan_tokenizer = plan_tokenizer(self.run_dir)
        self._trained: Any = None

    def encode(self, requests: list[dict]) -> list[tuple[str | list[dict], list[int]]]:
        """[(prompt, prompt ids)] per request, through the plan's `encode_prompt` (a bad request is refused here)."""
        from ftc.compiler.request import prompt_of_request

        return [prompt_of_request(self.lock, req, self._plan_tokenizer) for req in requests]

    @property
    def trained(self) -> Any:
        if self._trained is None:
            from ftc.runtime.infer import load_trained

            self._trained = load_trained(self.run_dir)
        return self._trained

    def answer(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_p: float,
               stream: bool = False, seed: int | None = 0) -> dict:
        """{completion, completion_ids, prompt_tokens, completion_tokens, stop ("eos" or "length")} for one prompt."""
        from ftc.runtime.infer import generate, text_streamer

        trained = self.trained
        tok = trained.tokenizer  # the run folder's copy: decoding, eos and pad
        new = generate(trained.model, prompt_ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                       temperature=temperature or 1.0, top_p=top_p, seed=seed, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, streamer=text_streamer(tok) if stream else None)
        eos = {tok.eos_token_id} if isinstance(tok.eos_token_id, int) else set(tok.eos_token_id or [])
        return {"completion": tok.decode(new, skip_special_tokens=True), "completion_ids": new, "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(new), "stop": "eos" if new and new[-1] in eos else "length"}


def infer(run_dir: str, requests: list[dict], *, max_new_tokens: int, temperature: float, top_p: float,
          stream: bool = True, seed: int | None = 0) -> list[str]:
    """The completion of each request, in order (the model loaded once)."""
    session = InferSession(run_dir)
    encoded = session.encode(requests)  # a bad request is refused before the weights load
    return [session.answer(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stream=stream,
                           seed=seed)["completion"] for _, ids in encoded]
