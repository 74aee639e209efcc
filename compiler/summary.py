"""Plain-text views of a lock for people: the compile summary and row previews."""

from __future__ import annotations

import json
import unicodedata
from typing import Any


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: East Asian wide and fullwidth characters (Chinese file
    names) take two, combining marks none; len() would count one each and break the columns."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, left: bool) -> str:
    fill = " " * max(0, width - display_width(text))
    return text + fill if left else fill + text


def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns aligned by display width: the first left-aligned, the others right-aligned."""
    widths = [max(display_width(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(_pad(str(c), w, i == 0) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def compile_summary(lock: dict, lock_path: str, clock: Any = None) -> str:
    """What was compiled, stage by stage; with ``clock`` (``progress.Clock``) also each stage's
    time and which stages a recompile took from the cache."""
    out = [f"compiled {lock['settings']['name']} -> {lock_path}  (plan {lock['plan_hash'][:12]})", ""]
    files = []
    for name, facts in lock["sources"].items():
        for f in facts.get("files", []):
            files.append([f["path"], f["format"], f["encoding"] or "-", f"{f['rows']:,}", ", ".join(f"{k}<-{v}" for k, v in f["columns"].items())])
        if "files" not in facts:
            files.append([f"hf:{facts['name']}", "hf", "-", f"{facts['rows']:,}", ", ".join(f"{k}<-{v}" for k, v in facts["columns"].items())])
    if len(files) > 12:
        files = files[:10] + [[f"... {len(files) - 10} more files", "", "", "", ""]]
    out += [table(files, ["source file", "format", "encoding", "rows", "columns"]), ""]
    out += read_notes(lock)
    stages = [[s["stage"], f"{s['rows_in']:,}", f"{s['rows_out']:,}", f"{s['rows_in'] - s['rows_out']:,}"] for s in lock["stages"]]
    out += [table(stages, ["stage", "rows in", "rows out", "dropped"]), ""]
    drops = [(s["stage"], k, v) for s in lock["stages"] for k, v in s["dropped"].items() if v]
    if drops:
        out.append("dropped rows by reason:")
        out += [f"  {v:>8,}  {k}  ({stage})" for stage, k, v in drops]
        out.append("")
    arts = lock["artifacts"]["data"]
    out.append("splits: " + ", ".join(f"{k} {v['rows']:,} rows" for k, v in sorted(arts.items(), key=lambda kv: kv[0] != "train")))
    out += schedule_lines(lock["schedule"])
    tok = lock.get("tokens")
    if tok:
        for split, st in sorted(tok["stats"].items(), key=lambda kv: kv[0] != "train"):
            out.append(
                f"tokens[{split}]: {st['tokens']:,} tokens, {st['supervised_tokens']:,} trained; length p50 {st['length_p50']}, "
                f"p99 {st['length_p99']}, max {st['length_max']}; truncated {st['truncated']}, dropped {st['dropped']}"
            )
        if tok.get("warnings"):
            from ftc.compiler.views import warning_lines

            for w in tok["warnings"]:
                first, *more = warning_lines(w)
                out += [f"warning: {first}"] + [f"  {m}" for m in more]
        if tok.get("packing"):
            p = tok["packing"]
            out.append(f"packing: {p['sequences']:,} packed sequences of {p['capacity']} tokens, efficiency {p['efficiency']:.1%}")
    if clock is not None:
        out += time_lines(clock)
    return "\n".join(out)


def time_lines(clock: Any) -> list[str]:
    """Seconds per stage, and the stages reused because their fingerprints did not change."""
    spent = ", ".join(f"{stage} {s:.2f}s" for stage, s in clock.seconds.items())
    lines = [f"time: {spent} (total {sum(clock.seconds.values()):.2f}s)"] if clock.seconds else []
    if clock.reused:
        lines.append(f"reused from the cache (inputs unchanged): {', '.join(clock.reused)}")
    return lines


def schedule_lines(sched: dict) -> list[str]:
    """The schedule in the Trainer's units (GRPO: completions, so many prompts a step), then its warnings."""
    if sched["method"] == "grpo":
        prompts = sched["prompts_per_step"]
        batch = (f"{sched['completions_per_step']} completions/step ({prompts} prompt{'' if prompts == 1 else 's'} x "
                 f"{sched['num_generations']} generations)")
    else:
        batch = f"effective batch {sched['effective_batch_size']} {sched['counts']}"
    epochs = f"{sched['epochs']:.4g} epoch{'' if sched['epochs'] == 1 else 's'}"
    lines = [f"schedule: {batch}, {sched['optimizer_steps_per_epoch']:,} optimizer steps/epoch, "
             f"{sched['total_steps']:,} total steps ({epochs}), {sched['warmup_steps']:,} warmup steps"]
    return lines + [f"warning: {w}" for w in sched["warnings"]]


def preview_rows(rows: list[dict], fmt_fields: list[str], as_json: bool) -> str:
    if as_json:
        return "\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows)
    out = []
    for r in rows:
        out.append(f"── {r['row_id']} " + "─" * max(0, 60 - len(r["row_id"])))
        for k, v in r.items():
            if k == "row_id" or k in fmt_fields:
                continue
            out.append(f"  {k}: {_short(v)}")
        for k in fmt_fields:
            v = r.get(k)
            if isinstance(v, list):
                out.append(f"[{k}]")
                out += [f"  <{m['role']}> {m['content']}" for m in v]
            else:
                out.append(f"[{k}]\n{v}")
        out.append("")
    return "\n".join(out)


def _short(v, n: int = 100) -> str:
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    s = s.replace("\n", "⏎")
    return s if len(s) <= n else s[: n - 1] + "…"


def read_notes(lock: dict) -> list[str]:
    """What reading the sources did not do exactly as written: replaced bytes, suspect CSV records, files not read."""
    notes = []
    for name, facts in lock["sources"].items():
        for f in facts.get("files", []):
            if f.get("replaced_bytes"):
                notes.append(f"warning: {f['path']}: {f['replaced_bytes']:,} undecodable byte(s) read as U+FFFD "
                             f"(sources.{name}.encoding_errors is replace)")
            for r in f.get("lines", {}).get("suspect_records", []):
                notes.append(f"warning: suspect record {f['path']} line {r['line']}: {r['lines']} lines read as one record, "
                             f"{r['why']} (sources.{name}.on_malformed is warn)")
        unread = facts.get("unread", [])
        notes += [f"not read: {u['path']} ({u['reason']})" for u in unread[:10]]
        if len(unread) > 10:
            notes.append(f"not read: ... {len(unread) - 10} more files (the lock lists them: sources.{name}.unread)")
    return notes + [""] if notes else []
