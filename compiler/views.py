"""Views of the token artifacts for people: a row's tokens, the length histogram, the data report.

They read what the encoder produced and change nothing; matplotlib is imported
inside the one function that draws, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ftc.compiler.encode import CHAT_PROMPT, IGNORE, MERGE
from ftc.compiler.tokenizer import TokenizerInfo


def show_tokens(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int], *, color: bool) -> str:
    """Show a row as the trainer sees it: masked spans vs trained spans.

    Consecutive tokens with the same status are decoded together, so text reads
    normally; a multi-byte character split across a status change shows as U+FFFD.
    Without color, masked text is wrapped in «…» and trained text in [[…]].
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    ids = [int(i) for i in input_ids]
    trained = [int(l) != IGNORE for l in labels]
    parts: list[str] = []
    k = 0
    while k < len(ids):
        j = k
        while j < len(ids) and trained[j] == trained[k]:
            j += 1
        text = backend.decode(ids[k:j], skip_special_tokens=False)
        if color:
            parts.append(f"\x1b[1;32m{text}\x1b[0m" if trained[k] else f"\x1b[2m{text}\x1b[0m")
        else:
            parts.append(f"[[{text}]]" if trained[k] else f"«{text}»")
        k = j
    return "".join(parts)


HISTOGRAM_BINS = 80  # at most; bins are whole tokens wide


