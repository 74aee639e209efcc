"""`ftc diff`: what changed between two locks, grouped by section, in words."""

from __future__ import annotations

import difflib
import json

SECTIONS = [
    ("settings", "settings"),
    ("templates", "templates"),
    ("sources", "source files"),
    ("stages", "rows"),
    ("artifacts", "artifacts"),
    ("schedule", "schedule"),
    ("tokens", "tokens"),
    ("versions", "versions"),
    ("recipe", "recipe"),
]


def flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and any(isinstance(x, (dict, list)) for x in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def _fmt(v) -> str:
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v if len(v) < 80 and "\n" not in v else json.dumps(v, ensure_ascii=False)[:80] + "…"


def _num(old, new) -> str:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        d = new - old
        return f"{old:,} → {new:,} ({'+' if d >= 0 else ''}{d:,})" if isinstance(d, int) else f"{old} → {new}"
    return f"{_fmt(old)} → {_fmt(new)}"


def diff_locks(a: dict, b: dict) -> list[str]:
    """Human lines; empty when the plans are equal."""
    if a.get("plan_hash") == b.get("plan_hash"):
        return []
    lines: list[str] = []
    for key, title in SECTIONS:
        section = _section(key, a.get(key), b.get(key))
        if section:
            lines.append(f"{title}:")
            lines += [f"  {s}" for s in section]
    # the sections above and the hash (which differs whenever anything does) are not "other"
    other = sorted((set(a) | set(b)) - {k for k, _ in SECTIONS} - {"plan_hash", "samples"})
    for key in other:
        if a.get(key) != b.get(key):
            lines.append(f"{key}: changed")
    if not lines:
        lines.append("samples changed")
    return lines


def _section(key: str, a, b) -> list[str]:
    if a == b:
        return []
    if key == "templates":
        return _templates(a or {}, b or {})
    if key == "stages":
        return _stages(a or [], b or [])
    if key == "sources":
        return _sources(a or {}, b or {})
    fa, fb = flatten(a or {}), flatten(b or {})
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k not in fa:
            out.append(f"{k}: added ({_fmt(fb[k])})")
        elif k not in fb:
            out.append(f"{k}: removed (was {_fmt(fa[k])})")
        elif fa[k] != fb[k]:
            out.append(f"{k}: {_num(fa[k], fb[k])}")
    return out


def _templates(a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        ta, tb = a.get(k), b.get(k)
        if ta == tb:
            continue
        if ta is None or tb is None:
            out.append(f"{k}: {'added' if ta is None else 'removed'}")
            continue
        if ta["text"] != tb["text"]:
            out.append(f"{k} ({tb['name']}) changed:")
            udiff = difflib.unified_diff(ta["text"].splitlines(), tb["text"].splitlines(), "old", "new", lineterm="")
            out += [f"    {l}" for l in udiff]
        for f in ("name", "rendered_by"):
            if ta.get(f) != tb.get(f):
                out.append(f"{k}.{f}: {ta.get(f)} → {tb.get(f)}")
    return out


def _stages(a: list, b: list) -> list[str]:
    ma, mb = {s["stage"]: s for s in a}, {s["stage"]: s for s in b}
    out = []
    for name in list(dict.fromkeys([s["stage"] for s in a] + [s["stage"] for s in b])):
        sa, sb = ma.get(name), mb.get(name)
        if sa == sb:
            continue
        if sa is None or sb is None:
            out.append(f"{name}: step {'added' if sa is None else 'removed'}")
            continue
        if sa["rows_out"] != sb["rows_out"]:
            out.append(f"{name}: rows out {_num(sa['rows_out'], sb['rows_out'])}")
        for reason in sorted(set(sa["dropped"]) | set(sb["dropped"])):
            va, vb = sa["dropped"].get(reason, 0), sb["dropped"].get(reason, 0)
            if va != vb:
                out.append(f"{name}: dropped '{reason}' {_num(va, vb)}")
    return out


def _sources(a: dict, b: dict) -> list[str]:
    out = []
    for name in sorted(set(a) | set(b)):
        fa = {f["path"]: f for f in (a.get(name) or {}).get("files", [])}
        fb = {f["path"]: f for f in (b.get(name) or {}).get("files", [])}
        for p in sorted(set(fa) | set(fb)):
            x, y = fa.get(p), fb.get(p)
            if x == y:
                continue
            if x is None or y is None:
                out.append(f"{name}: file {p} {'added' if x is None else 'removed'}")
                continue
            changes = [f"{k} {_num(x[k], y[k])}" for k in ("rows", "bytes", "encoding", "columns") if x.get(k) != y.get(k)]
            if x["sha256"] != y["sha256"]:
                changes.insert(0, "content changed")
            out.append(f"{name}: {p}: " + "; ".join(changes))
        if not fa and not fb and a.get(name) != b.get(name):
            out += [f"{name}.{s}" for s in _section("x", a.get(name), b.get(name))]
    return out
