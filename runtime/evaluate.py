"""Eval loss and perplexity of a model on a token artifact (`ftc eval`, end of `ftc run`).

Token-weighted: the mean negative log-likelihood over every trained (label != -100) token
of the artifact, so the number does not depend on the batch size the way a mean of batch
means does. The LM head is applied only to those tokens, in chunks, so a 150k vocabulary
does not materialize (batch x length x vocab) logits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

CHUNK = 1024  # tokens projected through the LM head at once


def _causal_lm(model: Any) -> Any:
    """The transformers CausalLM under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_logprobs(model: Any, batch: dict) -> tuple[Any, Any]:
    """Per-position log-probability of each next-token label, and the mask of scored positions.

    Shapes (batch, length - 1). Packed batches carry position_ids and no attention_mask, so
    transformers builds the block-diagonal mask; use_cache=False is what lets it do so.
    """
    import torch

    lm = _causal_lm(model)
    device = lm.get_input_embeddings().weight.device
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = lm.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:].to(hidden.device)
    mask = labels != -100
    head = lm.get_output_embeddings()
    out = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device)
    picked_hidden, picked_labels = hidden[mask], labels[mask]
    parts = []
    for start in range(0, picked_labels.numel(), CHUNK):
        logits = head(picked_hidden[start : start + CHUNK]).float()
        parts.append(torch.log_softmax(logits, -1).gather(-1, picked_labels[start : start + CHUNK, None])[:, 0])
    if parts:
        out[mask] = torch.cat(parts)
    return out, mask


def eval_loss(model: Any, tokens: Path, *, pad_token_id: int, batch_size: int = 4) -> dict:
    """{"loss", "perplexity", "tokens", "sequences"} of `model` on the artifact `tokens`."""
    import torch

    from ftc.runtime.token_data import collator, read_tokens, to_items

    table = read_tokens(Path(tokens))
    items = to_items(table).to_pylist()
    collate = collator(pad_token_id, packed="seq_lengths" in items[0])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size])
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            logprobs, mask = token_logprobs(model, batch)
            total -= float(logprobs[mask].double().sum())
            count += int(mask.sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "sequences": len(items)}
