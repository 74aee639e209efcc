"""Preference data (DPO, ORPO, SimPO, KTO): rendered rows -> prompt / completion ids, once each.

Two template formats: ``preference`` (a prompt, a ``chosen`` and a ``rejected`` completion) and
``unpaired_preference`` (a prompt, one ``completion`` and a boolean ``label``, KTO's format).
A completion value may be a string, one assistant turn (``{role, content}`` or ShareGPT's
``{from, value}``), or chat turns ending with an assistant turn (UltraFeedback repeats the
prompt in both): the turns before the answer are then the prompt, taken once; two
completions of one pair whose turns differ are an error naming the row (FTC242).

The ids are made the way TRL 1.16's ``DPOTrainer._prepare_dataset`` (and ``KTOTrainer``'s)
makes them, so a plan trains on exactly what TRL would have tokenized (tests/test_preference.py
compares every real row):

- chat: ``prompt_ids`` = the chat template of the prompt turns with the generation prompt
  (``encode_prompt``, what ``ftc infer`` feeds); each completion = the chat template of prompt
  + assistant turn, after the prompt. For ChatML that is the answer, ``<|im_end|>`` (eos) and
  the template's newline, as TRL trains it.
- text: ``prompt_ids`` = the prompt's own encoding (its special prefix included); each
  completion = the encoding of prompt + completion + the eos text (added unless the
  completion already ends with it), after the prompt.
- Where the template renders the prompt differently in front of an answer, or the tokenizer
  merges across the boundary, the prompt is cut to the ids both have in common, as TRL
  does, and those rows are counted in a lock warning.

Data rules, each counted by reason in the lock's stages: an empty completion, chosen identical
to rejected, and what ``train.overlong`` does with an example longer than max_seq_length
(truncate: the prompt loses tokens from its start, down to half the budget at most, then the
completions are cut at their end; the pairs that leave a side with no token or make the two
sides equal are dropped; drop: left out; error: FTC610).

The artifact holds per row ``prompt_ids``, ``chosen_ids``/``rejected_ids`` (or ``completion_ids``
and ``label``), their lengths and ``length`` (the longest sequence the row makes): the loss
mask of a sequence is its completion part, which the lengths state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ftc.compiler.rows import _count  # drops counted by reason as SFT rows count them
from ftc.errors import FtcError, did_you_mean

# train.method -> the template format it trains on: the one place this pairing is stated
FORMAT_OF = {"dpo": "preference", "orpo": "preference", "simpo": "preference", "kto": "unpaired_preference"}
SIDES = {"preference": ("chosen", "rejected"), "unpaired_preference": ("completion",)}
OUTPUTS = {"preference": ["prompt", "chosen", "rejected"], "unpaired_preference": ["prompt", "completion", "label"]}
PROMPT_CUT = "prompt_cut_at_completion"  # the lock's warning kind: TRL's common-prefix rule applied
# TRL 1.16 DPOTrainer.dpo_loss reads label_smoothing in these losses only (sigmoid, the default, does not)
DPO_SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")

__all__ = ["FORMAT_OF", "SIDES", "OUTPUTS", "PROMPT_CUT", "check_method_format", "check_fields", "examples",
           "tokenize_preference", "PreferenceResult", "check_method_keys"]


def check_method_format(method: str, fmt: str, file: str) -> None:
    """FTC180: a preference method on another format, or a preference format under another method."""
    if FORMAT_OF.get(method) == fmt:
        return
    needs = FORMAT_OF.get(method)
    if needs is None:  # sft / grpo on a preference format
        methods = ", ".join(m for m, f in FORMAT_OF.items() if f == fmt)
        raise FtcError("FTC180", file=file, path="train.method", method=method, needs="text, prompt_completion or messages"
                       if method == "sft" else "prompt", format=fmt, keys="its own template keys", methods=methods)
    raise FtcError("FTC180", file=file, path="template.format", method=method, needs=needs, format=fmt,
                   keys=", ".join(OUTPUTS[needs]), methods=_methods_for(fmt))


def check_method_keys(written: dict, train: dict, file: str) -> None:
    """FTC184/FTC185: a DPO label_smoothing its loss would not read (TRL ignores it silently), or one the
    loss cannot train with (exo_pair needs one above 0, TRL raises at start-up; robust divides by 1 - 2 x it)."""
    if train["method"] != "dpo":
        return
    dpo, path = train["dpo"], "train.dpo.label_smoothing"
    value, loss = float(dpo["label_smoothing"]), dpo["loss_type"]
    if value and loss not in DPO_SMOOTHED and "label_smoothing" in written.get("dpo", {}):
        raise FtcError("FTC184", file=file, path=path, value=value, loss=loss, losses=", ".join(DPO_SMOOTHED))
    if (loss == "exo_pair" and value == 0) or (loss == "robust" and value >= 0.5):
        raise FtcError("FTC185", file=file, path=path, value=value, loss=loss,
                       need="above 0 (the EXO paper uses 0.001)" if loss == "exo_pair" else "below 0.5")


def _methods_for(fmt: str) -> str:
    own = [m for m, f in FORMAT_OF.items() if f == fmt]
    return ", ".join(own) if own else ("grpo" if fmt == "prompt" else "sft")


def check_fields(spec: dict, fields: set[str], *, files: list[str], file: str) -> None:
    """FTC240: a ``{"field": ...}`` of the template that the data does not have, said of the source files."""
    fmt = spec["format"]
    for key in OUTPUTS[fmt]:
        value = spec.get(key)
        if isinstance(value, dict) and "field" in value and value["field"] not in fields:
            known = sorted(f for f in fields if not f.startswith("_"))
            raise FtcError("FTC240", file=file, path=f"template.{key}.field", files=", ".join(files) or file,
                           field=value["field"], key=key, format=fmt, fields=", ".join(known),
                           suggest=did_you_mean(value["field"], known))


# ---------------------------------------------------------------- mapping


@dataclass
class Examples:
    """The split's examples in TRL's shape: a prompt (text or turns) and the completions' texts."""

    row_ids: list[str]
    chat: bool
    prompts: list[Any]  # str, or list of {role, content}
    sides: dict[str, list[str]]  # side -> completion text
    labels: list[bool] | None = None


