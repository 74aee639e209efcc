"""What a run tells while it trains: metrics.jsonl, a progress line, and a clean Ctrl-C.

Each piece is a transformers `TrainerCallback`, so the trainer file only lists them.
The callback classes are built inside `callbacks()` because TrainerCallback lives in
transformers, which the CLI must not import at start-up.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TokenCounter:
    """Tokens seen by training_step, counted from the batch the model actually got.

    real: non-padding tokens; slots: positions computed (real + padding); trained: tokens
    with a label. A padding-free packed batch has real == slots.

    Counts that need a sum over a GPU tensor stay on the GPU until they are read (at a log
    line, when the Trainer has synchronized anyway): reading them per micro-batch would make
    the CPU wait for the GPU every micro-step, and it would stop queueing work ahead.
    """

    def __init__(self) -> None:
        self._counts = {"real": 0, "slots": 0, "trained": 0}  # ints, or device tensors not yet read

    def add_counts(self, **counts: Any) -> None:
        for key, value in counts.items():
            self._counts[key] = self._counts[key] + value

    def add(self, batch: dict) -> None:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        self.add_counts(slots=ids.numel(), real=mask.sum() if mask is not None else ids.numel())
        if labels is not None:
            self.add_counts(trained=(labels != -100).sum())

    def _read(self, key: str) -> int:
        value = self._counts[key]
        if not isinstance(value, int):
            value = self._counts[key] = int(value)
        return value

    real = property(lambda self: self._read("real"))
    slots = property(lambda self: self._read("slots"))
    trained = property(lambda self: self._read("trained"))


@dataclass
class StopFlag:
    """Set by the first SIGINT; the trainer then saves a checkpoint and stops after the
    current optimizer step. A second SIGINT raises KeyboardInterrupt at once."""

    requested: bool = False
    step: int | None = None
    _previous: Any = field(default=None, repr=False)

    def install(self) -> None:
        """Only the main thread may set signal handlers; elsewhere Ctrl-C keeps its default."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True
        print("\nftc: interrupt: saving a checkpoint after this step (Ctrl-C again to abort now)", file=sys.stderr, flush=True)


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines past the checkpoint we resume from: those steps are trained again."""
    kept = [m for m in read_metrics(path) if m.get("step", 0) <= last_step]
    Path(path).write_text("".join(json.dumps(m) + "\n" for m in kept))


def callbacks(*, metrics_path: Path, counter: TokenCounter, stop: StopFlag, show_progress: bool = True,
              perf: dict | None = None, all_scalars: bool = False) -> list[Any]:
    """The run's callbacks: metrics.jsonl writer, progress display, Ctrl-C handling.

    `perf` is filled by the trainer once the model is built (flops_per_token, peak_flops,
    device); with it, lines and the progress bar carry the MFU estimate and GPU memory.
    `all_scalars` (GRPO) also copies every scalar the trainer logs: reward, reward_std,
    rewards/<name>/mean and /std, completions/*, kl, entropy, clip ratios, and their eval_
    forms."""
    from transformers import TrainerCallback

    perf = perf if perf is not None else {}

    def performance(tokens_per_second: float) -> dict:
        out: dict[str, Any] = {}
        if perf.get("flops_per_token") and perf.get("peak_flops"):
            out["mfu"] = round(tokens_per_second * perf["flops_per_token"] / perf["peak_flops"], 4)
        if perf.get("device") == "cuda":
            import torch

            out["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return out

    class MetricsWriter(TrainerCallback):
        """One JSON line per log: step, loss, learning_rate, grad_norm, tokens_per_second
        (real tokens since the previous line over wall time), epoch, and eval metrics."""

        def __init__(self) -> None:
            self.last_time = time.perf_counter()
            self.last_real = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time = time.perf_counter()
            self.last_real = counter.real

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the Trainer's end-of-training summary: run.json has it
                return
            row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            if all_scalars:
                row.update({k: v for k, v in logs.items()
                            if k not in ("epoch", "total_flos") and (v is None or isinstance(v, (int, float)))})
            if "loss" in logs:
                now = time.perf_counter()
                row["loss"] = logs["loss"]
                row["learning_rate"] = logs.get("learning_rate")
                row["grad_norm"] = logs.get("grad_norm")
                row["tokens_per_second"] = round((counter.real - self.last_real) / max(now - self.last_time, 1e-9), 1)
                row["tokens"] = counter.real
                row.update(performance(row["tokens_per_second"]))
                for key in ("mean_token_accuracy", "entropy"):
                    if key in logs:
                        row[key] = logs[key]
                self.last_time, self.last_real = now, counter.real
            if "eval_loss" in logs:
                row["eval_loss"] = logs["eval_loss"]
                row["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
            if len(row) > 2 and state.is_world_process_zero:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")

    class ProgressDisplay(TrainerCallback):
        """A tqdm bar over optimizer steps (it shows the ETA) with loss and tokens/s."""

        def __init__(self) -> None:
            self.bar = None
            self.start = 0.0
            self.start_real = 0

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
            self.start, self.start_real = time.perf_counter(), counter.real

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            post = {}
            if "loss" in logs:
                post["loss"] = f"{logs['loss']:.4f}"
            if "eval_loss" in logs:
                post["eval_loss"] = f"{logs['eval_loss']:.4f}"
            for key, short in (("rewards/accuracies", "acc"), ("rewards/margins", "margin"), ("kl", "kl")):  # preference
                if key in logs:
                    post[short] = f"{logs[key]:.3f}"
            elapsed = time.perf_counter() - self.start
            rate = (counter.real - self.start_real) / max(elapsed, 1e-9)
            post["tok/s"] = f"{rate:,.0f}"
            extra = performance(rate)
            if "mfu" in extra:
                post["mfu"] = f"{extra['mfu']:.1%}"
            if "gpu_mem_gib" in extra:
                post["mem"] = f"{extra['gpu_mem_gib']:.1f}GiB"
            self.bar.set_postfix(post, refresh=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    class StopOnSignal(TrainerCallback):
        """Turns the SIGINT flag into Trainer control: save this step, then stop."""

        def on_step_end(self, args, state, control, **kwargs):
            if stop.requested:
                stop.step = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    return [MetricsWriter(), *([ProgressDisplay()] if show_progress else []), StopOnSignal()]
