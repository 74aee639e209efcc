"""Sources: find the files, read them, take path captures, map columns onto fields.

Each file becomes an Arrow table of canonical fields plus bookkeeping columns
(``_source``, ``_file``, ``_row``), and a ``FileFacts`` record that goes into the
lock: what was read, how it was decoded, which column fed which field.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ftc.compiler import readers
from ftc.compiler.lock import relpath
from ftc.compiler.progress import MIN_BYTES, Progress
from ftc.compiler.recipe import Recipe
from ftc.errors import FtcError, did_you_mean

_GLOB = re.compile(r"[*?\[]")


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

    def to_lock(self) -> dict:
        d = dict(self.__dict__)
        return d


@dataclass
class SourceData:
    name: str
    table: pa.Table
    files: list[FileFacts] = field(default_factory=list)
    hf: dict | None = None  # facts for a Hugging Face dataset source


def discover(recipe: Recipe, name: str, spec: dict) -> tuple[list[Path], Path]:
    """Files of a source, sorted, and the root their captured paths are relative to."""
    raw = spec["path"]
    full = recipe.resolve_path(raw)
    if _GLOB.search(raw):
        parts = Path(raw).parts
        fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if _GLOB.search(p))]]
        root = recipe.resolve_path(str(Path(*fixed))) if fixed else recipe.dir
        files = [Path(p) for p in glob.glob(str(full), recursive=True) if os.path.isfile(p)]
    elif full.is_dir():
        root = full
        files = [p for p in full.rglob("*") if p.is_file() and p.suffix.lower() in readers.FORMATS and not p.name.startswith(".")]
    elif full.is_file():
        root, files = full.parent, [full]
    else:
        files, root = [], full
    if not files:
        raise FtcError("FTC200", file=str(recipe.path), path=f"sources.{name}.path", pattern=raw, source=name, base=str(recipe.dir))
    files.sort(key=lambda p: relpath(p, root))
    return files, root


def load_source(recipe: Recipe, name: str, spec: dict, progress: bool = False) -> SourceData:
    if "hf" in spec:
        return _load_hf(recipe, name, spec)
    files, root = discover(recipe, name, spec)
    pattern = re.compile(spec["captures"]) if "captures" in spec else None
    tables, facts = [], []
    total = sum(f.stat().st_size for f in files)
    bar = Progress(f"read {name}", total, "bytes", enabled=progress and total >= MIN_BYTES)
    for i, f in enumerate(files):
        rel_recipe = relpath(f, recipe.dir)
        rel_root = relpath(f, root)
        fmt = spec.get("format") or readers.FORMATS.get(f.suffix.lower())
        if fmt is None:
            raise FtcError("FTC207", file=rel_recipe, format=f.suffix, source=name)
        data = f.read_bytes()
        res = readers.read_file(data, fmt, spec.get("encoding", "auto"), spec.get("delimiter"), rel_recipe, name)
        captured: dict[str, str] = {}
        if pattern is not None:
            m = pattern.search(rel_root)
            if not m:
                raise FtcError("FTC204", file=rel_recipe, source=name, pattern=spec["captures"])
            captured = {k: v for k, v in m.groupdict().items() if v is not None}
        table, chosen = map_columns(res.table, spec.get("columns"), captured, rel_recipe, name)
        n = table.num_rows
        table = table.append_column("_source", pa.array([name] * n, pa.string()))
        table = table.append_column("_file", pa.array([rel_root] * n, pa.string()))
        table = table.append_column("_row", pa.array(range(1, n + 1), pa.int64()))
        tables.append(table)
        facts.append(FileFacts(rel_recipe, len(data), hashlib.sha256(data).hexdigest(), fmt, res.encoding, chosen,
                               captured, n, res.malformed))
        bar.update(len(data), note=f"{i + 1}/{len(files)} files")
    bar.close()
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FtcError("FTC202", file=facts[0].path, format="table", source=name,
                       reason=f"files of source {name!r} disagree on column types: {e}") from None
    return SourceData(name, table, facts)


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
    """Canonical fields from one file's columns; alternatives resolved per file."""
    n = table.num_rows
    if columns is None:
        out = {c: table.column(c) for c in table.column_names}
        chosen = {c: c for c in table.column_names}
    else:
        out, chosen = {}, {}
        for fname, spec in columns.items():
            path = f"sources.{source}.columns.{fname}"
            if isinstance(spec, dict) and "const" in spec:
                out[fname] = pa.array([spec["const"]] * n)
                chosen[fname] = "const"
                continue
            conv = spec if isinstance(spec, dict) else None
            alts = conv["from"] if conv else spec
            alts = [alts] if isinstance(alts, str) else list(alts)
            col = next((a for a in alts if a in table.column_names), None)
            if col is None:
                if fname in captured:
                    continue  # a path capture of the same name fills it
                suggest = "".join(did_you_mean(a, table.column_names) for a in alts[:1])
                raise FtcError("FTC203", file=file, path=path, wanted=alts, field=fname,
                               available=", ".join(table.column_names) or "(none)", suggest=suggest)
            if fname in captured:
                raise FtcError("FTC209", file=file, path=path, field=fname, column=col, source=source)
            chosen[fname] = col
            arr = table.column(col)
            out[fname] = convert_turns(arr, conv, file, source, fname, col) if conv else arr
    for k, v in captured.items():
        if k not in out:
            out[k] = pa.array([v] * n, pa.string())
            chosen[k] = "path capture"
    return pa.table(out) if out else pa.table({"_empty": pa.nulls(n)}).drop(["_empty"]), chosen


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
        # which row holds that turn: the first offset beyond it
        offsets = arr.offsets.to_numpy()
        import numpy as np

        row = int(np.searchsorted(offsets, bad_at, side="right"))
        raise FtcError("FTC206", file=file, row=row, role=raw_roles[bad_at].as_py(), source=source, field=fname,
                       mapped=", ".join(roles_map))
    mapped = pc.take(pa.array(list(roles_map.values()), pa.string()), idx)
    content = turns.field(ck).cast(pa.string())
    structs = pa.StructArray.from_arrays([mapped, content], names=["role", "content"])
    return pa.ListArray.from_arrays(arr.offsets, structs, mask=arr.is_null())
