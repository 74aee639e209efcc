"""Which files a source's ``path`` names, each once, and every file it matched but does not read.

A folder or glob is walked here, not by ``glob.glob``/``rglob``: those follow a symlink that
points back up the tree until the OS refuses (the same file read 41 times). Files are
identified by their real path, so one reached twice is read once; a folder link that
leads back to an ancestor is a loop, reported and not followed. Compressed files
(``.gz``, ``.bz2``, ``.xz``: stdlib; ``.zst``: pyarrow) are read by the suffix under the
compression. Whatever a folder or glob matched and does not read (hidden, not a data
format, a link to a file already read, a loop) is listed with its reason for the summary
and the lock, never dropped without a word.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftc.compiler.lock import relpath
from ftc.compiler.readers import FORMATS
from ftc.errors import FtcError

_GLOB = re.compile(r"[*?\[]")
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


@dataclass
class Found:
    files: list[Path]  # sorted by their path relative to root
    root: Path  # what path captures and ``_file`` are relative to
    unread: list[dict] = field(default_factory=list)  # {"path" (relative to the recipe), "reason"}


def data_suffix(p: Path) -> tuple[str, str | None]:
    """(the format's suffix, the compression) of a file name: part.csv.gz -> (".csv", "gzip")."""
    suffix = p.suffix.lower()
    if suffix in COMPRESSION:
        return Path(p.stem).suffix.lower(), COMPRESSION[suffix]
    return suffix, None


_TEXT_KEYS = {"delimiter": ("csv", "tsv"), "on_malformed": ("csv", "tsv"),
              "encoding": ("csv", "tsv", "json", "jsonl"), "encoding_errors": ("csv", "tsv", "json", "jsonl")}


def check_keys_apply(written: dict, name: str, file: str) -> None:
    """Refuse a reading key the source's format has no use for, where the recipe says the format
    (``format``, or the suffix of ``path``: ``*.jsonl``, ``d.parquet.gz``); a folder is checked per file."""
    fmt = written.get("format") or FORMATS.get(data_suffix(Path(written.get("path") or "x"))[0])
    for key, applies in _TEXT_KEYS.items():
        if fmt and key in written and fmt not in applies:
            raise FtcError("FTC224", file=file, path=f"sources.{name}.{key}", key=key, format=fmt,
                           applies=", ".join(applies), source=name)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob (``**`` recursive; ``*``, ``?``, ``[...]`` within one name; no leading dot) as a regex on posix paths."""
    out = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(r"(?:(?!\.)[^/]+/)*" + (r"(?!\.)[^/]+" if last else ""))
            continue
        seg, j = r"(?!\.)" if part[:1] in "*?[" else "", 0
        while j < len(part):
            c = part[j]
            close = part.find("]", j + 2) if c == "[" else -1
            if c == "*":
                seg += "[^/]*"
            elif c == "?":
                seg += "[^/]"
            elif close > 0:
                body = part[j + 1: close]
                seg += "[" + ("^" + body[1:] if body[:1] == "!" else body).replace("\\", "\\\\") + "]"
                j = close
            else:
                seg += re.escape(c)
            j += 1
        out.append(seg + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


def _walk(top: Path, depth: int | None, unread: list[tuple[Path, str]], report_hidden: bool) -> list[Path]:
    """Every file under ``top`` (links followed, each folder entered once), in name order.

    Hidden folders (.git, .cache) are not walked; ``report_hidden`` lists each once (a folder
    source names everything under it; a glob's wildcards never match a leading dot)."""
    files, entered = [], {}
    stack = [(top, 0)]
    while stack:
        d, level = stack.pop()
        real = os.path.realpath(d)
        if real in entered:
            up = os.path.realpath(d.parent)
            how = "a symlink loop: it leads back to" if up == real or up.startswith(real + os.sep) else "a link to"
            unread.append((d, f"{how} the folder {entered[real]}, read once"))
            continue
        entered[real] = d
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name, reverse=True)
        except OSError as e:  # a loop the OS refuses, a folder we may not list
            unread.append((d, f"cannot list the folder: {e.strerror}"))
            continue
        for e in entries:
            p = Path(e.path)
            if e.is_dir():
                if e.name.startswith("."):
                    if report_hidden:
                        unread.append((p, "a hidden folder, not walked"))
                elif depth is None or level + 1 < depth:
                    stack.append((p, level + 1))
            elif e.is_file():
                files.append(p)
            elif e.is_symlink():
                unread.append((p, "a broken symlink"))
    return sorted(files)


def discover(recipe, name: str, spec: dict) -> Found:
    """Files of a source, each once, sorted, with the root their captured paths are relative to."""
    raw = spec["path"]
    full = recipe.resolve_path(raw)
    skipped: list[tuple[Path, str]] = []
    if _GLOB.search(raw):
        parts = Path(raw).parts
        cut = next(i for i, p in enumerate(parts) if _GLOB.search(p))
        root = recipe.resolve_path(str(Path(*parts[:cut]))) if cut else recipe.dir
        rest = "/".join(parts[cut:])
        regex = _glob_regex(rest)
        depth = None if "**" in parts[cut:] else len(parts) - cut
        walked = _walk(root, depth, skipped, False) if root.is_dir() else []
        files = [p for p in walked if regex.match(relpath(p, root))]
    elif full.is_dir():
        root = full
        files = []
        for p in _walk(full, None, skipped, True):
            rel = relpath(p, root)
            suffix, _ = data_suffix(p)
            if any(part.startswith(".") for part in rel.split("/")):
                skipped.append((p, "a hidden file"))
            elif suffix not in FORMATS:
                skipped.append((p, f"not a data file ({p.suffix or 'no suffix'}; the formats are "
                                   f"{', '.join(sorted(FORMATS))}, optionally .gz, .bz2, .xz or .zst)"))
            else:
                files.append(p)
    elif full.is_file():
        root, files = full.parent, [full]
    else:
        files, root = [], full
    once, seen = [], {}
    for p in sorted(files, key=lambda p: (os.path.realpath(p) != os.path.abspath(p), p)):  # the file itself before its links
        real = os.path.realpath(p)
        if real in seen:
            skipped.append((p, f"the same file as {relpath(seen[real], recipe.dir)}, read once"))
        else:
            seen[real] = p
            once.append(p)
    if not once:
        raise FtcError("FTC200", file=str(recipe.path), path=f"sources.{name}.path", pattern=raw, source=name, base=str(recipe.dir))
    once.sort(key=lambda p: relpath(p, root))
    unread = sorted(({"path": relpath(p, recipe.dir), "reason": why} for p, why in skipped), key=lambda u: u["path"])
    return Found(once, root, unread)