def examples(table: pa.Table, fmt: str, *, has_prompt: bool) -> Examples:
    """Map rendered rows onto prompt + completions; a pair's shared prompt is taken once."""
    rows = table.to_pylist()
    sides = SIDES[fmt]
    ex = Examples([str(r["row_id"]) for r in rows], False, [], {s: [] for s in sides})
    if fmt == "unpaired_preference":
        ex.labels = _labels(table)
    for r, rid in zip(rows, ex.row_ids):
        turns_of: dict[str, list[dict] | None] = {}
        for side in sides:
            before, text = _completion(r.get(side), rid, side)
            turns_of[side] = before
            ex.sides[side].append(text)
        prompt = r.get("prompt") if has_prompt else None
        given = [s for s in sides if turns_of[s]]
        for a, b in zip(given, given[1:]):  # UltraFeedback: both sides repeat the prompt; it must be one
            _same_prompt(turns_of[a], turns_of[b], rid, a, b)
        if given:
            if prompt is None:
                prompt = turns_of[given[0]]
            elif isinstance(prompt, list):
                _same_prompt(_turns(prompt), turns_of[given[0]], rid, "template.prompt", given[0])
        if prompt is None:
            raise FtcError("FTC244", row=rid, key=sides[0])
        ex.prompts.append(_turns(prompt) if isinstance(prompt, list) else str(prompt))
    ex.chat = bool(ex.prompts) and isinstance(ex.prompts[0], list)
    if any(isinstance(p, list) != ex.chat for p in ex.prompts):  # text prompts from a field, turns from completions
        bad = next(i for i, p in enumerate(ex.prompts) if isinstance(p, list) != ex.chat)
        raise FtcError("FTC242", row=ex.row_ids[bad], first="template.prompt", second=sides[0], turn=0)
    return ex


def _labels(table: pa.Table) -> list[bool]:
    col = table.column("label")
    if not pa.types.is_boolean(col.type):
        values = col.to_pylist()
        at = next((i for i, v in enumerate(values) if not isinstance(v, bool)), 0)
        raise FtcError("FTC241", path="template.label", field="label", type=str(col.type),
                       row=str(table.column("row_id")[at].as_py()) if table.num_rows else "-",
                       value=repr(values[at]) if values else "nothing")
    if col.null_count:
        at = next(i for i, v in enumerate(col.to_pylist()) if v is None)
        raise FtcError("FTC604", row=str(table.column("row_id")[at].as_py()), column="label", count=col.null_count)
    return col.to_pylist()


def _turns(value: list) -> list[dict]:
    return [{"role": t.get("role", t.get("from")), "content": t.get("content", t.get("value"))} for t in value]


