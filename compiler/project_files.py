"""Files a recipe reads besides its data (template files, python reward files) come from the project.

The project is the recipe's folder (or, when the recipe lies in a git work tree, that work tree:
the files a pull request brings are reviewed with it, as the shipped recipes' `../templates/`
are), plus any folder the command line names with `--root DIR`.
A recipe from a pull request must not read `/etc/passwd`, `../../../etc/passwd` or a symlink
out of the project into the lock and the training data, nor do so through `--set`. Data
sources, the model and the tokenizer are the user's own choice and stay where the user keeps
them: this rule is about the files a reviewer reads as part of the recipe.
"""

from __future__ import annotations

import contextvars
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ftc.errors import FtcError

_ROOTS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ftc_project_roots", default=())


@contextmanager
def project_roots(roots: Sequence[str | os.PathLike] | None) -> Iterator[None]:
    """While a command runs: the folders its `--root DIR` options name, besides the recipe's own
    folder, that a recipe may read template and reward files from. A root that is not a folder is
    refused here, before anything is read."""
    for r in roots or ():
        if not os.path.isdir(r):
            raise FtcError("FTC157", root=str(r))
    token = _ROOTS.set(tuple(os.path.abspath(r) for r in roots or ()))
    try:
        yield
    finally:
        _ROOTS.reset(token)


def project_files(data: dict) -> list[tuple[str, str, str]]:
    """(JSON path, kind, path as written) of every file the recipe reads besides its data sources:
    template files and python reward files. (Sources, the model and the tokenizer are the user's
    own data and stay wherever the user keeps them.)"""
    out = []
    for key, value in data.get("template", {}).items():
        if isinstance(value, dict) and isinstance(value.get("file"), str):
            out.append((f"template.{key}.file", "template file", value["file"]))
        elif isinstance(value, list):
            for i, turn in enumerate(value):
                content = turn.get("content") if isinstance(turn, dict) else None
                if isinstance(content, dict) and isinstance(content.get("file"), str):
                    out.append((f"template.{key}[{i}].content.file", "template file", content["file"]))
    rewards = data.get("train", {}).get("grpo", {}).get("rewards", [])
    for i, r in enumerate(rewards if isinstance(rewards, list) else []):
        fn = r.get("function") if isinstance(r, dict) and r.get("kind") == "python" else None
        m = re.match(r"^([^:]+\.py):", fn) if isinstance(fn, str) else None
        if m and not (os.path.isabs(m[1]) or re.match(r"^[A-Za-z]:", m[1])):  # absolute: FTC132 refuses it
            out.append((f"train.grpo.rewards[{i}].function", "python reward file", m[1]))
    return out


def project_root(recipe_dir: str | os.PathLike) -> Path:
    """The git work tree that holds the recipe's folder (the nearest folder with a `.git`), else that folder."""
    here = Path(os.path.realpath(recipe_dir))
    return next((p for p in (here, *here.parents) if (p / ".git").exists()), here)


def check_project_files(data: dict, recipe_dir: Path, roots: Sequence[str | os.PathLike], file: str) -> None:
    """Refuse a template or reward file outside the project: a recipe from a pull request must not
    read `/etc/passwd`, `../../../etc/passwd` or a symlink out into the lock and the training data.
    Paths are compared after resolving symlinks and `..`, on both sides."""
    allowed = [project_root(recipe_dir)] + [Path(os.path.realpath(r)) for r in roots]
    for jp, what, rel in project_files(data):
        target = Path(os.path.realpath(Path(recipe_dir) / rel))
        if not any(target == root or root in target.parents for root in allowed):
            raise FtcError("FTC156", file=file, path=jp, what=what, target=rel, resolved=str(target),
                           roots=", ".join(str(r) for r in allowed))


def extra_roots() -> tuple[str, ...]:
    """The roots `project_roots` set for the command now running (absolute), besides the recipe's folder."""
    return _ROOTS.get()
