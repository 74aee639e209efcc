"""Progress and time per compile stage: what a user watching a long compile needs to see.

``Clock`` measures how long each stage took (the summary prints it; the lock never holds a
time, so it stays the same bytes). ``Progress`` draws one line on stderr, with a rate and an
ETA, for a stage that works through a known total (files' bytes, rows, packs); it draws
only when asked (a tty, or ``--progress``) and the total is large enough to wait for.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

MIN_ROWS = 20_000  # below this a stage is over before a line would help
MIN_BYTES = 32 << 20
_EVERY = 0.25  # seconds between redraws


class Clock:
    """Seconds spent per stage, in the order stages first ran, and which stages were reused."""

    def __init__(self, show: bool = False):
        self.show = show
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def progress(self, label: str, total: int, unit: str = "rows") -> "Progress":
        big = total >= (MIN_BYTES if unit == "bytes" else MIN_ROWS)
        return Progress(label, total, unit, enabled=self.show and big)


class Progress:
    """``\\r  label: done/total unit  (rate/s, ETA 12s)`` on stderr, at most four times a second."""

    def __init__(self, label: str, total: int, unit: str = "rows", *, enabled: bool = True):
        self.label, self.total, self.unit, self.enabled = label, max(total, 0), unit, enabled
        self.done, self.t0, self._last = 0, time.perf_counter(), 0.0
        self.note = ""

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        self.note = note or self.note
        now = time.perf_counter()
        if self.enabled and (now - self._last >= _EVERY or self.done >= self.total):
            self._last = now
            print("\r" + self.line(now), end="", file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "ETA -" if left == float("inf") else f"ETA {_seconds(left)}"
        note = f", {self.note}" if self.note else ""
        return (f"  {self.label}: {_amount(self.done, self.unit)}/{_amount(self.total, self.unit)}{note}  "
                f"({_amount(rate, self.unit)}/s, {eta})  ")

    def close(self) -> None:
        if self.enabled:
            print("\r" + self.line() + "\n", end="", file=sys.stderr, flush=True)


def _amount(n: float, unit: str) -> str:
    if unit == "bytes":
        return f"{n / (1 << 20):,.0f} MiB"
    return f"{n:,.0f} {unit}"


def _seconds(s: float) -> str:
    return f"{s:.0f}s" if s < 90 else f"{s / 60:.0f}m{s % 60:02.0f}s"
