"""Eval loss and perplexity of a model on a token artifact (`ftc eval`, end of `ftc run`).

Token-weighted: the mean negative log-likelihood over every trained (label != -100) token
of the artifact, so the number does not depend on the batch size the way a mean of batch
means does. The LM head is applied only to those tokens, in chunks, so a 150k vocabulary
does not materialize (batch x length x vocab) logits.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

CHUNK = 1024  # tokens projected through the LM head at once


def _causal_lm(model: Any) -> Any:
    """The transformers CausalLM under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def _root_gathered(model: Any) -> Iterator[None]:
    """Under FSDP2 (`train.fsdp`), the parameters of the root group (the ones no wrapped unit holds:
    for a PEFT model accelerate wraps the layers, the embeddings and the LM head, and the final norm
    stays with the root) are gathered by the root's forward alone, which `token_logprobs` does not
    call: it runs the base model and the LM head apart (measured on the H200: "aten.mul.Tensor got
    mixed torch.Tensor and DTensor" in the final norm). The root group is gathered around the call;
    every other unit gathers itself in its own forward, as in training."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def token_logprobs(model: Any, batch: dict) -> tuple[Any, Any]:
    """Per-position log-probability of each next-token label, and the mask of scored positions.

    Shapes (batch, length - 1). Packed batches carry position_ids and no attention_mask, so
    transformers builds the block-diagonal mask; use_cache=False is what lets it do so.
    """
    with _root_gathered(model):
        return _token_logprobs(model, batch)


def _token_logprobs(model: Any, batch: dict) -> tuple[Any, Any]:
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


def preference_eval(model: Any, tokens: Path, *, method: str, settings: dict, pad_token_id: int, batch_size: int = 4) -> dict:
    """Preference accuracy and mean margin of `model` on a preference artifact, with TRL's implicit rewards.

    DPO / KTO: reward = beta x (log p_policy - log p_reference) summed over the completion, the
    reference being the model with its adapter disabled. SimPO / ORPO (reference-free): reward =
    beta x the mean log-probability per completion token. Pairs: accuracy = share of pairs whose
    chosen reward is higher, margin = mean(chosen - rejected). KTO's unpaired completions:
    accuracy = share whose reward sign matches the label, margin = mean reward of the desirable
    minus that of the undesirable."""
    import pyarrow.parquet as pq
    import torch

    table = pq.read_table(Path(tokens))
    beta, mean_per_token = float(settings["beta"]), method in ("orpo", "simpo")
    sides = ["chosen", "rejected"] if "chosen_ids" in table.column_names else ["completion"]
    prompts = table.column("prompt_ids").to_pylist()
    completions = {s: table.column(f"{s}_ids").to_pylist() for s in sides}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def logps(rows: list[tuple[list[int], list[int]]], reference: bool) -> torch.Tensor:
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
            mask[i, : len(p) + len(c)] = 1
        off = model.disable_adapter() if reference and hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with off:
            batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
            lp, scored = token_logprobs(model, batch)
        total = (lp * scored).sum(-1).double()
        return total / scored.sum(-1).clamp(min=1) if mean_per_token else total

    rewards: dict[str, list[float]] = {s: [] for s in sides}
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            for s in sides:
                rows = list(zip(prompts[start : start + batch_size], completions[s][start : start + batch_size]))
                r = logps(rows, reference=False)
                if not mean_per_token:
                    r = r - logps(rows, reference=True)
                rewards[s] += (beta * r).tolist()
    model.train(was_training)
    if len(sides) == 2:
        margins = [c - r for c, r in zip(rewards["chosen"], rewards["rejected"])]
        accuracy = sum(m > 0 for m in margins) / len(margins)
        return {"accuracy": accuracy, "mean_margin": sum(margins) / len(margins), "pairs": len(margins),
                "mean_reward_chosen": sum(rewards["chosen"]) / len(margins),
                "mean_reward_rejected": sum(rewards["rejected"]) / len(margins)}
    labels = table.column("label").to_pylist()
    good = [r for r, y in zip(rewards["completion"], labels) if y]
    bad = [r for r, y in zip(rewards["completion"], labels) if not y]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    accuracy = sum((r > 0) == y for r, y in zip(rewards["completion"], labels)) / len(labels)
    return {"accuracy": accuracy, "mean_margin": mean(good) - mean(bad), "completions": len(labels),
            "mean_reward_chosen": mean(good), "mean_reward_rejected": mean(bad)}
