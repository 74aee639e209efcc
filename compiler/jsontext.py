"""JSON text read strictly: what Python's `json` accepts silently is refused here, with the place named.

Python's json keeps the last of two equal keys (the first object's settings vanish without a word)
and reads NaN, Infinity and -Infinity (and 1e999 as infinity), which no JSON tool elsewhere writes
and no setting means. The recipe and `--set` values are read through this module, so both are
refused where they appear: a duplicate with its JSON path and both line numbers, a non-finite
number with its path.
"""

from __future__ import annotations

import json
import math
from json.decoder import scanstring
from typing import Any


class _NonFinite(float):
    """A NaN or infinite number as it was written, so that the error can quote it ("1e999", "NaN")."""

    text: str

    def __new__(cls, text: str) -> "_NonFinite":
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


def _float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


class Duplicates(list):
    """The duplicated keys an `object_pairs_hook` met while parsing (their places come from `duplicate_at`)."""

    def hook(self, pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                self.append(key)
            out[key] = value
        return out


def loads(text: str) -> tuple[Any, Duplicates]:
    """Parse `text` (json.JSONDecodeError as json raises it); the value and the duplicate keys met."""
    dupes = Duplicates()
    value = json.loads(text, object_pairs_hook=dupes.hook, parse_float=_float, parse_constant=_NonFinite)
    return value, dupes


def json_path(parts) -> str:
    """`train.grpo.rewards[0].kind` from ("train", "grpo", "rewards", 0, "kind")."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def non_finite(value: Any, parts: tuple = ()) -> tuple[list, str] | None:
    """The path of the first NaN or infinite number in `value` and how it was written, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return list(parts), getattr(value, "text", "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity"))
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite(v, (*parts, k))
        if found:
            return found
    return None


def duplicate_at(text: str) -> tuple[list, str, int, int] | None:
    """(path of the object, key, first line, second line) of the first duplicated key in valid JSON `text`.

    A small scan after the parse (json's hooks see neither lines nor paths): strings are skipped
    with json's own scanner, so quotes and brackets inside them do not count."""
    stack: list[dict] = []  # open containers: {"path", "seen": {key: line}, "key", "expect_key"} or {"path", "index"}
    line, i, n = 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            s, end = scanstring(text, i + 1)
            top = stack[-1] if stack else None
            if top is not None and top.get("expect_key"):
                if s in top["seen"]:
                    return top["path"], s, top["seen"][s], line
                top["seen"][s], top["key"], top["expect_key"] = line, s, False
            line += text.count("\n", i, end)
            i = end
            continue
        if c == "\n":
            line += 1
        elif c in "{[":
            top = stack[-1] if stack else None
            path = [] if top is None else [*top["path"], top["key"] if "seen" in top else top["index"]]
            stack.append({"path": path, "seen": {}, "key": None, "expect_key": True} if c == "{" else {"path": path, "index": 0})
        elif c in "}]":
            stack.pop()
        elif c == "," and stack:
            top = stack[-1]
            if "seen" in top:
                top["expect_key"] = True
            else:
                top["index"] += 1
        i += 1
    return None
