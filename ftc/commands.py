"""The commands behind the CLI; each imports what it needs when it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_root(s) -> None:
    """--root DIR: the project is the recipe's folder plus these (ftc.compiler.project_files)."""
    s.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="a folder, besides the recipe's own, that template and reward files may come from (repeatable)")


def add_runtime_parsers(sub) -> None:
    """Parsers for commands that live in ftc.runtime (run, infer, eval, export, score)."""
    s = sub.add_parser("run", help="verify a plan.lock and train")
    s.add_argument("lock")
    s.add_argument("--output", help="run folder (default: runs/<name>-<plan hash prefix>)")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    s.add_argument("--backend", choices=["auto", "hf", "unsloth"], default="auto")
    s.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    s.add_argument("--gpus", type=int, default=1, help="processes (one per GPU) on this host, launched with torchrun")
    s.add_argument("--nnodes", type=int, default=1, help="hosts taking part (torchrun --nnodes)")
    s.add_argument("--node-rank", type=int, default=0, help="this host's rank (torchrun --node-rank)")
    s.add_argument("--rdzv-endpoint", help="HOST:PORT every host meets at (torchrun --rdzv-endpoint)")
    add_root(s)  # a rebuild and the settings check read the recipe's files again

    s = sub.add_parser("infer", help="generate with a trained run, formatting requests with the training template")
    s.add_argument("run_dir")
    s.add_argument("--input", help="a JSON object (or a file of JSON lines) with the prompt fields; omit for interactive")
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--dry-run", action="store_true",
                   help="print each request's prompt and its exact token ids (the training ids), load no weights")
    s.add_argument("--json", action="store_true", help="with --dry-run: one JSON object a line, {prompt, prompt_ids}")
    s.add_argument("--output", metavar="FILE.jsonl",
                   help="write one JSON line per answer, {request, completion, completion_ids, prompt_tokens, completion_tokens, stop}; "
                        "a file of requests answers as JSON lines on stdout without it")

    s = sub.add_parser("eval", help="eval loss and perplexity of a run on its plan's eval split")
    s.add_argument("run_dir")
    s.add_argument("--split", default="eval", choices=["train", "eval"])
    add_root(s)

    s = sub.add_parser("export", help="merge the LoRA adapter into the base weights (safetensors)")
    s.add_argument("run_dir")
    s.add_argument("--merged", required=True, metavar="DIR")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])

    s = sub.add_parser("score", help="score completions with the plan's declared rewards")
    s.add_argument("lock")
    s.add_argument("--completions", required=True, help="JSONL: {\"row_id\": ..., \"completion\": ...} a line")
    s.add_argument("--split", default="eval", choices=["train", "eval"])


def cmd_run(args) -> int:
    import os

    from ftc.runtime.launch import WORKER_FLAG, launch, needs_launch
    from ftc.runtime.run import run_plan

    if args.gpus == 1 and args.nnodes == 1 and "LOCAL_RANK" not in os.environ:
        # One process on a host with several GPUs: the Trainer would wrap the model in
        # nn.DataParallel, which TRL refuses. One GPU means the first one, unless told otherwise.
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    if not os.environ.get(WORKER_FLAG) and needs_launch(args.lock, gpus=args.gpus, nnodes=args.nnodes):
        from ftc.runtime.launch import per_rank_accumulation
        from ftc.runtime.run import backend_for
        from ftc.runtime.trainer_config import refuse_unsharded_fsdp
        from ftc.runtime.verify import verify

        plan = verify(args.lock)  # once, before the workers start: a rebuild must not race across ranks
        train, world_size = plan.lock["settings"]["train"], args.gpus * args.nnodes
        # every refusal once, here, before any worker starts (a rank's would reach the user through torchrun's exit code)
        per_rank_accumulation(train, world_size)
        refuse_unsharded_fsdp(train, launching=True)
        backend_for(plan, args.backend, world_size)
        argv = ["run", args.lock, "--backend", args.backend] + (["--output", args.output] if args.output else []) \
            + (["--resume"] if args.resume else []) + (["--max-steps", str(args.max_steps)] if args.max_steps else []) \
            + [a for r in args.root for a in ("--root", os.path.abspath(r))]
        return launch(argv, gpus=args.gpus, nnodes=args.nnodes, node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint)
    facts = run_plan(args.lock, output=args.output, resume=args.resume, backend=args.backend, max_steps=args.max_steps)
    if not facts.get("plan_hash"):
        return 0  # a rank other than 0: rank 0 reports
    print(run_summary(facts))
    return 0


