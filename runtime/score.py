"""``ftc score``: run the declared rewards over completions you already have.

Why: before spending GPU hours on GRPO, check that the rewards say what you mean.
Take a few reference answers or a base model's samples, score them offline, and a
format regex that never matches, or an answer field that is never right, shows up
as a 0.00 mean here instead of as a flat reward curve later. The functions are the
same ones the trainer calls (``build_reward_funcs``), so the scores are the ones
training will see.

Completions file: JSON Lines, one ``{"row_id": ..., "completion": ...}`` a line;
``completion`` is a string or a list of chat messages. Several lines may share a
row_id (several samples of one prompt).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ftc.errors import FtcError
from ftc.runtime.rewards_trl import build_reward_funcs, reward_weights

_SKIP = ("prompt", "completion", "completions", "prompts")


def score_rows(
    resolved: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    completions: Mapping[Any, Any],
    recipe_dir: Path,
) -> dict[str, Any]:
    """Score completions (keyed by row_id; one completion or a list of them) against their rows.

    Row ids match by their string form, so 7 in a JSON file meets row 7 read as text.
    A score of None (the reward could not judge: e.g. the row has no reference
    answer) is left out of that reward's mean and adds 0 to the total, as in TRL.
    """
    by_id = {str(r["row_id"]): r for r in rows}
    unknown = [k for k in completions if str(k) not in by_id]
    if unknown:
        raise _unknown_ids(unknown, by_id, file=None)

    samples: list[tuple[Mapping[str, Any], int, Any]] = []
    for key, value in completions.items():
        for j, completion in enumerate(_samples(key, value)):
            samples.append((by_id[str(key)], j, completion))

    funcs = build_reward_funcs(resolved, Path(recipe_dir))
    prompts = [row.get("prompt") for row, _, _ in samples]
    texts = [c for _, _, c in samples]
    columns = sorted({k for row, _, _ in samples for k in row if k not in _SKIP})
    kwargs = {k: [row.get(k) for row, _, _ in samples] for k in columns}
    scores = [func(prompts=prompts, completions=texts, **kwargs) if samples else [] for func in funcs]

    names = [d["name"] for d in resolved]
    weights = reward_weights(resolved)  # as GRPOConfig(reward_weights=...) gets them
    detail, totals = [], []
    for i, (row, j, _) in enumerate(samples):
        per = {name: _finite(scores[k][i]) for k, name in enumerate(names)}
        total = sum(w * s for w, s in zip(weights, per.values()) if s is not None)
        totals.append(total)
        detail.append({"row_id": row["row_id"], "sample": j, "scores": per, "total": total})

    summary = []
    for k, d in enumerate(resolved):
        judged = [s for s in (_finite(x) for x in scores[k]) if s is not None]
        summary.append({
            "name": d["name"], "kind": d["kind"], "weight": weights[k],
            "mean": sum(judged) / len(judged) if judged else None,
            "n": len(judged), "skipped": len(samples) - len(judged),
        })
    scored_rows = {str(row["row_id"]) for row, _, _ in samples}
    return {
        "n": len(samples),
        "rows": len(rows),
        "rows_scored": len(scored_rows),
        "rewards": summary,
        "total_mean": sum(totals) / len(totals) if totals else None,
        "total_max": sum(w for w in weights if w > 0),
        "detail": detail,
    }


def score_file(
    resolved_rewards: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    completions_path: Path,
    recipe_dir: Path,
) -> dict[str, Any]:
    """``score_rows`` over a completions JSONL file, with errors that name its line."""
    path = Path(completions_path)
    completions = read_completions(path)
    known = {str(r["row_id"]) for r in rows}
    unknown = [k for k in completions if k not in known]
    if unknown:
        raise _unknown_ids(unknown, known, file=str(path))
    result = score_rows(resolved_rewards, rows, completions, recipe_dir)
    result["file"] = str(path)
    return result


def read_completions(path: Path) -> dict[str, list[Any]]:
    """row_id (as a string) -> its completions, in file order. Blank lines are allowed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 ({e.reason} at byte {e.start})"
        raise FtcError("FTC740", file=str(path), reason=reason) from None
    out: dict[str, list[Any]] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FtcError("FTC742", file=str(path), line=n, reason=e.msg, col=e.colno) from None
        if not isinstance(obj, dict):
            raise FtcError("FTC743", file=str(path), line=n, type=type(obj).__name__)
        missing = [k for k in ("row_id", "completion") if k not in obj]
        if missing:
            raise FtcError("FTC744", file=str(path), line=n, missing=" and ".join(map(repr, missing)), keys=", ".join(obj) or "none")
        rid, completion = obj["row_id"], obj["completion"]
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise FtcError("FTC745", file=str(path), line=n, value=json.dumps(rid))
        if not _is_completion(completion):
            raise FtcError("FTC746", file=str(path), where=f"line {n}", type=type(completion).__name__)
        out.setdefault(str(rid), []).append(completion)
    if not out:
        raise FtcError("FTC741", file=str(path))
    return out


def format_summary(result: Mapping[str, Any]) -> str:
    """A plain-text table: one line per reward, then the weighted total."""
    header = ("reward", "kind", "weight", "mean", "n", "skipped")
    lines = [(r["name"], r["kind"], f"{r['weight']:g}", _fmt(r["mean"]), str(r["n"]), str(r["skipped"]))
             for r in result["rewards"]]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def row(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [row(header), row(["-" * w for w in widths]), *(row(line) for line in lines)]
    out.append(f"total (weighted): {_fmt(result['total_mean'])} of {result['total_max']:g} possible")
    unscored = result["rows"] - result["rows_scored"]
    out.append(f"{result['n']} completion(s) for {result['rows_scored']} of {result['rows']} row(s)"
               + (f"; {unscored} row(s) have no completion" if unscored else ""))
    skipped = [r["name"] for r in result["rewards"] if r["skipped"]]
    if skipped:
        out.append(f"skipped: {', '.join(skipped)} could not judge some completions (e.g. the row has no reference value)")
    return "\n".join(out)


def _samples(key: Any, value: Any) -> list[Any]:
    """One completion (a string, or one chat as a list of messages) or a list of them."""
    if isinstance(value, (str, Mapping)) or (isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise FtcError("FTC746", where=f"row_id {str(key)!r}", type=type(value).__name__)


def _is_completion(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(m, dict) for m in value))


def _unknown_ids(unknown: Sequence[Any], known: Any, file: str | None) -> FtcError:
    some = ", ".join(repr(str(k)) for k in list(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
    example = ", ".join(repr(k) for k in sorted(known)[:3]) or "(the split has no rows)"
    return FtcError("FTC747", file=file, count=len(unknown), ids=some, examples=example)


def _finite(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
