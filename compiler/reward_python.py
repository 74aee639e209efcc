"""A ``python`` reward's file, read without running it: compiling never runs recipe Python.

The file is parsed (``ast``) to check that the named top-level function exists and
that every parameter it names is a dataset field (or ``prompt``); its sha256 goes into
plan.lock, so the runtime executes only the bytes that were checked here
(``ftc.compiler.rewards.check_source``).
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from ftc.errors import FtcError, did_you_mean

FUNCTION_RE = re.compile(r"^(?P<file>[^:]+\.py):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")


class PythonFunction(NamedTuple):
    """What the lock records of a python reward's function."""

    function: str  # "FILE.py:name", the file relative to the recipe, with / separators
    name: str  # the function's name: the reward's default name
    sha256: str  # of the file's bytes
    args: tuple[str, ...]  # keyword arguments it is passed: dataset fields, and "prompt"


def check_field(field: str, fields: set[str], path: str, where: str, file: str | None) -> None:
    """A reward that reads a field the rows lack would score every completion 0 in silence."""
    if field not in fields:
        raise FtcError("FTC301", file=file, path=path, where=where, field=field,
                       fields=", ".join(sorted(fields)) or "(none)", suggest=did_you_mean(field, fields))


def read_python_reward(function: str, recipe_dir: Path, fields: set[str], allow_python: bool, path: str,
                       file: str | None) -> PythonFunction:
    """Check a python reward's "FILE.py:function" by parsing the file, and fingerprint its bytes.

    ``path`` is the JSON path of the ``function`` key, for the errors."""
    if not allow_python:
        raise FtcError("FTC130", file=file, path=path, function=function)
    m = FUNCTION_RE.match(function)
    if not m:
        raise FtcError("FTC131", file=file, path=path, function=function)
    rel = PurePosixPath(m["file"].replace("\\", "/"))
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", str(rel)):
        raise FtcError("FTC132", file=file, path=path, reward_file=m["file"])
    source_file = Path(recipe_dir) / rel
    try:
        source = source_file.read_bytes()
    except OSError as e:
        raise FtcError("FTC133", file=file, path=path, reward_file=rel, reason=e.strerror or str(e),
                       recipe_dir=Path(recipe_dir).absolute()) from None
    try:
        tree = ast.parse(source, filename=str(rel))
    except SyntaxError as e:
        raise FtcError("FTC134", file=file, path=path, reward_file=rel, line=e.lineno, reason=e.msg) from None
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    fn = defs.get(m["attr"])
    if fn is None:
        raise FtcError("FTC135", file=file, path=path, reward_file=rel, function=m["attr"],
                       defined=", ".join(sorted(defs)) or "(none)", suggest=did_you_mean(m["attr"], defs))
    if isinstance(fn, ast.AsyncFunctionDef):
        raise FtcError("FTC136", file=file, path=path, reward_file=rel, function=fn.name)
    return PythonFunction(function=f"{rel.as_posix()}:{fn.name}", name=fn.name,
                          sha256=hashlib.sha256(source).hexdigest(), args=_python_args(fn, rel, fields, path, file))


def _python_args(fn: ast.FunctionDef, rel: PurePosixPath, fields: set[str], path: str, file: str | None) -> tuple[str, ...]:
    """The function's contract: the first parameter is the completion text; every other
    parameter it names must be a dataset field (or ``prompt``) — the seed's bug, a
    parameter nothing passes, is caught here instead of silently scoring 0."""
    a = fn.args
    positional = [p.arg for p in (*a.posonlyargs, *a.args)]
    if not positional:
        raise FtcError("FTC137", file=file, path=path, reward_file=rel, function=fn.name)
    named = positional[1:] + [p.arg for p in a.kwonlyargs]
    for arg in named:
        if arg != "prompt" and arg not in fields:
            check_field(arg, fields, path, f"python reward {rel}:{fn.name} parameter", file)
    if a.kwarg is not None:  # **fields: pass every field
        named = [*named, *fields, "prompt"]
    return tuple(sorted(set(named)))
