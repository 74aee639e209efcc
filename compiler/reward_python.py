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
        raise FtcError("FTC105", file=file, path=path,
                       reason=f"reward runs Python ({function}), and the recipe does not allow Python",
                       hint="if you trust that file, set train.grpo.allow_python: true; "
                            "or declare the reward as regex, answer, length or contains")
    m = FUNCTION_RE.match(function)
    if not m:
        raise FtcError("FTC105", file=file, path=path, reason=f"cannot read {function!r} as FILE.py:function",
                       hint="write the file's path relative to the recipe, a colon, and the function, e.g. rewards.py:my_reward")
    rel = PurePosixPath(m["file"].replace("\\", "/"))
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", str(rel)):
        raise FtcError("FTC105", file=file, path=path, reason=f"{m['file']} is an absolute path",
                       hint="give the path relative to the recipe folder, so the lock works on another machine")
    source_file = Path(recipe_dir) / rel
    try:
        source = source_file.read_bytes()
    except OSError as e:
        raise FtcError("FTC105", file=file, path=path, reason=f"cannot read reward file {rel} ({e.strerror})",
                       hint=f"the path is relative to the recipe folder: {recipe_dir}") from None
    try:
        tree = ast.parse(source, filename=str(rel))
    except SyntaxError as e:
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel} line {e.lineno}: {e.msg}",
                       hint="fix the Python syntax") from None
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    fn = defs.get(m["attr"])
    if fn is None:
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel} defines no top-level function {m['attr']!r}",
                       hint=f"functions defined there: {', '.join(sorted(defs)) or '(none)'}{did_you_mean(m['attr'], defs)}")
    if isinstance(fn, ast.AsyncFunctionDef):
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel}:{fn.name} is async",
                       hint="write it as a plain def")
    return PythonFunction(function=f"{rel.as_posix()}:{fn.name}", name=fn.name,
                          sha256=hashlib.sha256(source).hexdigest(), args=_python_args(fn, rel, fields, path, file))


def _python_args(fn: ast.FunctionDef, rel: PurePosixPath, fields: set[str], path: str, file: str | None) -> tuple[str, ...]:
    """The function's contract: the first parameter is the completion text; every other
    parameter it names must be a dataset field (or ``prompt``) — the seed's bug, a
    parameter nothing passes, is caught here instead of silently scoring 0."""
    a = fn.args
    positional = [p.arg for p in (*a.posonlyargs, *a.args)]
    if not positional:
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel}:{fn.name} takes no completion parameter",
                       hint=f"define it as def {fn.name}(completion, **fields) -> float")
    named = positional[1:] + [p.arg for p in a.kwonlyargs]
    for arg in named:
        if arg != "prompt" and arg not in fields:
            check_field(arg, fields, path, f"python reward {rel}:{fn.name} parameter", file)
    if a.kwarg is not None:  # **fields: pass every field
        named = [*named, *fields, "prompt"]
    return tuple(sorted(set(named)))
