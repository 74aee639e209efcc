"""Sources: find the files, read them, take path captures, map columns onto fields.

Each file becomes an Arrow table of canonical fields plus bookkeeping columns
(``_source``, ``_file``, ``_row``), and a ``FileFacts`` record that goes into the
lock: what was read, how it was decoded, which column fed which field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.compiler import discovery, readers
from ftc.compiler.lock import relpath
from ftc.compiler.progress import MIN_BYTES, Progress
from ftc.compiler.normalize import not_internal
from ftc.compiler.recipe import Recipe
from ftc.errors import FtcError, did_you_mean


@dataclass
class FileFacts:
    path: str  # relative to the recipe folder, posix
    bytes: int
    sha256: str
    format: str
    encoding: str | None
    columns: dict[str, str]  # field -> column used (or "const", or "path capture")
    captured: dict[str, str]
    rows: int
    malformed_rows: int = 0
    encoding_evidence: dict = field(default_factory=dict)  # why this encoding (compiler/decoding.py)
    replaced_bytes: int = 0  # undecodable bytes read as U+FFFD under encoding_errors "replace"
    lines: dict = field(default_factory=dict)  # CSV physical lines against records (compiler/csv_records.py)
    compression: str | None = None  # bytes and sha256 are the file's on disk, as compressed

    def to_lock(self) -> dict:
        d = dict(self.__dict__)
        return d


@dataclass
class SourceData:
    name: str
    table: pa.Table
    files: list[FileFacts] = field(default_factory=list)
    hf: dict | None = None  # facts for a Hugging Face dataset source
    unread: list[dict] = field(default_factory=list)  # files the folder or glob matched and did not read, with why


def capture_pattern(recipe: Recipe, name: str, spec: dict) -> re.Pattern | None:
    """The source's ``captures`` regex, compiled; refused when it does not compile or names no group."""
    if "captures" not in spec:
        return None
    where = f"sources.{name}.captures"
    try:
        pattern = re.compile(spec["captures"])
    except re.error as e:
        raise FtcError("FTC303", file=str(recipe.path), path=where, where=where, reason=str(e)) from None
    if not pattern.groupindex:
        raise FtcError("FTC309", file=str(recipe.path), path=where, source=name, pattern=spec["captures"])
    return pattern


def load_source(recipe: Recipe, name: str, spec: dict, progress: bool = False) -> SourceData:
    if "hf" in spec:
        return _load_hf(recipe, name, spec)
    found = discovery.discover(recipe, name, spec)
    files, root = found.files, found.root
    pattern = capture_pattern(recipe, name, spec)
    tables, facts = [], []
    total = sum(f.stat().st_size for f in files)
    bar = Progress(f"read {name}", total, "bytes", enabled=progress and total >= MIN_BYTES)
    for i, f in enumerate(files):
        data = f.read_bytes()
        table, fact = file_table(recipe, name, spec, f, root, pattern, data)
        tables.append(table)
        facts.append(fact)
        bar.update(len(data), note=f"{i + 1}/{len(files)} files")
    bar.close()
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FtcError("FTC202", file=facts[0].path, format="table", source=name,
                       reason=f"files of source {name!r} disagree on column types: {e}") from None
    return SourceData(name, table, facts, unread=found.unread)


def file_table(recipe: Recipe, name: str, spec: dict, f: Path, root: Path, pattern: re.Pattern | None,
               data: bytes, compressed: bool = True) -> tuple[pa.Table, FileFacts]:
    """One file of a path source as a table of fields plus the bookkeeping columns, and its facts.

    The one place a file's bytes become rows (compile reads whole files; ``ftc validate`` hands
    a file's head, already decompressed, with ``compressed=False``)."""
    rel_recipe = relpath(f, recipe.dir)
    rel_root = relpath(f, root)
    suffix, compression = discovery.data_suffix(f)
    fmt = spec.get("format") or readers.FORMATS.get(suffix)
    if fmt is None:
        raise FtcError("FTC207", file=rel_recipe, format=f.suffix, source=name)
    text = discovery.decompress(data, compression, rel_recipe, name) if compressed else data
    res = readers.read_file(text, fmt, spec.get("encoding", "auto"), spec.get("delimiter"), rel_recipe, name,
                            spec["encoding_errors"], spec["on_malformed"])
    captured: dict[str, str] = {}
    if pattern is not None:
        m = pattern.search(rel_root)
        if not m:
            raise FtcError("FTC204", file=rel_recipe, source=name, pattern=spec["captures"])
        captured = {k: v for k, v in m.groupdict().items() if v is not None}
    table, chosen = map_columns(res.table, spec.get("columns"), captured, rel_recipe, name)
    _check_not_internal(table, spec, rel_recipe, name)
    n = table.num_rows
    table = table.append_column("_source", pa.array([name] * n, pa.string()))
    table = table.append_column("_file", pa.array([rel_root] * n, pa.string()))
    table = table.append_column("_row", pa.array(range(1, n + 1), pa.int64()))
    fact = FileFacts(rel_recipe, len(data), hashlib.sha256(data).hexdigest(), fmt, res.encoding, chosen,
                     captured, n, res.malformed, res.evidence, res.replaced, res.lines, compression)
    return table, fact