def length_bins(lengths_by_split: dict[str, Sequence[int]]) -> np.ndarray:
    """Bin edges over 0 .. the longest row, whole tokens wide, at most HISTOGRAM_BINS: the rows
    themselves set the range (not max_seq_length, which on a short-row set such as the medical
    one left all rows in about 4 of 50 bins)."""
    top = max([1, *(int(max(v)) for v in lengths_by_split.values() if len(v))])
    width = max(1, -(-top // HISTOGRAM_BINS))
    return np.arange(0, top + width + 1, width)


def length_histogram_png(lengths_by_split: dict[str, Sequence[int]], path: str | Path, max_seq_length: int) -> np.ndarray:
    """Token-length histogram per split, each as a share of its own rows (a small eval split
    shows beside a large train split), with the max_seq_length cut drawn in when it is within
    the rows' range; returns the bin edges.

    Uses matplotlib's object API on an Agg canvas (no pyplot global state, no
    display), and fixed bins, so the same lengths give the same picture.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = length_bins(lengths_by_split)
    fig = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    counts = []
    for split in sorted(lengths_by_split):
        values = np.asarray(lengths_by_split[split])
        counts.append(f"{split} {len(values):,} rows")
        if len(values):
            p50, p99 = (int(x) for x in np.percentile(values, [50, 99]))
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), histtype="step", linewidth=1.5,
                    label=f"{split} ({len(values):,} rows, p50 {p50}, p99 {p99})")
    if max_seq_length <= bins[-1]:
        ax.axvline(max_seq_length, color="crimson", linestyle="--", linewidth=1, label=f"max_seq_length {max_seq_length}")
    else:
        ax.plot([], [], " ", label=f"max_seq_length {max_seq_length} (beyond the longest row)")
    title = f"tokens per row: {', '.join(counts)}"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("share of the split's rows")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path), format="png", metadata={"Software": None, "Title": title})
    return bins


def data_report_md(
    stats_by_split: dict,
    tokenizer_info: TokenizerInfo,
    packing: dict | None,
    *,
    dropped_by_split: dict[str, dict[str, int]] | None = None,
    histogram: str | None = None,
    warnings: list[dict] | None = None,
) -> str:
    """The data report: what a reviewer checks before spending GPU hours."""
    cols = ["rows", "tokens", "supervised_tokens", "length_p50", "length_p90", "length_p99", "length_max",
            "truncated", "dropped"]
    lines = ["# Data report", "", "## Splits", ""]
    lines.append("| split | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
    lines.append("| --- |" + " ---: |" * len(cols))
    for split in sorted(stats_by_split):
        s = stats_by_split[split]
        lines.append(f"| {split} | " + " | ".join(_fmt(s.get(c, "")) for c in cols) + " |")
    if dropped_by_split and any(dropped_by_split.values()):
        lines += ["", "## Dropped at tokenization", ""]
        for split in sorted(dropped_by_split):
            for reason, n in sorted(dropped_by_split[split].items()):
                lines.append(f"- {split}: {n:,} rows {reason}")
    if warnings:
        lines += ["", "## Warnings", ""]
        for w in warnings:
            first, *more = warning_lines(w)
            lines += [f"- {first}"] + [f"  {m}" for m in more]
    if histogram:
        lines += ["", f"![token lengths]({histogram})"]
    t = tokenizer_info
    lines += ["", "## Tokenizer", "", f"- name: `{t.name}`" + (f" @ `{t.revision}`" if t.revision else "")]
    lines.append(f"- eos: `{t.eos_token}` ({t.eos_token_id}); pad id: {t.pad_token_id}; vocabulary: {t.vocab_size:,}")
    lines.append(f"- chat template generation markers: {'yes' if t.has_generation_markers else 'no'}")
    for name, digest in sorted(t.fingerprint.items()):
        lines.append(f"- sha256 {name}: `{digest[:16]}`")
    if packing:
        lines += ["", "## Packing", ""]
        for key in sorted(packing):
            lines.append(f"- {key}: {_fmt(packing[key])}")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"


def warning_lines(w: dict) -> list[str]:
    """A lock's token warning in words, with its fix: the compile summary and the data report print these."""
    ex = w["example"]
    where = f"tokens[{w['split']}]: {w['rows']:,} of {w['of']:,} rows"
    if w["kind"] == MERGE:
        return [
            f"{where}: the prompt ends inside a token: encoded together, its last characters merge with the "
            "completion's first",
            f"e.g. row {ex['row_id']}: prompt ends {ex['prompt_end']!r}, completion starts {ex['completion_start']!r}; "
            f"together {ex['joint']}, apart {ex['apart']}",
            "these rows train on the prompt's own ids + the completion's, as inference feeds them, "
            "a split the model never sees in ordinary text",
            "fix: " + boundary_fix(ex["prompt_end"], ex["completion_start"]),
        ]
    if w["kind"] == CHAT_PROMPT:
        return [
            f"{where}: the chat template renders the prompt turns with the generation prompt differently from "
            "the start of the training row, so inference feeds other ids than training saw",
            f"e.g. row {ex['row_id']}: training {ex['training']}, inference {ex['inference']}",
            "fix: use a chat template whose generation prompt is exactly how it starts an assistant turn",
        ]
    return [f"{where}: {w['kind']}"]


def boundary_fix(prompt_end: str, completion_start: str) -> str:
    """How to end a prompt at a token boundary, for the usual byte-level BPE pre-tokenizers (Qwen, GPT-2, Llama 3).

    Those split text before a word and keep a space with the word after it, so a
    trailing space always merges; a run of whitespace, and letters or punctuation on
    both sides of the seam, merge too. A newline or a punctuation mark followed by a
    letter, or a word followed by a space, is a boundary.
    """
    spaces = prompt_end[len(prompt_end.rstrip(" \t")):]
    body = prompt_end[: len(prompt_end) - len(spaces)]
    if spaces:
        return (f"end the prompt at a token boundary: without its trailing {'space' if spaces == ' ' else 'whitespace'} "
                f"(...{body[-8:]!r}) and start the completion with it (e.g. {spaces + '{{ answer }}'!r}): "
                "the tokenizer joins a space to the word after it")
    if completion_start[:1].isspace():
        return ("end the prompt at a token boundary: start the completion without its leading whitespace, or move "
                "that whitespace to the end of the prompt: the tokenizer encodes a run of whitespace, and punctuation "
                "followed by newlines, as one token")
    if body[-1:].isspace():
        return ("end the prompt at a token boundary: with a single newline: some tokenizers (GPT-2's) split a run of "
                "newlines before a word differently from one at the end of a text")
    return (f"end the prompt at a token boundary: with a newline, not between {body[-1:]!r} and {completion_start[:1]!r}, "
            "which the tokenizer encodes as one word")
