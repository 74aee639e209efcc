"""Tool definitions of chat rows: the data's ``tools`` field, as the chat template's ``tools=``.

Tool-calling data (ShareGPT/glaive, OpenAI style) carries, beside the turns, the JSON
schemas of the functions the model may call. A template that renders them (Qwen2.5's
does) must get them, or every row trains without the tool list its calls refer to. The
field is JSON text (as in the glaive files; TRL ``json.loads`` it too) or a list of
objects. Parsed once per distinct value, so rows sharing a tool list cost one parse,
and rows are encoded in groups of the same tools (``apply_chat_template`` takes one
``tools`` per batch).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ftc.errors import FtcError

FIELD = "tools"


def tools_per_row(table: pa.Table, row_ids: pa.Array) -> list[list[dict] | None] | None:
    """Each row's tool list (None where a row has none), or None when the table has no ``tools`` field."""
    if FIELD not in table.column_names:
        return None
    column = table.column(FIELD)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        parsed: dict[str, list[dict] | None] = {}
        out = []
        for i, text in enumerate(column.to_pylist()):
            if text is None:
                out.append(None)
                continue
            if text not in parsed:
                parsed[text] = _as_list(_loads(text, row_ids[i].as_py()), row_ids[i].as_py())
            out.append(parsed[text])
        return out
    return [None if v is None else _as_list(_no_nulls(v), row_ids[i].as_py()) for i, v in enumerate(column.to_pylist())]


def groups(tools: list[list[dict] | None] | None, n: int) -> list[tuple[list[dict] | None, list[int]]]:
    """(tools, the row numbers having exactly those tools), in order of first appearance."""
    if tools is None:
        return [(None, list(range(n)))]
    by: dict[str, tuple[list[dict] | None, list[int]]] = {}
    keys: dict[int, str] = {}  # rows parsed from the same text share one list: dump it once
    for i, t in enumerate(tools):
        key = keys.get(id(t))
        if key is None:
            key = keys[id(t)] = json.dumps(t, sort_keys=True, ensure_ascii=False)
        by.setdefault(key, (t, []))[1].append(i)
    return list(by.values())


def of_request(value: Any) -> list[dict] | None:
    """An inference request's ``tools``, read as a training row's are."""
    if value is None:
        return None
    return _as_list(_loads(value, "request") if isinstance(value, str) else value, "request")


def _loads(text: str, row: object) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FtcError("FTC408", row=row, reason=f"not valid JSON ({e.msg} at column {e.colno})") from None


def _as_list(value: Any, row: object) -> list[dict] | None:
    if isinstance(value, dict):
        value = [value]  # a single definition
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise FtcError("FTC408", row=row, reason=f"a {type(value).__name__}, not a list of objects")
    return value or None  # an empty list is no tools (TRL: some templates render tool boilerplate for [])


def _no_nulls(value: Any) -> Any:
    """Arrow gives every struct the keys of all rows, null where a row lacked one: drop those again."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value
