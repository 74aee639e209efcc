"""Columns onto fields: the mapping of one table (a file's batch, a Hugging Face split).

Alternatives are resolved row by row, and the facts of which column fed a field are counted
per batch and summed over the file (``Fed``), so the lock says the same for a file read in one
piece or in many.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.compiler.normalize import not_internal
from ftc.errors import FtcError, did_you_mean


def map_columns(table: pa.Table, columns: dict | None, captured: dict, file: str, source: str) -> tuple[pa.Table, dict]:
    """Canonical fields from one table's columns, and which column fed each field (see ``_map``)."""
    table, chosen = _map(table, columns, captured, file, source, 0)
    return table, {k: describe(v) for k, v in chosen.items()}


@dataclass
class Fed:
    """How many rows each alternative column fed a field (and how many none did), summed over batches."""

    names: list[str]
    counts: dict[str, int]
    none: int


def merge(a: "str | Fed | None", b: "str | Fed") -> "str | Fed":
    """One field's column facts over two batches of one file."""
    if isinstance(a, Fed) and isinstance(b, Fed):
        return Fed(a.names, {c: a.counts[c] + b.counts[c] for c in a.names}, a.none + b.none)
    return b


def describe(fed: "str | Fed") -> str:
    """The lock's words for the columns that fed a field: one name, or each with its rows."""
    if isinstance(fed, str):
        return fed
    counts = {c: k for c, k in fed.counts.items() if k}
    if len(counts) <= 1 and not fed.none:
        return next(iter(counts), fed.names[0])
    rows = lambda k: f"{k} row" + "s" * (k != 1)  # noqa: E731
    return ", ".join([f"{c} ({rows(k)})" for c, k in counts.items()] + [f"none ({rows(fed.none)})"] * bool(fed.none))


def _map(table: pa.Table, columns: dict | None, captured: dict, file: str, source: str,
         row0: int) -> tuple[pa.Table, dict]:
    """Canonical fields from one batch of a file's columns (``row0`` rows of the file before it).

    Alternatives are resolved row by row: a field takes, in each row, the first listed
    column that has a value there (JSONL rows may name one thing differently), so no row
    is left empty while another column holds its value. A path capture never silently
    replaces a column of the same name (FTC209). A file's ``tools`` column comes along
    with a conversation mapping: the chat template reads it (``tools=``), as TRL does.
    """
    n = table.num_rows
    if columns is None:
        for k in captured:
            if k in table.column_names:
                raise FtcError("FTC209", file=file, path=f"sources.{source}.captures", field=k, column=k, source=source)
        out = {c: table.column(c) for c in table.column_names}
        chosen = {c: c for c in table.column_names}
    else:
        out, chosen = {}, {}
        for fname, spec in columns.items():
            path = f"sources.{source}.columns.{fname}"
            not_internal(fname, path, file)
            if isinstance(spec, dict) and "const" in spec:
                out[fname] = pa.array([spec["const"]] * n)
                chosen[fname] = "const"
                continue
            conv = spec if isinstance(spec, dict) else None
            alts = conv["from"] if conv else spec
            alts = [alts] if isinstance(alts, str) else list(alts)
            present = list(dict.fromkeys(a for a in alts if a in table.column_names))
            if not present:
                if fname in captured:
                    continue  # a path capture of the same name fills it
                suggest = "".join(did_you_mean(a, table.column_names) for a in alts[:1])
                raise FtcError("FTC203", file=file, path=path, wanted=alts, field=fname,
                               available=", ".join(table.column_names) or "(none)", suggest=suggest)
            if fname in captured:
                raise FtcError("FTC209", file=file, path=path, field=fname, column=present[0], source=source)
            arrays = [convert_turns(table.column(c), conv, file, source, fname, c, row0) if conv else table.column(c).combine_chunks()
                      for c in present]
            out[fname], chosen[fname] = first_present(arrays, present, file, path, fname)
        if any(isinstance(c, dict) and "from" in c for c in columns.values()) and "tools" in table.column_names \
                and "tools" not in out:
            out["tools"], chosen["tools"] = table.column("tools"), "tools"
    for k, v in captured.items():
        if k not in out:
            out[k] = pa.array([v] * n, pa.string())
            chosen[k] = "path capture"
    return pa.table(out) if out else pa.table({"_empty": pa.nulls(n)}).drop(["_empty"]), chosen


_SCALAR = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean,
           pa.types.is_null)


