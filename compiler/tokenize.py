"""Tokenize rendered rows into ``input_ids`` + ``labels``: the last data stage of compile.

Every format is reduced to one question: which tokens does the model learn to
produce? Plain text and prompt/completion rows take a fast path: one batched Rust
encode (``encode_batch_fast``, no offsets) of the *whole* text, so BPE merges across
the prompt/completion boundary come out exactly as they will in training, then numpy
finds the boundary token from per-token byte lengths, chunk by chunk while the next
chunk encodes, so the stage costs little more than the Rust encode itself (see
BENCHMARKS.md). Chat rows go through the tokenizer's own chat template, whose
``{% generation %}`` markers say what the assistant wrote. Nothing is dropped
silently: overlong rows are truncated, dropped (with a counted reason) or rejected,
as the recipe says.

transformers (and matplotlib, for the histogram) are imported inside the functions
that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.errors import FtcError

IGNORE = -100  # the label value PyTorch's cross-entropy skips
FORMATS = ("text", "prompt_completion", "messages", "prompt")
OVERLONG = ("truncate", "drop", "error")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_FINGERPRINT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_CHAT_BATCH = 1024  # rows per apply_chat_template call: bounds memory, keeps Rust batches large
_CHUNKS, _MIN_CHUNK = 8, 1024  # plain-text encode pipeline: ~8 chunks, none tiny
_UNKNOWN_BYTES = 1 << 40  # a token of unknown byte length: no row sum can match with it


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class TokenizerInfo:
    """What the lock records about the tokenizer: enough to notice when it changes."""

    name: str  # as written in the recipe: hub id or path
    revision: str | None
    fingerprint: dict[str, str]  # file name (or "chat_template") -> sha256
    eos_token: str
    eos_token_id: int
    pad_token_id: int | None
    vocab_size: int  # len(tokenizer): the base vocabulary plus added tokens
    has_generation_markers: bool


def load_tokenizer(name_or_path: str, revision: str | None = None) -> tuple[Any, TokenizerInfo]:
    """Load a fast (Rust-backed) tokenizer from a local folder or the Hub cache.

    Offline use is the norm on training boxes, so every failure (no network,
    missing files, no tokenizer.json) becomes FTC600, whose hint says how to point
    ``model.tokenizer`` at a local folder instead of a stack trace.
    """
    local = Path(name_or_path).expanduser()
    try:
        from transformers import AutoTokenizer

        if local.is_dir():
            tok = AutoTokenizer.from_pretrained(str(local))
        else:
            tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot load", said once
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FtcError("FTC600", name=name_or_path, reason=reason) from err
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise FtcError("FTC600", name=name_or_path, reason="it has no fast tokenizer (tokenizer.json)")
    if tok.eos_token is None or tok.eos_token_id is None:
        raise FtcError("FTC600", name=name_or_path, reason="it defines no eos_token")
    files = _tokenizer_files(local if local.is_dir() else None, name_or_path, revision)
    info = TokenizerInfo(
        name=name_or_path,
        revision=revision,
        fingerprint=_fingerprint(files, _chat_template_text(tok)),
        eos_token=str(tok.eos_token),
        eos_token_id=int(tok.eos_token_id),
        pad_token_id=None if tok.pad_token_id is None else int(tok.pad_token_id),
        vocab_size=len(tok),
        has_generation_markers=_has_generation_markers(tok),
    )
    return tok, info


def _tokenizer_files(folder: Path | None, name: str, revision: str | None) -> dict[str, Path]:
    """The on-disk files the tokenizer came from (the local folder, or the Hub cache)."""
    found: dict[str, Path] = {}
    for fname in _FINGERPRINT_FILES:
        if folder is not None:
            path = folder / fname
        else:
            from transformers.utils import cached_file

            hit = cached_file(name, fname, revision=revision, _raise_exceptions_for_missing_entries=False)
            path = Path(hit) if hit else Path("/nonexistent")
        if path.is_file():
            found[fname] = path
    return found


def _fingerprint(files: dict[str, Path], chat_template: str | None) -> dict[str, str]:
    """sha256 of each file's bytes, plus of the chat template text.

    The template is hashed as text because it may live in tokenizer_config.json, in
    chat_template.jinja, or be overridden; what matters is the text actually used.
    """
    out = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(files.items())}
    if chat_template is not None:
        out["chat_template"] = hashlib.sha256(chat_template.encode("utf-8")).hexdigest()
    return out


def _chat_template_text(tok: Any) -> str | None:
    template = getattr(tok, "chat_template", None)
    if template is None or isinstance(template, str):
        return template
    return json.dumps(template, sort_keys=True, ensure_ascii=False)  # named templates


def _has_generation_markers(tok: Any) -> bool:
    text = _chat_template_text(tok)
    return bool(text and _GENERATION_RE.search(text))


# --------------------------------------------------------------------------- tokenizing


@dataclass(frozen=True)
class TokenizeResult:
    """The tokenized split: a table the trainer reads as is, and what happened to it."""

    table: pa.Table  # row_id, input_ids list<int32>, labels list<int32> (-100 = no loss), length int32
    stats: dict  # ints only, so the lock can hold them verbatim
    dropped: dict[str, int]  # reason -> rows


@dataclass
class _Rows:
    """Token rows as flat numpy arrays (one concatenation, plus per-row lengths).

    Every step below works on these whole arrays, never row by row, so the cost of
    a step is a few numpy passes regardless of how many rows there are.
    """

    ids: np.ndarray  # int32, all rows concatenated
    labels: np.ndarray  # int32, IGNORE where no loss
    lens: np.ndarray  # int64 per row

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lens)[:-1])).astype(np.int64) if len(self.lens) else self.lens

    def per_row_count(self, flags: np.ndarray) -> np.ndarray:
        """How many tokens of each row are flagged (empty rows give 0).

        ``reduceat`` over the non-empty rows' starts: each segment then runs to the
        next non-empty row, i.e. exactly over this row's tokens. (A cumsum with a
        bool-to-int64 cast was ~15x slower in the benchmark.)
        """
        out = np.zeros(len(self.lens), np.int64)
        full = self.lens > 0
        if full.any():
            out[full] = np.add.reduceat(flags.view(np.uint8), self.starts[full], dtype=np.int32)
        return out

    def position_in_row(self) -> np.ndarray:
        return np.arange(len(self.ids), dtype=np.int64) - np.repeat(self.starts, self.lens)

    def keep_rows(self, keep: np.ndarray) -> "_Rows":
        tokens = np.repeat(keep, self.lens)
        return _Rows(self.ids[tokens], self.labels[tokens], self.lens[keep])

    def truncate(self, n: int, *, keep_end: bool) -> "_Rows":
        """Rows cut to at most ``n`` tokens, keeping their start (or their end)."""
        new = np.minimum(self.lens, n)
        pos = self.position_in_row()
        tokens = pos >= np.repeat(self.lens - new, self.lens) if keep_end else pos < np.repeat(new, self.lens)
        return _Rows(self.ids[tokens], self.labels[tokens], new)


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
    and the eos (a token straddling the boundary counts as completion, the same rule
    transformers uses for assistant masks: the model must emit it to write the
    completion's first characters); ``messages`` trains what the chat template marks
    with ``{% generation %}``; ``prompt`` trains nothing (GRPO generates the rest).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if overlong not in OVERLONG:
        raise ValueError(f"unknown overlong policy {overlong!r}; expected one of {OVERLONG}")
    if max_seq_length < 1:
        raise ValueError("max_seq_length must be positive")
    row_ids = table.column("row_id").combine_chunks() if table.num_rows else pa.array([], pa.string())
    eos = int(tokenizer.eos_token_id)

    if fmt == "text":
        rows = _encode_plain(tokenizer, _strings(table, "text", row_ids), None, train_prompt=True, eos=eos)
    elif fmt == "prompt_completion" and not _is_chat(table.schema.field("prompt").type):
        prompt = _strings(table, "prompt", row_ids)
        completion = _strings(table, "completion", row_ids)
        rows = _encode_plain(tokenizer, prompt, completion, train_prompt=not completion_only_loss, eos=eos)
    elif fmt == "prompt_completion":
        completion = _strings(table, "completion", row_ids).to_pylist()
        chats = [
            list(p) + [{"role": "assistant", "content": c}]
            for p, c in zip(table.column("prompt").to_pylist(), completion)
        ]
        rows = _encode_chat(tokenizer, chats, row_ids, masked=completion_only_loss, what="completion_only_loss")
    elif fmt == "messages":
        chats = table.column("messages").to_pylist()
        rows = _encode_chat(tokenizer, chats, row_ids, masked=assistant_only_loss, what="assistant_only_loss")
    else:  # prompt
        if _is_chat(table.schema.field("prompt").type):
            rows = _encode_chat(tokenizer, table.column("prompt").to_pylist(), row_ids, generation_prompt=True)
        else:
            rows = _encode_plain(tokenizer, _strings(table, "prompt", row_ids), None, train_prompt=True, eos=None)
        rows.labels = np.full_like(rows.ids, IGNORE)

    return _finish(rows, row_ids, fmt, max_seq_length=max_seq_length, overlong=overlong)


def _is_chat(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def _strings(table: pa.Table, column: str, row_ids: pa.Array) -> pa.Array:
    """A string column as one array; a null is an upstream bug the user must see."""
    arr = table.column(column).combine_chunks() if table.num_rows else pa.array([], pa.string())
    if arr.null_count:
        bad = row_ids.filter(arr.is_null())[0].as_py()
        raise FtcError(
            "FTC601",
            reason=f"row {bad}: {column} is null ({arr.null_count} rows)",
            hint="filter empty rows in the recipe (filter/clean) before tokenization",
        )
    return arr.cast(pa.string())


# -- plain text: the fast path ------------------------------------------------


def _encode_plain(
    tok: Any, first: pa.Array, second: pa.Array | None, *, train_prompt: bool, eos: int | None
) -> _Rows:
    """Encode ``first + second`` as one text; mask ``first`` unless ``train_prompt``.

    The boundary comes from byte arithmetic, not offsets: for byte-level BPE every
    token stands for a known number of bytes, so a cumulative sum over the ids gives
    each token's end byte, and one ``searchsorted`` finds, per row, the first token
    ending past the prompt's bytes. Rows whose byte sums do not add up to the text
    (a normalizer changed it) are re-encoded with offsets, so the fast path is never
    trusted blindly; tokenizers that are not byte-level use offsets throughout.
    """
    backend = tok.backend_tokenizer
    full = first if second is None else pc.binary_join_element_wise(first, second, "")
    split = second is not None and not train_prompt
    byte_table = _token_bytes(tok) if split else None
    if split:
        full_bytes = pc.binary_length(full).to_numpy(zero_copy_only=False)
        cut_bytes = pc.binary_length(first).to_numpy(zero_copy_only=False)
        cut_chars = pc.utf8_length(first).to_numpy(zero_copy_only=False)
    by_offsets = split and byte_table is None
    prefix = _special_prefix(tok)
    parts: list[_Rows] = []
    for lo, ids, lens, n_prompt in _encode_chunks(backend, full, cut_chars if by_offsets else None):
        labels = ids.copy()
        if split:
            hi = lo + len(lens)
            if n_prompt is None:
                n_prompt, ok = _prompt_token_counts(ids, lens, byte_table, full_bytes[lo:hi], cut_bytes[lo:hi])
                if not ok.all():
                    bad = np.flatnonzero(~ok)
                    redo = backend.encode_batch(full.take(lo + bad).to_pylist(), add_special_tokens=False)
                    n_prompt[bad] = _prompt_token_counts_from_offsets(redo, cut_chars[lo + bad])
            labels[np.arange(len(ids)) < np.repeat(np.cumsum(lens) - lens + n_prompt, lens)] = IGNORE
        rows = _Rows(ids, labels, lens)
        if prefix:
            rows = _prepend(rows, prefix)
        parts.append(_append_eos(rows, eos) if eos is not None else rows)
    if not parts:
        return _Rows(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64))
    return _Rows(*(np.concatenate([getattr(r, f) for r in parts]) for f in ("ids", "labels", "lens")))


def _encode_chunks(
    backend: Any, texts: pa.Array, cut_chars: np.ndarray | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(first_row, ids, lens, n_prompt)`` per chunk, flattened into numpy.

    The Rust encode releases the GIL and already uses every core, while copying ids
    out of the Encoding objects is serial Python. A one-thread pipeline lets chunk
    k+1 encode while the caller copies and labels chunk k, so that serial work
    overlaps the encode instead of adding to it. With ``cut_chars`` the encode tracks
    offsets and ``n_prompt`` counts each row's prompt tokens from them; else it is None.
    """
    n = len(texts)
    step = max(_MIN_CHUNK, -(-n // _CHUNKS))
    encode_batch = backend.encode_batch if cut_chars is not None else backend.encode_batch_fast

    def encode(lo: int) -> list:
        return encode_batch(texts.slice(lo, step).to_pylist(), add_special_tokens=False)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftc-encode") as pool:
        pending = pool.submit(encode, 0) if n else None
        for lo in range(0, n, step):
            encodings = pending.result()
            if lo + step < n:
                pending = pool.submit(encode, lo + step)
            n_prompt = None
            if cut_chars is not None:
                n_prompt = _prompt_token_counts_from_offsets(encodings, cut_chars[lo : lo + len(encodings)])
            rows = [np.array(e.ids, dtype=np.int32) for e in encodings]  # fastest copy out measured
            del encodings
            lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
            ids = np.concatenate(rows) if rows else np.zeros(0, np.int32)
            yield lo, ids, lens, n_prompt


def _prompt_token_counts(
    ids: np.ndarray, lens: np.ndarray, byte_table: np.ndarray, full_bytes: np.ndarray, cut_bytes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many leading tokens end within the prompt's bytes, and whether
    the row's token bytes add up to its text (else the count is not to be trusted)."""
    cum0 = np.concatenate(([0], np.cumsum(byte_table[ids])))
    ends = np.cumsum(lens)
    starts = ends - lens
    ok = (cum0[ends] - cum0[starts]) == full_bytes
    first_trained = np.searchsorted(cum0[1:], cum0[starts] + cut_bytes, side="right")
    return np.clip(first_trained, starts, ends) - starts, ok


def _prompt_token_counts_from_offsets(encodings: list, cut_chars: np.ndarray) -> np.ndarray:
    """The slow, always-right count: tokens before the first whose char span ends past the prompt."""
    out = np.empty(len(encodings), np.int64)
    for k, (enc, cut) in enumerate(zip(encodings, cut_chars.tolist())):
        out[k] = next((t for t, (_, end) in enumerate(enc.offsets) if end > cut), len(enc.ids))
    return out


_BYTES_CACHE: "weakref.WeakKeyDictionary[Any, np.ndarray | None]" = weakref.WeakKeyDictionary()


def _token_bytes(tok: Any) -> np.ndarray | None:
    """How many bytes of text each token id stands for; None unless byte-level BPE.

    Ids whose length is unknown get a huge value, so any row containing one fails
    the byte-sum check and takes the offset fallback.
    """
    if tok in _BYTES_CACHE:
        return _BYTES_CACHE[tok]
    backend = tok.backend_tokenizer
    table = None
    if type(backend.decoder).__name__ == "ByteLevel":
        alphabet = set(_bytes_to_unicode())
        vocab = backend.get_vocab(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        table = np.full(max(vocab.values()) + 1, _UNKNOWN_BYTES, np.int64)
        for token, i in vocab.items():
            if i in added:
                table[i] = len(added[i].content.encode("utf-8"))
            elif alphabet.issuperset(token):
                table[i] = len(token)  # one alphabet char per byte
    _BYTES_CACHE[tok] = table
    return table


def _bytes_to_unicode() -> str:
    """GPT-2's byte-level alphabet: the 256 characters that stand for the 256 bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return "".join(chr(b) for b in keep) + "".join(chr(256 + n) for n in range(len(extra)))


def _special_prefix(tok: Any) -> list[int]:
    """Ids the tokenizer's post-processor puts before a single text (a BOS, if any).

    We encode without special tokens (so byte sums match the text) and add this
    prefix ourselves; suffixes are not copied because eos is appended explicitly.
    """
    backend = tok.backend_tokenizer
    bare = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    return []


def _prepend(rows: _Rows, prefix: list[int]) -> _Rows:
    """Put ``prefix`` before every row; its labels are masked (nothing predicts a BOS)."""
    n = len(rows.lens)
    at = np.repeat(rows.starts, len(prefix))
    ids = np.insert(rows.ids, at, np.tile(np.asarray(prefix, np.int32), n))
    labels = np.insert(rows.labels, at, np.full(n * len(prefix), IGNORE, np.int32))
    return _Rows(ids, labels, rows.lens + len(prefix))


def _append_eos(rows: _Rows, eos: int) -> _Rows:
    """End every row with exactly one trained eos (none added if it already ends with one)."""
    ends = np.cumsum(rows.lens)
    has = np.zeros(len(ends), bool)
    nonempty = rows.lens > 0
    has[nonempty] = rows.ids[ends[nonempty] - 1] == eos
    at = ends[~has]
    ids = np.insert(rows.ids, at, np.int32(eos))
    labels = np.insert(rows.labels, at, np.int32(eos))
    return _Rows(ids, labels, rows.lens + (~has))


# -- chat: the template decides ------------------------------------------------


def _encode_chat(
    tok: Any,
    chats: list[list[dict]],
    row_ids: pa.Array,
    *,
    masked: bool = False,
    what: str = "",
    generation_prompt: bool = False,
) -> _Rows:
    """Apply the chat template (batched); train what ``{% generation %}`` marks, if ``masked``."""
    if masked and not _has_generation_markers(tok):
        raise FtcError(
            "FTC601",
            reason=f"{what} needs a chat template with {{% generation %}} markers around assistant turns, "
            f"and the template of {tok.name_or_path!r} has none",
            hint=f"use a chat template that marks assistant turns with {{% generation %}}...{{% endgeneration %}}, "
            f"or train on all tokens: --set train.{what}=false",
        )
    id_lists: list[list[int]] = []
    mask_lists: list[list[int]] = []
    for lo in range(0, len(chats), _CHAT_BATCH):
        batch = chats[lo : lo + _CHAT_BATCH]
        try:
            out = tok.apply_chat_template(
                batch,
                tokenize=True,
                return_dict=True,
                add_generation_prompt=generation_prompt,
                return_assistant_tokens_mask=masked,
            )
        except Exception as err:  # noqa: BLE001 - name the first row that fails
            bad = _first_failing_chat(tok, batch, generation_prompt)
            rid = row_ids[lo + bad].as_py() if bad is not None else "?"
            raise FtcError(
                "FTC601",
                reason=f"row {rid}: the chat template failed: {err}",
                hint="check the row's roles and contents against the model's chat template",
            ) from err
        id_lists.extend(out["input_ids"])
        if masked:
            mask_lists.extend(out["assistant_masks"])
    lens = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(lens.sum()))
    if masked:
        mask = np.fromiter(chain.from_iterable(mask_lists), dtype=bool, count=len(ids))
        labels = np.where(mask, ids, np.int32(IGNORE)).astype(np.int32)
    else:
        labels = ids.copy()
    return _Rows(ids, labels, lens)


def _first_failing_chat(tok: Any, batch: list, generation_prompt: bool) -> int | None:
    for k, chat in enumerate(batch):
        try:
            tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception:  # noqa: BLE001
            return k
    return None


# -- overlong rows, empty rows, the table ---------------------------------------


def _finish(rows: _Rows, row_ids: pa.Array, fmt: str, *, max_seq_length: int, overlong: str) -> TokenizeResult:
    """Apply the overlong policy, drop rows with nothing to learn, build the Arrow table."""
    dropped: dict[str, int] = {}
    long = rows.lens > max_seq_length
    n_long = int(long.sum())
    if n_long and overlong == "error":
        first = int(np.flatnonzero(long)[0])
        raise FtcError(
            "FTC601",
            reason=f"row {row_ids[first].as_py()} is {int(rows.lens[first])} tokens, longer than "
            f"max_seq_length {max_seq_length} ({n_long} rows are)",
            hint="raise model.max_seq_length, or set train.overlong to \"truncate\" or \"drop\"",
        )
    kept = np.arange(len(rows.lens))  # original row numbers still present
    trained_before = rows.per_row_count(rows.labels != IGNORE)
    if n_long and overlong == "drop":
        _count(dropped, f"longer than max_seq_length ({max_seq_length})", n_long)
        rows, kept = rows.keep_rows(~long), kept[~long]
    elif n_long:  # a prompt keeps its end: the generation prompt the model continues from
        rows = rows.truncate(max_seq_length, keep_end=fmt == "prompt")
    trained = rows.per_row_count(rows.labels != IGNORE) if n_long else trained_before[kept]
    if fmt != "prompt" and not trained.all():
        empty = trained == 0
        lost = empty & (trained_before[kept] > 0)
        _count(dropped, f"no trained tokens left after truncation to {max_seq_length}", int(lost.sum()))
        _count(dropped, "no trained tokens (e.g. no assistant turn)", int((empty & ~lost).sum()))
        rows, kept, trained = rows.keep_rows(~empty), kept[~empty], trained[~empty]
    truncated = int(long[kept].sum()) if overlong == "truncate" else 0
    offsets = pa.array(np.concatenate(([0], np.cumsum(rows.lens))).astype(np.int32))
    out = pa.table(
        {
            "row_id": row_ids if len(kept) == len(row_ids) else row_ids.take(pa.array(kept)),
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(rows.ids, pa.int32())),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(rows.labels, pa.int32())),
            "length": pa.array(rows.lens.astype(np.int32)),
        }
    )
    stats = _stats(rows.lens, int(trained.sum()), truncated, sum(dropped.values()))
    return TokenizeResult(table=out, stats=stats, dropped=dropped)


def _count(dropped: dict[str, int], reason: str, n: int) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + n


def _stats(lens: np.ndarray, supervised: int, truncated: int, dropped: int) -> dict:
    """Plain ints only. Percentiles are actual row lengths (inverted CDF): p90 = the
    length that 90% of rows do not exceed, the number to choose max_seq_length by."""

    def pct(q: float) -> int:
        return int(np.percentile(lens, q, method="inverted_cdf")) if len(lens) else 0

    return {
        "rows": int(len(lens)),
        "tokens": int(lens.sum()),
        "supervised_tokens": supervised,
        "length_p50": pct(50),
        "length_p90": pct(90),
        "length_p99": pct(99),
        "length_max": int(lens.max()) if len(lens) else 0,
        "truncated": truncated,
        "dropped": dropped,
    }


# --------------------------------------------------------------------------- views


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


def length_histogram_png(lengths_by_split: dict[str, Sequence[int]], path: str | Path, max_seq_length: int) -> None:
    """Token-length histogram per split, with the max_seq_length cut drawn in.

    Uses matplotlib's object API on an Agg canvas (no pyplot global state, no
    display), and fixed bins, so the same lengths give the same picture.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = max([max_seq_length, *(int(max(v)) for v in lengths_by_split.values() if len(v))])
    bins = np.linspace(0, top, 51)
    fig = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for split in sorted(lengths_by_split):
        values = np.asarray(lengths_by_split[split])
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{split} ({len(values):,} rows)")
    ax.axvline(max_seq_length, color="crimson", linestyle="--", linewidth=1, label=f"max_seq_length {max_seq_length}")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path), format="png", metadata={"Software": None})


def data_report_md(
    stats_by_split: dict,
    tokenizer_info: TokenizerInfo,
    packing: dict | None,
    *,
    dropped_by_split: dict[str, dict[str, int]] | None = None,
    histogram: str | None = None,
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
