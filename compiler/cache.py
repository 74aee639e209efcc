"""The compile cache: content fingerprints decide what a recompile may reuse.

A compile is two expensive halves. Reading and normalizing (decode every file, run the
transforms and the mixture) depends only on the source files' bytes and the settings
that read and transform them; rendering, tokenizing and packing depend on that result,
the split, the templates and the tokenizer. Each half's inputs are fingerprinted
(``Keys``), and what the half produced is kept under that fingerprint as an entry
(``Cache``): a JSON manifest in ``<cache_dir>/entries`` plus the content-addressed
files it names. A recompile whose fingerprint matches takes the entry instead of
doing the work, so a train setting alone costs a lock and a schedule, and a changed
template re-renders without re-reading a file.

Nothing is trusted that is not checked: every file an entry names is hashed again
before it is used (``verified``, the one place that decides whether bytes on disk are
the bytes a hash names), and an entry with a missing or changed file is a miss, so the
work is done again and the file rewritten. The lock a reused compile writes is the
same bytes as a cold compile's, because the entry holds the cold compile's own lock
values and everything else is computed fresh from the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa

from ftc.compiler.inputs import sha256_file, source_sha256
from ftc.compiler.lock import canonical, relpath
from ftc.compiler.recipe import Recipe
from ftc.errors import FtcError

ENTRIES = "entries"  # manifests, one per fingerprint
NORMALIZED = "normalized"  # normalized tables (Parquet), content-addressed
REPORTS = "reports"  # length histograms, content-addressed
BATCH = 65_536  # rows per batch between DuckDB and Parquet
ENTRY_VERSION = 2  # bump when an entry's layout changes: older entries are then misses
# The train settings the data and tokens depend on; every other train key only reaches the schedule.
TRAIN_DATA_KEYS = ("method", "packing", "overlong", "completion_only_loss", "assistant_only_loss")


def digest(obj: Any) -> str:
    """sha256 of a JSON value in the lock's canonical spelling."""
    return hashlib.sha256(canonical({"v": obj}).encode("utf-8")).hexdigest()


def verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` exists and holds exactly the bytes ``sha256`` names.

    The one check for every content-addressed file: an entry is reused, and an
    artifact already at its name is kept, only when this says so.
    """
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False


def store(tmp: Path, path: Path, sha256: str) -> None:
    """Move a freshly written ``tmp`` (whose bytes hash to ``sha256``) to its content-addressed ``path``.

    A file already there is kept only when ``verified``: a damaged or truncated one
    under the right name is replaced, never trusted because of its name.
    """
    if verified(path, sha256):
        tmp.unlink()
    else:
        tmp.replace(path)


class Cache:
    """Entries under one cache folder (``output.cache_dir``)."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))

    def _entry(self, kind: str, key: str) -> Path:
        return self.root / ENTRIES / f"{kind}-{key[:32]}.json"

    def get(self, kind: str, key: str | None) -> dict | None:
        """The entry of that fingerprint when every file it names is intact, else None (a miss)."""
        if key is None:
            return None
        try:
            entry = json.loads(self._entry(kind, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("entry_version") != ENTRY_VERSION or entry.get("key") != key:
            return None
        if not all(verified(self.root / f["path"], f["sha256"]) for f in entry["files"]):
            return None
        return entry

    def put(self, kind: str, key: str | None, entry: dict, files: list[dict]) -> None:
        """Record an entry; ``files`` are {path (relative to the cache folder), sha256} it depends on."""
        if key is None:
            return
        path = self._entry(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # insertion order kept (not sorted like a lock): a reused compile's summary lists things as a cold one does
        body = {**entry, "entry_version": ENTRY_VERSION, "key": key, "files": files}
        tmp.write_text(json.dumps(body, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        tmp.replace(path)

    def rel(self, path: Path) -> str:
        return relpath(path, self.root)

    def put_file(self, data: bytes, folder: str, suffix: str) -> dict:
        """A content-addressed file of these bytes in ``folder``: its {path, sha256}."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / folder / f"{sha[:16]}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        store(tmp, path, sha)
        return {"path": self.rel(path), "sha256": sha}


def cache_root(recipe: Recipe) -> Path:
    return recipe.resolve_path(recipe.data["output"]["cache_dir"])


# -- fingerprints ---------------------------------------------------------------


def normalized_key(recipe: Recipe, versions: dict) -> str | None:
    """Fingerprint of what reading and normalizing depend on; None when it cannot be known cheaply.

    A Hugging Face source has no file bytes to hash before it is loaded, so a recipe with
    one is never reused. Any error while looking (no files, say) is left to the cold
    compile, which reports it where it always has.
    """
    from ftc.compiler.discovery import discover

    data = recipe.data
    if any("hf" in spec for spec in data["sources"].values()):
        return None
    try:
        files = {}
        for name, spec in data["sources"].items():
            found = discover(recipe, name, spec)
            files[name] = {"read": [[relpath(f, recipe.dir), relpath(f, found.root), source_sha256(f)] for f in found.files],
                           "unread": found.unread}
    except (FtcError, OSError):
        return None
    return digest({"what": NORMALIZED, "versions": versions, "files": files,
                   **{k: data[k] for k in ("sources", "transforms", "mix")}})


def plan_key(recipe: Recipe, norm_key: str | None, templates: dict, versions: dict, tokenize: bool,
             tokenizer_location: str) -> str | None:
    """Fingerprint of everything the lock's data, tokens and reports depend on, but the schedule."""
    if norm_key is None:
        return None
    data = recipe.data
    tokenizer = None
    if tokenize:
        from ftc.compiler.tokenizer import fingerprint

        model = data["model"]
        try:
            tokenizer = fingerprint(tokenizer_location, model.get("tokenizer_revision"))
        except Exception:  # noqa: BLE001 - cannot fingerprint cheaply: the cold compile loads it and says why
            return None
        if not tokenizer:
            return None
        tokenizer = {"files": tokenizer, "name": model["tokenizer"], "revision": model.get("tokenizer_revision"),
                     "trust_remote_code": model.get("trust_remote_code"),
                     "max_seq_length": model["max_seq_length"]}
    return digest({"what": "plan", "normalized": norm_key, "versions": versions, "tokenize": tokenize,
                   "split": data["split"], "template": data["template"],
                   "templates": {jp: [t.name, t.sha256] for jp, t in templates.items()},
                   "train": {k: data["train"].get(k) for k in TRAIN_DATA_KEYS}, "tokenizer": tokenizer})


# -- the normalized table ---------------------------------------------------------


def keep_normalized(norm: Any, cache: Cache, key: str, t: str, stages: list[dict], sources: dict) -> str:
    """Store the normalized rows of ``t`` (every column, internal ones included) and the facts that
    led to them; the name of the table the compile goes on from (the same rows, materialized once).

    The rows go to Parquet batch by batch, out of DuckDB's own table: no copy of the whole
    table is held in Python.
    """
    import pyarrow.parquet as pq

    types = [[k, v] for k, v in norm.types(t).items()]
    kept = norm._tmp()
    norm.x(f"CREATE TABLE {kept} AS SELECT * FROM {t}")
    folder = cache.root / NORMALIZED
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{os.getpid()}.parquet.tmp"
    reader = norm.con.sql(f"SELECT * FROM {kept}").to_arrow_reader(BATCH)
    with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_batch(batch)
    sha = sha256_file(tmp)
    path = folder / f"{sha[:16]}.parquet"
    store(tmp, path, sha)
    f = {"path": cache.rel(path), "sha256": sha}
    cache.put(NORMALIZED, key, {"table": f, "types": types, "stages": stages, "sources": sources}, [f])
    return kept


def restore_normalized(norm: Any, cache: Cache, entry: dict) -> str | None:
    """The entry's rows as a table of ``norm`` (read batch by batch), or None when DuckDB would not
    see the same column types as the compile that stored them (then nothing is reused)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(cache.root / entry["table"]["path"])
    reader = pa.RecordBatchReader.from_batches(pf.schema_arrow, pf.iter_batches(BATCH))
    name = norm._tmp()
    norm.con.register(f"{name}_arrow", reader)
    norm.x(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
    norm.con.unregister(f"{name}_arrow")
    if [[k, v] for k, v in norm.types(name).items()] != entry["types"]:
        return None
    return name


# -- the plan entry ---------------------------------------------------------------

LOCK_PARTS = ("sources", "stages", "templates", "samples", "artifacts", "tokens")


def keep_plan(cache: Cache, key: str | None, lock: dict, recipe_dir: Path, *, normalized: str | None,
              train_sequences: int, fields: list[str], report: dict | None, png: bytes | None) -> None:
    """Store the cold compile's lock values (artifact paths relative to the cache) and the report's inputs."""
    if key is None:
        return
    parts = json.loads(json.dumps({k: lock[k] for k in LOCK_PARTS if k in lock}))
    files = []
    for arts in parts["artifacts"].values():
        for art in arts.values():
            art["path"] = cache.rel(recipe_dir / art["path"])
            files.append({"path": art["path"], "sha256": art["sha256"]})
    if png is not None:
        report = {**(report or {}), "png": cache.put_file(png, REPORTS, ".png")}
        files.append(report["png"])
    cache.put("plan", key, {"lock": parts, "normalized": normalized, "train_sequences": train_sequences, "fields": fields,
                            "report": report}, files)


def plan_lock_parts(cache: Cache, entry: dict, recipe_dir: Path) -> dict:
    """The entry's lock values with artifact paths as the lock spells them (relative to the recipe)."""
    parts = json.loads(json.dumps(entry["lock"]))
    for arts in parts["artifacts"].values():
        for art in arts.values():
            art["path"] = relpath(cache.root / art["path"], recipe_dir)
    return parts


class LazyTables(Mapping):
    """Artifact tables read from Parquet when asked for (a reused compile reads none it is not asked for)."""

    def __init__(self, paths: dict[str, Path], names: tuple[str, ...]):
        self._paths, self._names, self._read = paths, names, {}

    def __getitem__(self, split: str) -> pa.Table:
        if split not in self._names:
            raise KeyError(split)
        if split not in self._read:
            import pyarrow.parquet as pq

            if split in self._paths:
                self._read[split] = pq.read_table(self._paths[split])
            else:  # a split without an artifact (an empty eval): no rows, the other split's columns
                other = next(iter(self._paths.values()))
                self._read[split] = pq.read_schema(other).empty_table()
        return self._read[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def lazy(recipe_dir: Path, arts: dict, names: tuple[str, ...]) -> LazyTables:
    return LazyTables({s: recipe_dir / a["path"] for s, a in arts.items()}, names)



# -- ftc clean ------------------------------------------------------------------------

ARTIFACT_FOLDERS = ("data", "tokens", NORMALIZED, REPORTS)  # what a cache folder holds besides ENTRIES
_SKIP = {"node_modules", "__pycache__"}


def project_locks(project: Path) -> tuple[list[Any], list[Path], list[Path]]:
    """The plans under ``project`` (run folders' copies included), the cache folders found, and the
    ``*.lock`` files that could not be read as plans (reported, not guessed at)."""
    from ftc.compiler.lock import Plan

    plans, caches, unreadable = [], set(), []
    for folder, dirs, names in os.walk(project):
        here = Path(folder)
        if ".ftc" in dirs:  # the default cache folder of a recipe here
            caches.add(Path(os.path.abspath(here / ".ftc")))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP)
        for n in sorted(names):
            if n.endswith(".lock"):
                try:
                    plan = Plan.load(here / n)
                except FtcError:
                    unreadable.append(here / n)
                    continue
                plans.append(plan)
                caches.add(Path(os.path.abspath(plan.path(plan.settings["output"]["cache_dir"]))))
    return plans, sorted(caches), unreadable


def clean(project: Path, everything: bool = False) -> dict:
    """Remove what no plan under ``project`` uses from its cache folders (``everything``: all of it).

    A plan entry is in use while every artifact it names is one a lock names; a normalized
    entry while a used plan entry was made from it; a file while a lock or a used entry names
    it. Only the cache's own folders are touched, whatever ``cache_dir`` points at.
    """
    plans, caches, unreadable = project_locks(project)
    used_files = {str(p.path(a["path"])) for p in plans for _, _, a in p.artifacts()}
    removed = {"entries": 0, "files": 0, "bytes": 0, "kept_entries": 0, "locks": len(plans), "caches": [str(c) for c in caches],
               "unreadable": [str(u) for u in unreadable]}

    def drop(path: Path) -> None:
        removed["bytes"] += path.stat().st_size
        path.unlink()

    for root in caches:
        entries = {}
        for e in sorted((root / ENTRIES).glob("*.json")) if (root / ENTRIES).is_dir() else []:
            try:
                entries[e] = json.loads(e.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                entries[e] = None  # unreadable: never used
        keep: set[Path] = set()
        if not everything:
            plan_used = {e: d for e, d in entries.items() if d and d.get("files") is not None and e.name.startswith("plan-")
                         and all(str(root / f["path"]) in used_files for f in d["files"] if not f["path"].startswith(REPORTS))}
            norm_keys = {d.get("normalized") for d in plan_used.values()}
            keep = set(plan_used) | {e for e, d in entries.items() if d and e.name.startswith(f"{NORMALIZED}-")
                                     and d.get("key") in norm_keys}
        kept_files = set(used_files) if not everything else set()
        for e in keep:
            kept_files |= {str(root / f["path"]) for f in entries[e]["files"]}
        for e in entries:
            if e not in keep:
                drop(e)
                removed["entries"] += 1
        removed["kept_entries"] += len(keep)
        for sub in ARTIFACT_FOLDERS:
            for f in sorted((root / sub).iterdir()) if (root / sub).is_dir() else []:
                if f.is_file() and str(f) not in kept_files:
                    drop(f)
                    removed["files"] += 1
        for sub in (ENTRIES, *ARTIFACT_FOLDERS):
            if (root / sub).is_dir() and not any((root / sub).iterdir()):
                (root / sub).rmdir()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return removed
