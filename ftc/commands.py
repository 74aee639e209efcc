"""The commands behind the CLI; each imports what it needs when it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_runtime_parsers(sub) -> None:
    """Parsers for commands that live in ftc.runtime (run, infer, eval, export, score)."""
    return None


def cmd_schema(args) -> int:
    from ftc.compiler.recipe import SCHEMA_PATH

    sys.stdout.write(SCHEMA_PATH.read_text(encoding="utf-8"))
    return 0


def cmd_validate(args) -> int:
    from ftc.compiler.recipe import load_recipe

    r = load_recipe(args.recipe, args.set)
    print(f"{args.recipe}: ok ({len(r.data['sources'])} sources, format {r.data['template']['format']}, method {r.data['train']['method']})")
    return 0


def cmd_compile(args) -> int:
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe
    from ftc.compiler.summary import compile_summary

    recipe = load_recipe(args.recipe, args.set)
    out = Path(args.output)
    compiled = compile_recipe(recipe, out, progress=not args.quiet and sys.stderr.isatty())
    if not args.quiet:
        print(compile_summary(compiled.lock, str(out)))
    return 0


def load_split(target: str, split: str, overrides: list[str]):
    """Rows of a split, from a lock's artifact or by compiling a recipe in memory."""
    import pyarrow.parquet as pq

    from ftc.errors import FtcError

    if target.endswith(".json"):
        from ftc.compiler.compile import compile_recipe
        from ftc.compiler.recipe import load_recipe

        recipe = load_recipe(target, overrides)
        compiled = compile_recipe(recipe, Path("plan.lock"), write=False)
        return compiled.lock, compiled.splits[split]
    from ftc.compiler.lock import read_lock

    lock = read_lock(target)
    art = lock["artifacts"]["data"].get(split)
    if art is None:
        raise FtcError("FTC105", file=target, reason=f"the plan has no {split} split", hint="set split.eval in the recipe")
    path = Path(target).parent / art["path"]
    if not path.exists():
        raise FtcError("FTC503", file=str(path), recipe=lock["recipe"]["path"])
    return lock, pq.read_table(path)


def cmd_preview(args) -> int:
    from ftc.compiler.compile import OUTPUTS
    from ftc.compiler.summary import preview_rows

    lock, table = load_split(args.target, args.split, args.set)
    rows = table.slice(0, args.n).to_pylist()
    fmt_fields = OUTPUTS[lock["settings"]["template"]["format"]]
    if args.tokens:
        return _preview_tokens(args, lock, rows)
    print(preview_rows(rows, fmt_fields, args.json))
    return 0


def _preview_tokens(args, lock, rows) -> int:
    raise NotImplementedError


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