def _completion(value: Any, rid: str, side: str) -> tuple[list[dict] | None, str]:
    """(the turns before the answer, or None; the answer's text) of one completion value."""
    if value is None:
        return None, ""
    if isinstance(value, str):
        return None, value
    if isinstance(value, dict):
        text = value.get("content", value.get("value"))
        if not isinstance(text, (str, type(None))):
            raise FtcError("FTC243", row=rid, key=side, what=f"a turn whose content is {type(text).__name__}")
        return None, text or ""
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        turns = _turns(value)
        if turns[-1]["role"] not in ("assistant", "gpt"):
            raise FtcError("FTC243", row=rid, key=side, what=f"chat turns ending with a {turns[-1]['role']!r} turn")
        return turns[:-1], turns[-1]["content"] or ""
    raise FtcError("FTC243", row=rid, key=side, what="an empty list" if value == [] else type(value).__name__)


def _same_prompt(a: list[dict], b: list[dict], rid: str, first: str, second: str) -> None:
    if a == b:
        return
    turn = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    raise FtcError("FTC242", row=rid, first=first, second=second, turn=turn)


# ---------------------------------------------------------------- tokenization


@dataclass(frozen=True)
class PreferenceResult:
    """The tokenized split, as encode.TokenizeResult: the table, the lock's stats, drops, warnings."""

    table: pa.Table
    stats: dict
    dropped: dict[str, int]
    warnings: list[dict] = field(default_factory=list)


def tokenize_preference(table: pa.Table, fmt: str, tokenizer: Any, *, max_seq_length: int, overlong: str,
                        has_prompt: bool) -> PreferenceResult:
    """Tokenize one split of preference rows (see the module docstring for the rules)."""
    from ftc.compiler.encode import _encode_chat, _plain_prompts

    ex = examples(table, fmt, has_prompt=has_prompt)
    sides, n = SIDES[fmt], len(ex.row_ids)
    dropped: dict[str, int] = {}
    keep = np.ones(n, bool)
    for side in sides:
        empty = np.array([not t.strip() for t in ex.sides[side]], bool)
        _count(dropped, f"empty {side}", int((empty & keep).sum()))
        keep &= ~empty
    if fmt == "preference":
        same = np.array([c == r for c, r in zip(ex.sides["chosen"], ex.sides["rejected"])], bool)
        _count(dropped, "chosen identical to rejected", int((same & keep).sum()))
        keep &= ~same
    idx = np.flatnonzero(keep)
    rid = pa.array([ex.row_ids[i] for i in idx], pa.string())
    prompts = [ex.prompts[i] for i in idx]
    if ex.chat:
        prompt_ids = _encode_chat(tokenizer, prompts, rid, generation_prompt=True).lists()
        full = {s: _encode_chat(tokenizer, [p + [{"role": "assistant", "content": ex.sides[s][i]}] for p, i in zip(prompts, idx)],
                                rid).lists() for s in sides}
    else:
        eos = tokenizer.eos_token
        prompt_ids = _plain_prompts(tokenizer, pa.array(prompts, pa.string())).lists()
        full = {s: _plain_prompts(tokenizer, pa.array([p + c + ("" if c.endswith(eos) else eos) for p, c in
                                                       zip(prompts, (ex.sides[s][i] for i in idx))], pa.string())).lists()
                for s in sides}
    cut, out_prompt, out_sides = 0, [], {s: [] for s in sides}
    for k in range(len(idx)):  # TRL: the completion starts where the prompt and prompt+completion diverge
        p = prompt_ids[k]
        common = min(_common_prefix(p, full[s][k]) for s in sides)
        cut += common < len(p)
        out_prompt.append(p[:common])
        for s in sides:
            out_sides[s].append(full[s][k][common:])
    warnings = [_cut_warning(cut, len(idx), ex.chat)] if cut else []
    rows = _overlong(rid.to_pylist(), out_prompt, out_sides, [ex.labels[i] for i in idx] if ex.labels else None,
                     max_seq_length=max_seq_length, overlong=overlong, dropped=dropped)
    return PreferenceResult(_table(rows, sides), _stats(rows, sides, fmt, sum(dropped.values())), dropped, warnings)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _cut_warning(rows: int, of: int, chat: bool) -> dict:
    why = ("the chat template renders the prompt alone (with the generation prompt) differently from the prompt in "
           "front of an answer" if chat else "the tokenizer merges the prompt's end with the completion's start")
    return {"kind": PROMPT_CUT, "rows": rows, "of": of, "example": {"why": why, "what": "the prompt is cut to the ids it has "
            "in common with prompt + completion (TRL's rule), so training sees a shorter prompt than `ftc infer` feeds"}}


@dataclass
class _Rows:
    row_ids: list[str]
    prompt: list[list[int]]
    sides: dict[str, list[list[int]]]
    labels: list[bool] | None
    truncated: int = 0