def _round(value, digits: int = 4) -> str:
    """A loss or perplexity as a person reads it: 4 decimals, '-' where there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def run_summary(facts: dict) -> str:
    """What `ftc run` prints at the end (also for a run that was already finished): the losses,
    rounded, the final eval figure, and where every output of the run lies."""
    out = Path(facts["output_dir"])
    tr = facts.get("train", {})
    ev = facts.get("eval") or {}
    lines = [f"trained {tr.get('global_step')} steps on {facts.get('device')} ({facts['backend']}): "
             f"loss {_round(tr.get('first_loss'))} -> {_round(tr.get('last_loss'))}"]
    if ev.get("loss") is not None:
        lines.append(f"final eval loss {_round(ev['loss'])}, perplexity {_round(ev.get('perplexity'), 3)} "
                     f"over {ev.get('tokens', 0):,} tokens")
    elif ev.get("reward") is not None:
        lines.append(f"final eval reward {_round(ev['reward'])} (step {ev.get('step')})")
    else:
        lines.append("final eval: none (the plan has no eval split, or the run was interrupted)")
    where = [("run folder", out), ("adapter", out / "adapter_model.safetensors"), ("report", out / "report.md"),
             ("loss curve", out / "loss.png"), ("metrics", out / "metrics.jsonl"), ("facts", out / "run.json"),
             ("checkpoints", out / "checkpoints"), ("tensorboard", out / "tensorboard")]
    lines += [f"{label + ':':<12} {path}" for label, path in where if path == out or path.exists()]
    lines.append(f"next:        ftc infer {out}")
    return "\n".join(lines)


def cmd_infer(args) -> int:
    """One request, a file of requests or an interactive session (ftc/infer_command.py)."""
    from ftc.infer_command import infer

    return infer(args)


def cmd_eval(args) -> int:
    from ftc.errors import FtcError
    from ftc.runtime.evaluate import eval_loss
    from ftc.runtime.infer import load_trained
    from ftc.runtime.run import RUN_LOCK, run_plan_of
    from ftc.runtime.verify import verify

    run_plan_of(Path(args.run_dir))  # a run folder, with its plan
    plan = verify(Path(args.run_dir) / RUN_LOCK)
    tokens = plan.artifact("tokens", args.split)
    if tokens is None:
        raise FtcError("FTC773", file=args.run_dir, split=args.split)
    trained = load_trained(Path(args.run_dir))
    if plan.method in ("dpo", "orpo", "simpo", "kto"):  # preference accuracy and mean margin, TRL's implicit rewards
        from ftc.runtime.evaluate import preference_eval

        res = preference_eval(trained.model, tokens, method=plan.method, settings=plan.settings["train"][plan.method],
                              pad_token_id=trained.tokenizer.pad_token_id or 0)
        print(f"{args.split}: preference accuracy {res['accuracy']:.3f}, mean margin {res['mean_margin']:.4f} "
              f"(chosen {res['mean_reward_chosen']:.4f}, rejected {res['mean_reward_rejected']:.4f}) over "
              f"{res.get('pairs', res.get('completions'))} {'pairs' if 'pairs' in res else 'completions'}")
        return 0
    res = eval_loss(trained.model, tokens, pad_token_id=trained.tokenizer.pad_token_id or 0)
    print(f"{args.split}: loss {res['loss']:.4f}, perplexity {res['perplexity']:.3f} over {res['tokens']:,} tokens ({res['sequences']} sequences)")
    return 0


def cmd_export(args) -> int:
    from ftc.runtime.export import export_merged

    out = export_merged(Path(args.run_dir), Path(args.merged), dtype=args.dtype)
    print(f"merged model written to {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_score(args) -> int:
    from ftc.compiler.lock import Plan
    from ftc.runtime.score import format_summary, score_file

    plan = Plan.load(args.lock)  # a lock, first: load_split would compile a recipe (.json) in its place
    lock, table, _ = load_split(args.lock, args.split, [])
    rewards = lock["settings"]["train"].get("grpo", {}).get("rewards")
    if not rewards:
        from ftc.errors import FtcError

        raise FtcError("FTC774", file=args.lock)
    result = score_file(rewards, table.to_pylist(), Path(args.completions), plan.recipe_dir)
    print(format_summary(result))
    return 0


def cmd_schema(args) -> int:
    from ftc.compiler.recipe_schema import SCHEMA_PATH

    sys.stdout.write(SCHEMA_PATH.read_text(encoding="utf-8"))
    return 0


def _machine_warnings(data: dict) -> None:
    """Facts of this machine, not of the plan (so not in the lock): an optimizer whose package is absent."""
    from ftc.compiler.trainer_choices import optim_warning

    warning = optim_warning(data["train"]["optim"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_validate(args) -> int:
    """The recipe, then what needs no full read of the data (ftc.compiler.check)."""
    from ftc.compiler.check import check_recipe
    from ftc.compiler.recipe import load_recipe

    r = load_recipe(args.recipe, args.set)
    checked = check_recipe(r)
    _machine_warnings(r.data)
    print(f"{args.recipe}: ok ({len(r.data['sources'])} sources, format {r.data['template']['format']}, method {r.data['train']['method']})")
    print(f"  checked on the first {checked.sample_rows} rows of {checked.files} files", file=sys.stderr)
    if checked.not_checked:
        print(f"  not sampled (fields unknown until compile): {', '.join(checked.not_checked)}", file=sys.stderr)
    return 0


def cmd_compile(args) -> int:
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe
    from ftc.compiler.summary import compile_summary

    recipe = load_recipe(args.recipe, args.set)
    _machine_warnings(recipe.data)
    out = Path(args.output)
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    compiled = compile_recipe(recipe, out, progress=show)
    if not args.quiet:
        print(compile_summary(compiled.lock, str(out), compiled.clock))
    return 0


def cmd_clean(args) -> int:
    from ftc.compiler.cache import clean
    from ftc.errors import FtcError

    if not Path(args.project).is_dir():
        raise FtcError("FTC530", file=args.project)
    done = clean(Path(args.project), everything=args.all)
    for u in done["unreadable"]:
        print(f"ftc clean: {u} is not a readable plan.lock; the artifacts it may name were not kept for it", file=sys.stderr)
    where = ", ".join(done["caches"]) or "(no cache folder found)"
    print(f"removed {done['entries']} cache entries and {done['files']} files ({done['bytes'] / (1 << 20):,.1f} MiB) from "
          f"{where}; kept {done['kept_entries']} entries used by {done['locks']} locks")
    return 0


def load_split(target: str, split: str, overrides: list[str], tokens: bool = False):
    """(lock, rows, token rows or None) of a split, from a lock's artifacts or by
    compiling a recipe in memory (nothing written)."""
    import pyarrow.parquet as pq

    from ftc.errors import FtcError

    if target.endswith(".json"):
        from ftc.compiler.compile import compile_recipe
        from ftc.compiler.recipe import load_recipe

        recipe = load_recipe(target, overrides)
        # an in-memory lock "beside" the recipe, so its relative paths resolve
        compiled = compile_recipe(recipe, recipe.path.parent / "plan.lock", write=False, tokenize=tokens)
        return compiled.lock, compiled.splits[split], compiled.tokens.get(split)
    from ftc.compiler.lock import Plan

    plan = Plan.load(target)
    lock = plan.lock

    def artifact(kind: str):
        path = plan.artifact(kind, split)
        if path is None:
            raise FtcError("FTC773", file=target, split=split)
        if not path.exists():
            raise FtcError("FTC503", file=str(path), recipe=lock["recipe"]["path"])
        return pq.read_table(path)

    return lock, artifact("data"), artifact("tokens") if tokens else None


def cmd_preview(args) -> int:
    from ftc.compiler.compile import OUTPUTS
    from ftc.compiler.summary import preview_rows

    if args.n < 1:
        from ftc.errors import FtcError

        raise FtcError("FTC777", n=args.n)
    lock, table, tok_table = load_split(args.target, args.split, args.set, tokens=args.tokens)
    rows = table.slice(0, args.n).to_pylist()
    fmt_fields = OUTPUTS[lock["settings"]["template"]["format"]]
    if args.tokens:
        return _preview_tokens(args, lock, rows, tok_table)
    print(preview_rows(rows, fmt_fields, args.json))
    return 0


def _preview_tokens(args, lock, rows, tok_table) -> int:
    """The exact tokens each row trains on: masked spans vs trained spans."""
    from ftc.compiler.lock import Plan
    from ftc.compiler.tokenizer import load_tokenizer
    from ftc.compiler.views import show_tokens

    import pyarrow as pa
    import pyarrow.compute as pc

    # only the previewed rows leave Arrow: a token table can hold millions of ids
    wanted = pa.array([r["row_id"] for r in rows], pa.string())
    picked = tok_table.filter(pc.is_in(tok_table["row_id"], value_set=wanted))
    by_id = {r["row_id"]: r for r in picked.select(["row_id", "input_ids", "labels"]).to_pylist()}
    lock_file = args.target if not args.target.endswith(".json") else str(Path(args.target).parent / "plan.lock")
    model = lock["settings"]["model"]
    tok, _ = load_tokenizer(Plan(lock, Path(lock_file).absolute()).tokenizer_location, model["tokenizer_revision"],
                            model["trust_remote_code"])
    color = sys.stdout.isatty() and not args.json
    for r in rows:
        t = by_id.get(r["row_id"])
        if t is None:
            print(f"── {r['row_id']}: dropped at tokenization", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({**r, "input_ids": t["input_ids"], "labels": t["labels"]}, ensure_ascii=False, sort_keys=True))
        else:
            trained = sum(1 for x in t["labels"] if x != -100)
            print(f"── {r['row_id']}  ({len(t['input_ids'])} tokens, {trained} trained)")
            print(show_tokens(tok, t["input_ids"], t["labels"], color=color))
            print()
    return 0


def cmd_diff(args) -> int:
    from ftc.compiler.diff import diff_locks
    from ftc.compiler.lock import read_lock

    a, b = read_lock(args.a), read_lock(args.b)
    lines = diff_locks(a, b)
    if not lines:
        print("plans are identical")
        return 0
    print(f"{args.a} ({a['plan_hash'][:12]}) → {args.b} ({b['plan_hash'][:12]})")
    print("\n".join(lines))
    return 1
