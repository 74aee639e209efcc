"""The `ftc` command line. Imports stay inside the commands so start-up is fast."""

from __future__ import annotations

import argparse
import sys

from ftc import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftc", description="Compile fine-tuning recipes into datasets and a plan.lock; run plans.")
    p.add_argument("--version", action="version", version=f"ftc {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("schema", help="print the recipe JSON Schema")
    from ftc.commands import add_root

    s = sub.add_parser("validate", help="check a recipe (exit 0 or 2)")
    s.add_argument("recipe")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_root(s)

    s = sub.add_parser("compile", help="recipe -> datasets + plan.lock")
    s.add_argument("recipe")
    s.add_argument("-o", "--output", default="plan.lock", help="lock file to write (default: plan.lock)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value by dotted path, e.g. train.learning_rate=1e-4 (repeatable)")
    s.add_argument("-q", "--quiet", action="store_true")
    add_root(s)
    s.add_argument("--progress", action="store_true", help="show progress with rate and ETA even when stderr is not a tty")

    s = sub.add_parser("preview", help="show rendered rows of a recipe or lock")
    s.add_argument("target", help="a recipe (.json) or a lock")
    s.add_argument("--split", default="train", choices=["train", "eval"])
    s.add_argument("-n", type=int, default=3)
    s.add_argument("--json", action="store_true", help="one JSON object a line")
    s.add_argument("--tokens", action="store_true", help="show tokens, masked vs trained")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_root(s)

    s = sub.add_parser("clean", help="remove cache entries and artifacts that no lock in the project uses")
    s.add_argument("project", nargs="?", default=".", help="folder whose locks and caches to look at (default: .)")
    s.add_argument("--all", action="store_true", help="remove every cache entry and artifact, also those locks use "
                   "(ftc run rebuilds them from the sources)")

    s = sub.add_parser("diff", help="what changed between two locks (exit 0 equal, 1 different)")
    s.add_argument("a")
    s.add_argument("b")

    from ftc import commands

    commands.add_runtime_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ftc.errors import FtcError

    try:
        from ftc import commands
        from ftc.compiler.project_files import project_roots

        with project_roots(getattr(args, "root", None)):
            return getattr(commands, f"cmd_{args.cmd}")(args) or 0
    except FtcError as e:
        if args.debug:
            raise
        print(e.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