def _overlong(row_ids: list[str], prompt: list[list[int]], sides: dict[str, list[list[int]]], labels: list[bool] | None, *,
              max_seq_length: int, overlong: str, dropped: dict[str, int]) -> _Rows:
    """Apply train.overlong to every example whose prompt + longest completion exceeds max_seq_length."""
    names = list(sides)
    longest = [len(p) + max(len(sides[s][k]) for s in names) for k, p in enumerate(prompt)]
    over = [k for k, n in enumerate(longest) if n > max_seq_length]
    if over and overlong == "error":
        raise FtcError("FTC610", row=row_ids[over[0]], tokens=longest[over[0]], max_seq_length=max_seq_length, count=len(over))
    keep = [True] * len(prompt)
    truncated = 0
    for k in over:
        if overlong == "drop":
            keep[k] = False
            continue
        answer = max(len(sides[s][k]) for s in names)
        room = max(max_seq_length - answer, min(len(prompt[k]), max_seq_length // 2))  # the prompt's share, at least half
        prompt[k] = prompt[k][len(prompt[k]) - min(room, len(prompt[k])):]
        for s in names:
            sides[s][k] = sides[s][k][: max_seq_length - len(prompt[k])]
        truncated += 1
        if any(not sides[s][k] for s in names):
            keep[k] = False
            _count(dropped, f"a completion left empty by truncation to {max_seq_length}", 1)
        elif len(names) == 2 and sides[names[0]][k] == sides[names[1]][k]:
            keep[k] = False
            _count(dropped, f"chosen and rejected identical after truncation to {max_seq_length}", 1)
    if overlong == "drop":
        _count(dropped, f"longer than max_seq_length ({max_seq_length})", len(over))
    pick = lambda xs: [x for x, k in zip(xs, keep) if k]  # noqa: E731
    return _Rows(pick(row_ids), pick(prompt), {s: pick(v) for s, v in sides.items()}, pick(labels) if labels else None,
                 truncated - sum(1 for k in over if not keep[k]) if overlong == "truncate" else 0)


def _ids(lists: list[list[int]]) -> pa.Array:
    return pa.array(lists, pa.list_(pa.int32()))


def _table(rows: _Rows, sides: tuple[str, ...]) -> pa.Table:
    cols: dict[str, pa.Array] = {"row_id": pa.array(rows.row_ids, pa.string()), "prompt_ids": _ids(rows.prompt)}
    for s in sides:
        cols[f"{s}_ids"] = _ids(rows.sides[s])
    if rows.labels is not None:
        cols["label"] = pa.array(rows.labels, pa.bool_())
    cols["prompt_length"] = pa.array([len(p) for p in rows.prompt], pa.int32())
    for s in sides:
        cols[f"{s}_length"] = pa.array([len(x) for x in rows.sides[s]], pa.int32())
    cols["length"] = pa.array(_longest(rows, sides), pa.int32())
    return pa.table(cols)


def _longest(rows: _Rows, sides: tuple[str, ...]) -> list[int]:
    return [len(p) + max(len(rows.sides[s][k]) for s in sides) for k, p in enumerate(rows.prompt)]


def _side_stats(lens: list[int]) -> dict:
    a = np.asarray(lens, np.int64)
    pct = lambda q: int(np.percentile(a, q, method="inverted_cdf")) if len(a) else 0  # noqa: E731
    return {"tokens": int(a.sum()), "mean": round(float(a.mean()), 1) if len(a) else 0.0, "p50": pct(50), "p90": pct(90),
            "max": int(a.max()) if len(a) else 0}


def _stats(rows: _Rows, sides: tuple[str, ...], fmt: str, dropped: int) -> dict:
    """The lock's stats: the keys every format has (rows, tokens, length percentiles...) + per side."""
    from ftc.compiler.rows import _stats as row_stats

    longest = np.asarray(_longest(rows, sides), np.int64)
    trained = sum(len(x) for s in sides for x in rows.sides[s])
    out = row_stats(longest, trained, rows.truncated, dropped)  # the stage itemizes the drops by reason
    out["tokens"] = int(sum(len(p) for p in rows.prompt) * len(sides) + trained)  # what the sequences hold
    out["sides"] = {"prompt": _side_stats([len(p) for p in rows.prompt]),
                    **{s: _side_stats([len(x) for x in rows.sides[s]]) for s in sides}}
    if fmt == "preference":
        out["pairs"] = len(rows.row_ids)
    else:
        out["desirable"] = int(sum(rows.labels or []))
        out["undesirable"] = len(rows.row_ids) - out["desirable"]
    return out
