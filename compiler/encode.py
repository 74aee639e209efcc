"""Encode rendered rows into ``input_ids`` + ``labels``: the last data stage of compile.

Every format is reduced to one question, which tokens does the model learn to
produce, and one rule: a row's prompt part is exactly ``encode_prompt`` of its
prompt, the function ``ftc infer`` feeds a request through, so training and
inference see the same prompt ids, BOS included.

Plain text takes a fast path: batched Rust encodes (``encode_batch_fast``, no
offsets) flattened into numpy, each chunk copied out while the next one encodes.
A prompt/completion row is its joint encoding wherever that starts with the
prompt's own ids (the boundary is a token boundary: natural tokens, no seam).
Where the tokenizer merges across the boundary (``Answer: `` + ``She`` gives
``:``, `` She``), the row is the prompt's ids + the completion's own ids instead,
and those rows are counted in a warning that says how to end the prompt at a token
boundary. Chat rows go through the tokenizer's chat template, whose
``{% generation %}`` markers say what the assistant wrote; the prompt turns
rendered with the generation prompt are checked against the start of the row, and
rows where they differ are counted too (``chat_encode.py``). Overlong rows are truncated, dropped (with
a counted reason) or rejected, as the recipe says (``rows.py``).

transformers is only reached through the tokenizer's own methods; importing this
module stays cheap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.compiler import chat_tools
from ftc.compiler.chat_encode import CHAT_PROMPT, chat_prompt, check_chat_prompts, encode_chat
from ftc.compiler.rows import IGNORE, Rows, concat_rows, finish
from ftc.errors import FtcError

_encode_chat = encode_chat  # the name compiler/preference.py imports from here

FORMATS = ("text", "prompt_completion", "messages", "prompt")
OVERLONG = ("truncate", "drop", "error")
MERGE = "prompt_merges_with_completion"  # the warning kind, as the lock records it (chat_encode has the chat one)
_CHUNKS, _MIN_CHUNK = 8, 1024  # plain-text encode pipeline: ~8 chunks, none tiny
_EXAMPLE_CHARS = 16  # how much of a prompt's end / a completion's start a warning quotes

__all__ = ["IGNORE", "FORMATS", "OVERLONG", "MERGE", "CHAT_PROMPT", "TokenizeResult", "tokenize", "encode_prompt",
           "chat_prompt"]


@dataclass(frozen=True)
class TokenizeResult:
    """The tokenized split: a table the trainer reads as is, and what happened to it."""

    table: pa.Table  # row_id, input_ids list<int32>, labels list<int32> (-100 = no loss), length int32
    stats: dict  # ints only, so the lock can hold them verbatim
    dropped: dict[str, int]  # reason -> rows
    warnings: list[dict] = field(default_factory=list)  # plain JSON, for the lock: kind, rows, of, example
    checked: dict[str, int] = field(default_factory=dict)  # warning kind -> rows checked for it (a warning's "of")


def encode_prompt(tokenizer: Any, prompt: str | Sequence[dict], tools: list[dict] | None = None) -> list[int]:
    """The ids of a rendered prompt, exactly as training's prompt part is made.

    Plain text: the tokenizer's special prefix (a BOS where its post-processor adds
    one) + the text's own encoding. Chat turns: the chat template with the
    generation prompt. ``tokenize`` builds every row's prompt part with these same
    two functions, batched; this is the one-prompt call ``ftc infer`` uses. ``tools``
    reach the chat template as a training row's ``tools`` field does.
    """
    if isinstance(prompt, str):
        return _plain_prompts(tokenizer, pa.array([prompt], pa.string())).ids.tolist()
    return encode_chat(tokenizer, [list(prompt)], pa.array(["request"]), generation_prompt=True,
                        tools=None if tools is None else [tools]).ids.tolist()


def tokenize(
    table: pa.Table,
    fmt: str,
    tokenizer: Any,
    *,
    max_seq_length: int,
    overlong: str = "truncate",
    completion_only_loss: bool = True,
    assistant_only_loss: bool = True,
) -> TokenizeResult:
    """Tokenize one split. Rows keep their order; dropped rows are counted by reason.

    Labels: ``text`` trains every token; ``prompt_completion`` trains the completion
    and the eos (the prompt part is ``encode_prompt`` of the prompt, so no token
    straddles the boundary); ``messages`` trains what the chat template marks with
    ``{% generation %}``; ``prompt`` trains nothing (GRPO generates the rest).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if overlong not in OVERLONG:
        raise ValueError(f"unknown overlong policy {overlong!r}; expected one of {OVERLONG}")
    if max_seq_length < 1:
        raise ValueError("max_seq_length must be positive")
    row_ids = table.column("row_id").combine_chunks() if table.num_rows else pa.array([], pa.string())
    eos = int(tokenizer.eos_token_id)
    warning = None
    checked: dict[str, int] = {}
    is_chat = fmt == "messages" or (fmt != "text" and _is_chat(table.schema.field("prompt").type))
    tools = chat_tools.tools_per_row(table, row_ids) if is_chat else None  # plain text has no tools= to give

    if fmt == "text":
        rows = _append_eos(_plain_prompts(tokenizer, _strings(table, "text", row_ids)), eos)
    elif fmt == "prompt_completion" and not _is_chat(table.schema.field("prompt").type):
        prompt = _strings(table, "prompt", row_ids)
        completion = _strings(table, "completion", row_ids)
        rows, warning = _encode_pair(tokenizer, prompt, completion, row_ids, train_prompt=not completion_only_loss,
                                     eos=eos)
        checked[MERGE] = len(row_ids)
    elif fmt == "prompt_completion":
        prompts = table.column("prompt").to_pylist()
        completion = _strings(table, "completion", row_ids).to_pylist()
        chats = [list(p) + [{"role": "assistant", "content": c}] for p, c in zip(prompts, completion)]
        rows = encode_chat(tokenizer, chats, row_ids, masked=completion_only_loss, what="completion_only_loss", tools=tools)
        warning = check_chat_prompts(tokenizer, rows, prompts, row_ids, tools)
        checked[CHAT_PROMPT] = sum(1 for p in prompts if p)
    elif fmt == "messages":
        chats = table.column("messages").to_pylist()
        rows = encode_chat(tokenizer, chats, row_ids, masked=assistant_only_loss, what="assistant_only_loss", tools=tools)
        prompts = [chat_prompt(c) for c in chats]
        warning = check_chat_prompts(tokenizer, rows, prompts, row_ids, tools)
        checked[CHAT_PROMPT] = sum(1 for p in prompts if p)
    else:  # prompt: exactly what encode_prompt gives, nothing trained
        if _is_chat(table.schema.field("prompt").type):
            rows = encode_chat(tokenizer, table.column("prompt").to_pylist(), row_ids, generation_prompt=True, tools=tools)
        else:
            rows = _plain_prompts(tokenizer, _strings(table, "prompt", row_ids))
        rows.labels = np.full_like(rows.ids, IGNORE)

    table_out, stats, dropped = finish(rows, row_ids, fmt, max_seq_length=max_seq_length, overlong=overlong)
    return TokenizeResult(table_out, stats, dropped, [warning] if warning else [], checked)


