"""`ftc run` and the commands on a run folder (infer, eval, export), top to bottom.

run: verify the plan -> choose the backend -> guard the output folder -> the run skeleton
(session.py) with the plan's method (methods.py), here or in the unsloth process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftc.compiler.lock import Plan, canonical
from ftc.errors import FtcError
from ftc.runtime.verify import verify

RUN_LOCK = "plan.lock"  # a copy of the plan, kept in the run folder


def choose_backend(asked: str, *, world_size: int = 1) -> tuple[str, str]:
    """(backend, why). unsloth needs CUDA and the unsloth package and runs SFT or GRPO on one
    GPU in its own process (runtime/unsloth_process.py); hf runs anywhere. `auto` takes unsloth
    when it can run, since it is the faster one there, else hf, and says why."""
    import importlib.util

    has_unsloth = importlib.util.find_spec("unsloth") is not None
    import torch

    cuda = torch.cuda.is_available()
    if asked == "hf":
        return "hf", "asked for with --backend hf"
    if asked == "unsloth":
        if not cuda or not has_unsloth:
            missing = " and ".join(x for x, ok in (("a CUDA GPU", cuda), ("the unsloth package", has_unsloth)) if not ok)
            raise FtcError("FTC700", reason=f"--backend unsloth needs {missing}",
                           hint="use --backend hf (transformers + peft + trl), which runs on the CPU too")
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
            raise FtcError("FTC700", reason=f"{out} holds the run of another plan ({other[:12]}, this one is {plan.plan_hash[:12]})",
                           hint="choose another --output folder, or remove that run")
    elif out.exists() and any(out.iterdir()) and not resume:
        raise FtcError("FTC700", reason=f"{out} is not empty and holds no ftc run",
                       hint="choose an empty or new --output folder")


def run_plan(lock_path: str, *, output: str | None = None, resume: bool = False, backend: str = "auto",
             max_steps: int | None = None) -> dict:
    from ftc.runtime.launch import finish_distributed, world

    plan = verify(lock_path)
    rank, world_size = world()
    chosen, why = choose_backend(backend, world_size=world_size)
    if world_size > 1 and chosen == "unsloth":
        raise FtcError("FTC700", reason="the unsloth backend runs on one GPU in this build",
                       hint="use --backend hf for several GPUs (DDP), or run on one GPU")
    out = run_dir_for(plan, output)
    guard_output(out, plan, resume)
    if resume and not (out / "checkpoints").is_dir():
        raise FtcError("FTC700", reason=f"--resume: {out} has no checkpoint", hint="run without --resume to start from step 0")
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
        raise FtcError("FTC700", reason=f"{run_dir} has no {RUN_LOCK}", hint="point at the output folder of `ftc run`")
    return Plan.load(p)


def run_lock(run_dir: Path) -> dict:
    return run_plan_of(run_dir).lock


def prompt_fields(lock: dict) -> list[str]:
    """The fields a request must give: the variables of the prompt-side templates."""
    from ftc.compiler import render

    names: set[str] = set()
    for jp, t in lock["templates"].items():
        if _prompt_side(jp, lock):
            names |= render.variables(render.Template(t["name"], t["text"]))
    return sorted(names)


def _prompt_side(json_path: str, lock: dict) -> bool:
    if json_path == "template.completion":
        return False
    msgs = lock["settings"]["template"].get("messages")
    if json_path.startswith("template.messages[") and isinstance(msgs, list):
        i = int(json_path.split("[")[1].split("]")[0])
        return msgs[i]["role"] != "assistant" and i < max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return True


def format_request(lock: dict, request: dict, tokenizer) -> list[int]:
    """Prompt token ids for `request`, rendered with the very templates the plan trained on."""
    from ftc.compiler import render

    spec = lock["settings"]["template"]
    fmt = spec["format"]
    missing = [f for f in prompt_fields(lock) if f not in request]
    if missing:
        raise FtcError("FTC700", reason=f"the request lacks {', '.join(missing)}",
                       hint=f"give a JSON object with the fields {', '.join(prompt_fields(lock))}")

    def one(jp: str) -> str:
        t = lock["templates"][jp]
        return render.render_rows(render.Template(t["name"], t["text"]), [dict(request)])[0]

    if fmt in ("prompt_completion", "prompt") and isinstance(spec["prompt"], list):
        chat = [{"role": m["role"], "content": one(f"template.prompt[{i}].content")} for i, m in enumerate(spec["prompt"])]
        return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))
    if fmt in ("prompt_completion", "prompt"):
        return tokenizer(one("template.prompt"), add_special_tokens=False)["input_ids"]
    if fmt == "messages":
        if isinstance(spec["messages"], dict):
            chat = request[spec["messages"]["field"]] if spec["messages"]["field"] in request else request.get("messages")
            if chat and chat[-1]["role"] == "assistant":
                chat = chat[:-1]
        else:
            chat = []
            for i, m in enumerate(spec["messages"]):
                if m["role"] == "assistant" and i == max(k for k, x in enumerate(spec["messages"]) if x["role"] == "assistant"):
                    break
                chat.append({"role": m["role"], "content": one(f"template.messages[{i}].content")})
        return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))
    return tokenizer(request.get("text", ""), add_special_tokens=False)["input_ids"]


def infer(run_dir: str, requests: list[dict], *, max_new_tokens: int, temperature: float, top_p: float,
          stream: bool = True, seed: int | None = 0) -> list[str]:
    from ftc.runtime.infer import generate, load_trained, text_streamer

    trained = load_trained(Path(run_dir))
    lock = run_lock(Path(run_dir))
    tok = trained.tokenizer
    outs = []
    for req in requests:
        ids = format_request(lock, req, tok)
        new = generate(trained.model, ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                       temperature=temperature or 1.0, top_p=top_p, seed=seed, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, streamer=text_streamer(tok) if stream else None)
        outs.append(tok.decode(new, skip_special_tokens=True))
    return outs
