"""Chat rows -> ids + labels through the tokenizer's own chat template: the chat half of
``encode`` (plain text and prompt/completion text stay there).

The template decides everything: the ids are what ``apply_chat_template`` gives (batched, with
the rows' ``tools``), and with ``masked`` the labels are what its ``{% generation %}`` markers
say the assistant wrote (a template without them is refused, FTC606). A row the template
fails on is named (FTC607). ``check_chat_prompts`` counts the rows whose start is not what
inference feeds the model (the prompt turns with the generation prompt): the lock's
``chat_prompt_differs`` warning.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from ftc.compiler import chat_tools
from ftc.compiler.rows import IGNORE, Rows
from ftc.compiler.tokenizer import has_generation_markers
from ftc.errors import FtcError

CHAT_PROMPT = "chat_prompt_differs"  # the warning kind, as the lock records it
_CHAT_BATCH = 1024  # rows per apply_chat_template call: bounds memory, keeps Rust batches large


def chat_prompt(turns: list[dict] | None) -> list[dict] | None:
    """The prompt of a chat row at inference: the turns before its last assistant turn."""
    last = max((k for k, m in enumerate(turns or []) if m["role"] == "assistant"), default=0)
    return list(turns[:last]) if last else None


def encode_chat(
    tok: Any,
    chats: list[list[dict]],
    row_ids: pa.Array,
    *,
    masked: bool = False,
    what: str = "",
    generation_prompt: bool = False,
    tools: list[list[dict] | None] | None = None,
) -> Rows:
    """Apply the chat template (batched); train what ``{% generation %}`` marks, if ``masked``.

    ``tools`` (one list per row, or None) go to the template as ``tools=``; the template
    takes one per call, so rows are batched by their tools and put back in row order.
    """
    if masked and not has_generation_markers(tok):
        raise FtcError("FTC606", setting=what, tokenizer=tok.name_or_path)
    id_lists: list[list[int]] = [[] for _ in chats]
    mask_lists: list[list[int]] = [[] for _ in chats]
    for row_tools, rows in chat_tools.groups(tools, len(chats)):
        for lo in range(0, len(rows), _CHAT_BATCH):
            at = rows[lo : lo + _CHAT_BATCH]
            batch = [chats[i] for i in at]
            try:
                out = tok.apply_chat_template(
                    batch,
                    tools=row_tools,
                    tokenize=True,
                    return_dict=True,
                    add_generation_prompt=generation_prompt,
                    return_assistant_tokens_mask=masked,
                )
            except Exception as err:  # noqa: BLE001 - name the first row that fails
                bad = _first_failing_chat(tok, batch, generation_prompt, row_tools)
                rid = row_ids[at[bad]].as_py() if bad is not None else "?"
                raise FtcError("FTC607", row=rid, reason=err) from err
            for k, i in enumerate(at):
                id_lists[i] = out["input_ids"][k]
                if masked:
                    mask_lists[i] = out["assistant_masks"][k]
    lens = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(lens.sum()))
    if masked:
        mask = np.fromiter(chain.from_iterable(mask_lists), dtype=bool, count=len(ids))
        labels = np.where(mask, ids, np.int32(IGNORE)).astype(np.int32)
    else:
        labels = ids.copy()
    return Rows(ids, labels, lens)


def _first_failing_chat(tok: Any, batch: list, generation_prompt: bool, tools: list[dict] | None = None) -> int | None:
    for k, chat in enumerate(batch):
        try:
            tok.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception:  # noqa: BLE001
            return k
    return None


def check_chat_prompts(tok: Any, rows: Rows, prompts: list[list[dict] | None], row_ids: pa.Array,
                        tools: list[list[dict] | None] | None = None) -> dict | None:
    """Count the chat rows that do not start with ``encode_prompt`` of their prompt turns.

    Inference renders the turns before the reply with the generation prompt; that is
    the start of the training row only if the template renders an assistant turn's
    header exactly as its generation prompt (ChatML does; a template that adds, say,
    an empty think block to the generation prompt does not).
    """
    todo = np.array([i for i, p in enumerate(prompts) if p], np.int64)
    if not todo.size:
        return None
    asked = encode_chat(tok, [prompts[i] for i in todo], row_ids.take(pa.array(todo)), generation_prompt=True,
                         tools=None if tools is None else [tools[i] for i in todo])
    trained = rows.select(todo)
    differ = np.flatnonzero(~trained.starts_with(asked))
    if not differ.size:
        return None
    d = int(differ[0])
    t, q = trained.row(d), asked.row(d)
    m = next(i for i in range(len(q)) if i >= len(t) or q[i] != t[i])
    piece = lambda ids: [tok.backend_tokenizer.decode([x]) for x in ids]  # noqa: E731
    return {
        "kind": CHAT_PROMPT,
        "rows": int(differ.size),
        "of": int(todo.size),
        "example": {"row_id": row_ids[int(todo[d])].as_py(), "training": piece(t[max(m - 2, 0) : m + 3]),
                    "inference": piece(q[max(m - 2, 0) : m + 3])},
    }
