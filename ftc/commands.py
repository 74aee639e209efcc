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
    from ftc.compiler.lock import read_lock

    lock = read_lock(target)

    def artifact(kind: str):
        art = lock["artifacts"].get(kind, {}).get(split)
        if art is None:
            raise FtcError("FTC105", file=target, reason=f"the plan has no {split} {kind}",
                           hint="set split.eval in the recipe" if split == "eval" else "recompile the recipe")
        path = Path(target).parent / art["path"]
        if not path.exists():
            raise FtcError("FTC503", file=str(path), recipe=lock["recipe"]["path"])
        return pq.read_table(path)

    return lock, artifact("data"), artifact("tokens") if tokens else None


def cmd_preview(args) -> int:
    from ftc.compiler.compile import OUTPUTS
    from ftc.compiler.summary import preview_rows

    lock, table, tok_table = load_split(args.target, args.split, args.set, tokens=args.tokens)
    rows = table.slice(0, args.n).to_pylist()
    fmt_fields = OUTPUTS[lock["settings"]["template"]["format"]]
    if args.tokens:
        return _preview_tokens(args, lock, rows, tok_table)
    print(preview_rows(rows, fmt_fields, args.json))
    return 0


def _preview_tokens(args, lock, rows, tok_table) -> int:
    """The exact tokens each row trains on: masked spans vs trained spans."""
    from ftc.compiler.compile import tokenizer_location_of_lock
    from ftc.compiler.tokenize import load_tokenizer, show_tokens

    by_id = {r["row_id"]: r for r in tok_table.select(["row_id", "input_ids", "labels"]).to_pylist()
             if r["row_id"] in {x["row_id"] for x in rows}}
    lock_file = args.target if not args.target.endswith(".json") else str(Path(args.target).parent / "plan.lock")
    tok, _ = load_tokenizer(tokenizer_location_of_lock(lock, lock_file))
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