def _check_not_internal(table: pa.Table, spec: dict, file: str, source: str) -> None:
    """A field named like a bookkeeping column (``row_id``, ``_source``...) would be shadowed or clash in DuckDB."""
    from ftc.compiler.normalize import INTERNAL

    for col in table.column_names:
        if col in INTERNAL:
            path = f"sources.{source}.columns.{col}" if spec.get("columns") and col in spec["columns"] else f"sources.{source}"
            raise FtcError("FTC222", file=file, path=path, column=col, internal=", ".join(INTERNAL), source=source)


def _load_hf(recipe: Recipe, name: str, spec: dict) -> SourceData:
    hf = spec["hf"]
    try:
        import datasets
    except ImportError:
        raise FtcError("FTC205", name=hf["name"], reason="the `datasets` package is not installed", source=name) from None
    kwargs = {k: hf[k] for k in ("split", "revision") if hf.get(k)}
    if hf.get("data_files"):
        df = hf["data_files"]
        kwargs["data_files"] = [str(recipe.resolve_path(p)) for p in ([df] if isinstance(df, str) else df)]
    try:
        ds = datasets.load_dataset(hf["name"], hf.get("config"), **kwargs)
    except Exception as e:  # the hub, the builder or the files: all the user's to fix
        raise FtcError("FTC205", name=hf["name"], reason=str(e).splitlines()[0][:300], source=name) from None
    table = ds.data.table if hasattr(ds.data, "table") else ds.with_format("arrow")[:]
    table, chosen = map_columns(table, spec.get("columns"), {}, f"hf:{hf['name']}", name)
    n = table.num_rows
    table = table.append_column("_source", pa.array([name] * n, pa.string()))
    table = table.append_column("_file", pa.array([f"{hf['name']}:{hf.get('split', 'train')}"] * n, pa.string()))
    table = table.append_column("_row", pa.array(range(1, n + 1), pa.int64()))
    facts = {**{k: hf.get(k) for k in ("name", "config", "split", "revision")}, "fingerprint": ds._fingerprint,
             "rows": n, "columns": chosen}
    if hf.get("data_files"):
        facts["data_files"] = [
            {"path": relpath(Path(p), recipe.dir), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
            for p in kwargs["data_files"]
        ]
        facts["fingerprint"] = None  # the datasets cache fingerprint is path-dependent; the file hashes say it all
    return SourceData(name, table, [], facts)


def map_columns(table: pa.Table, columns: dict | None, captured: dict, file: str, source: str) -> tuple[pa.Table, dict]:
    """Canonical fields from one file's columns.

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
            arrays = [convert_turns(table.column(c), conv, file, source, fname, c) if conv else table.column(c).combine_chunks()
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


def first_present(arrays: list[pa.Array], names: list[str], file: str, path: str, fname: str) -> tuple[pa.Array, str]:
    """Per row, the value of the first array that has one there; and which columns fed how many rows
    (and how many rows none did: those keep the first column's empty text or null).

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
    fed = {c: k for c, k in fed.items() if k}
    none = len(arrays[0]) - sum(fed.values())
    if len(fed) <= 1 and not none:
        return merged, next(iter(fed), names[0])
    rows = lambda k: f"{k} row" + "s" * (k != 1)  # noqa: E731
    return merged, ", ".join([f"{c} ({rows(k)})" for c, k in fed.items()] + [f"none ({rows(none)})"] * bool(none))


def convert_turns(arr: pa.ChunkedArray, conv: dict, file: str, source: str, fname: str, column: str) -> pa.Array:
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
        raise FtcError("FTC206", file=file, row=_row_of_turn(arr, bad_at), role=role, source=source, field=fname,
                       mapped=", ".join(roles_map), suggested=suggested, why=why)
    mapped = pc.take(pa.array(list(roles_map.values()), pa.string()), idx)
    content = turns.field(ck)
    if pa.types.is_nested(content.type):  # a list or object is not a turn's text, and no cast makes it one
        raise FtcError("FTC312", file=file, path=f"sources.{source}.columns.{fname}", column=column, key=ck,
                       type=content.type)
    content = content.cast(pa.string())
    if content.null_count:  # a chat template would print None as the text 'None'
        bad_at = pc.index(pc.is_null(content), True).as_py()
        raise FtcError("FTC310", file=file, path=f"sources.{source}.columns.{fname}", row=_row_of_turn(arr, bad_at),
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