def _is_chat(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def _strings(table: pa.Table, column: str, row_ids: pa.Array) -> pa.Array:
    """A string column as one array; a null is an upstream bug the user must see."""
    arr = table.column(column).combine_chunks() if table.num_rows else pa.array([], pa.string())
    if arr.null_count:
        bad = row_ids.filter(arr.is_null())[0].as_py()
        raise FtcError("FTC604", row=bad, column=column, count=arr.null_count)
    return arr.cast(pa.string())


# -- plain text: the fast path ------------------------------------------------


def _plain_prompts(tok: Any, texts: pa.Array) -> Rows:
    """Each text's ids as a prompt: the special prefix (masked: nothing predicts a BOS) + its own ids.

    We encode without special tokens and add the prefix ourselves, so the ids of a
    text do not depend on whether it is a whole row or a row's prompt part.
    """
    rows = _encode_fast(tok.backend_tokenizer, texts)
    prefix = _special_prefix(tok)
    if not prefix:
        return rows
    n, k = len(rows.lens), len(prefix)
    head = Rows(np.tile(np.asarray(prefix, np.int32), n), np.full(n * k, IGNORE, np.int32), np.full(n, k, np.int64))
    return concat_rows(head, rows)


def _encode_pair(
    tok: Any, prompt: pa.Array, completion: pa.Array, row_ids: pa.Array, *, train_prompt: bool, eos: int
) -> tuple[Rows, dict | None]:
    """prompt_completion rows: ``encode_prompt(prompt)`` + the completion's ids + eos.

    Where the joint encoding of prompt + completion starts with the prompt's own ids,
    the completion's ids are the rest of it (the tokens the text has in one piece).
    Elsewhere the tokenizer merges across the boundary, and the completion is
    encoded on its own; those rows must still decode to the same text as the joint
    encoding (a tokenizer that prepends a space to every text would garble them:
    refused), and they are counted in the returned warning.
    """
    backend = tok.backend_tokenizer
    head = _plain_prompts(tok, prompt)
    if not train_prompt:
        head.labels[:] = IGNORE
    n, k = len(head.lens), len(_special_prefix(tok))
    own = head.tails(np.full(n, k))  # the prompt's ids without the special prefix
    joint = _encode_fast(backend, pc.binary_join_element_wise(prompt, completion, ""))
    natural = joint.starts_with(own)
    rest = joint.tails(own.lens).only(natural)
    merged = np.flatnonzero(~natural)
    warning = None
    if merged.size:
        alone = _encode_fast(backend, completion.take(pa.array(merged)))
        _check_apart(backend, own.select(merged), alone, joint.select(merged), row_ids.take(pa.array(merged)),
                     prompt.take(pa.array(merged)), completion.take(pa.array(merged)))
        warning = _merge_warning(backend, own, joint, alone, merged, row_ids, prompt, completion)
        rest = concat_rows(rest, Rows.spread(alone, merged, n))
    return _append_eos(concat_rows(head, rest), eos), warning


def _encode_fast(backend: Any, texts: pa.Array) -> Rows:
    """Encode texts (no special tokens, no offsets) into flat numpy rows, every token trained.

    The Rust encode releases the GIL and already uses every core, while copying ids
    out of the Encoding objects is serial Python. A one-thread pipeline lets chunk
    k+1 encode while chunk k is copied, so that serial work overlaps the encode
    instead of adding to it.
    """
    n = len(texts)
    step = max(_MIN_CHUNK, -(-n // _CHUNKS))

    def encode(lo: int) -> list:
        return backend.encode_batch_fast(texts.slice(lo, step).to_pylist(), add_special_tokens=False)

    parts: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftc-encode") as pool:
        pending = pool.submit(encode, 0) if n else None
        for lo in range(0, n, step):
            encodings = pending.result()
            if lo + step < n:
                pending = pool.submit(encode, lo + step)
            rows = [np.array(e.ids, dtype=np.int32) for e in encodings]  # fastest copy out measured
            del encodings
            lens.append(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
            parts.append(np.concatenate(rows) if rows else np.zeros(0, np.int32))
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return Rows(ids, ids.copy(), np.concatenate(lens) if lens else np.zeros(0, np.int64))


def _check_apart(backend: Any, own: Rows, alone: Rows, joint: Rows, row_ids: pa.Array, prompt: pa.Array,
                 completion: pa.Array) -> None:
    """Refuse rows whose prompt and completion, encoded apart, no longer give the row's text."""
    apart = backend.decode_batch(concat_rows(own, alone).lists(), skip_special_tokens=False)
    whole = backend.decode_batch(joint.lists(), skip_special_tokens=False)
    bad = next((i for i, (a, w) in enumerate(zip(apart, whole)) if a != w), None)
    if bad is None:
        return
    p, c = prompt[bad].as_py(), completion[bad].as_py()
    raise FtcError("FTC605", row=row_ids[bad].as_py(), prompt_end=p[-_EXAMPLE_CHARS:], completion_start=c[:_EXAMPLE_CHARS],
                   apart=apart[bad][max(len(p) - _EXAMPLE_CHARS, 0):][:2 * _EXAMPLE_CHARS])


def _merge_warning(backend: Any, own: Rows, joint: Rows, alone: Rows, merged: np.ndarray, row_ids: pa.Array,
                   prompt: pa.Array, completion: pa.Array) -> dict:
    """The lock's record of the merged rows: how many, and the first one's tokens at the seam."""
    r = int(merged[0])
    o, j, c = own.row(r), joint.row(r), alone.row(0)
    p = prompt[r].as_py()
    m = next(i for i in range(len(o)) if i >= len(j) or o[i] != j[i])  # the first prompt token the text lacks
    e = next((i for i in range(m + 1, len(j) + 1) if len(backend.decode(j[:i])) > len(p)), len(j))
    lo = max(m - 1, 0)
    piece = lambda ids: [backend.decode([t]) for t in ids]  # noqa: E731
    return {
        "kind": MERGE,
        "rows": int(merged.size),
        "of": int(len(own.lens)),
        "example": {
            "row_id": row_ids[r].as_py(),
            "prompt_end": p[-_EXAMPLE_CHARS:],
            "completion_start": completion[r].as_py()[:_EXAMPLE_CHARS],
            "joint": piece(j[lo:e]),
            "apart": piece(o[lo:] + c[:1]),
        },
    }


def _special_prefix(tok: Any) -> list[int]:
    """Ids the tokenizer's post-processor puts before a single text (a BOS, if any).

    We encode without special tokens and add this prefix ourselves; suffixes are not
    copied because eos is appended explicitly.
    """
    backend = tok.backend_tokenizer
    bare = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    return []


def _append_eos(rows: Rows, eos: int) -> Rows:
    """End every row with exactly one trained eos (none added if it already ends with one)."""
    ends = np.cumsum(rows.lens)
    has = np.zeros(len(ends), bool)
    nonempty = rows.lens > 0
    has[nonempty] = rows.ids[ends[nonempty] - 1] == eos
    at = ends[~has]
    ids = np.insert(rows.ids, at, np.int32(eos))
    labels = np.insert(rows.labels, at, np.int32(eos))
    return Rows(ids, labels, rows.lens + (~has))