def first_present(arrays: list[pa.Array], names: list[str], file: str, path: str, fname: str) -> tuple[pa.Array, "str | Fed"]:
    """Per row, the value of the first array that has one there; and which columns fed how many rows
    (and how many rows none did: those keep the first column's empty text or null), to be
    summed over a file's batches and put in words by ``describe``.

    An empty string is no value here: it is how a CSV row leaves a column out. Alternatives
    of different scalar types are joined as text (as the file wrote them); other type
    mixes cannot be one field and are refused.
    """
    if len(arrays) == 1:
        return arrays[0], names[0]
    if len({a.type for a in arrays}) > 1:
        if not all(any(is_(a.type) for is_ in _SCALAR) for a in arrays):
            raise FtcError("FTC307", file=file, path=path, field=fname,
                           types=", ".join(f"{c}: {a.type}" for c, a in zip(names, arrays)))
        arrays = [a.cast(pa.string()) for a in arrays]
    text = pa.types.is_string(arrays[0].type) or pa.types.is_large_string(arrays[0].type)
    has = [pc.fill_null(pc.not_equal(a, ""), False) if text else pc.is_valid(a) for a in arrays]
    taken = pa.array(np.zeros(len(arrays[0]), bool))
    fed = {}
    for c, h in zip(names, has):
        mine = pc.and_not(h, taken)
        fed[c] = pc.sum(mine).as_py() or 0
        taken = pc.or_(taken, mine)
    merged = pc.coalesce(*[pc.if_else(h, a, pa.scalar(None, a.type)) for a, h in zip(arrays, has)], *arrays)
    return merged, Fed(list(names), fed, len(arrays[0]) - sum(fed.values()))


def convert_turns(arr: pa.ChunkedArray, conv: dict, file: str, source: str, fname: str, column: str,
                  row0: int = 0) -> pa.Array:
    """ShareGPT turns ``[{from, value}]`` -> ``[{role, content}]`` through the role map."""
    arr = arr.combine_chunks()
    if not pa.types.is_list(arr.type) or not pa.types.is_struct(arr.type.value_type):
        raise FtcError("FTC210", file=file, path=f"sources.{source}.columns.{fname}", column=column, type=arr.type)
    rk, ck = conv.get("role_key", "from"), conv.get("content_key", "value")
    turns = arr.flatten()
    names = [turns.type.field(i).name for i in range(turns.type.num_fields)]
    for k in (rk, ck):
        if k not in names:
            raise FtcError("FTC211", file=file, path=f"sources.{source}.columns.{fname}", column=column, key=k,
                           keys=", ".join(names), source=source, field=fname)
    raw_roles = turns.field(rk)
    roles_map = conv["roles"]
    keys = pa.array(list(roles_map), pa.string())
    idx = pc.index_in(raw_roles.cast(pa.string()), value_set=keys)
    if idx.null_count:
        bad_at = pc.index(pc.is_null(idx), True).as_py()
        role = raw_roles[bad_at].as_py()
        suggested, why = role_hint(role)
        raise FtcError("FTC206", file=file, row=row0 + _row_of_turn(arr, bad_at), role=role, source=source, field=fname,
                       mapped=", ".join(roles_map), suggested=suggested, why=why)
    mapped = pc.take(pa.array(list(roles_map.values()), pa.string()), idx)
    content = turns.field(ck)
    if pa.types.is_nested(content.type):  # a list or object is not a turn's text, and no cast makes it one
        raise FtcError("FTC312", file=file, path=f"sources.{source}.columns.{fname}", column=column, key=ck,
                       type=content.type)
    content = content.cast(pa.string())
    if content.null_count:  # a chat template would print None as the text 'None'
        bad_at = pc.index(pc.is_null(content), True).as_py()
        raise FtcError("FTC310", file=file, path=f"sources.{source}.columns.{fname}", row=row0 + _row_of_turn(arr, bad_at),
                       column=column, key=ck, count=content.null_count)
    structs = pa.StructArray.from_arrays([mapped, content], names=["role", "content"])
    return pa.ListArray.from_arrays(arr.offsets, structs, mask=arr.is_null())


def _row_of_turn(arr: pa.ListArray, turn: int) -> int:
    """The 1-based row holding flat turn number ``turn``: the first offset beyond it."""
    return int(np.searchsorted(arr.offsets.to_numpy(), turn, side="right"))


# What a ShareGPT-style role name usually means. Only assistant turns are trained (with
# assistant_only_loss), so a tool's output must never be suggested as "assistant".
_ROLE_HINTS = {
    "user": ("human", "user", "question", "prompt", "instruction"),
    "assistant": ("gpt", "assistant", "model", "bot", "chatgpt", "bard", "response", "answer", "function_call",
                  "tool_call", "tool_calls"),
    "system": ("system", "system_prompt"),
    "tool": ("observation", "tool", "function", "function_response", "tool_response", "ipython", "tool_result"),
}


def role_hint(role: object) -> tuple[str, str]:
    """(the role to suggest for a source role name, why): trained turns only where the model speaks."""
    name = str(role).strip().lower()
    for target, names in _ROLE_HINTS.items():
        if name in names:
            if target == "assistant":
                return target, "assistant turns are what the model learns to write"
            if target == "tool":
                return target, "a tool's output is read by the model, not trained: never map it to assistant"
            return target, f"{target} turns are read by the model, not trained"
    return "user", ("a guess: map it to what that speaker is; only assistant turns are trained, "
                    "and tool outputs map to tool")
