"""Declared GRPO rewards: their kinds, scoring and drift check (the compile-time check of a
recipe's declarations is ``reward_check.py``).

The seed article wrote its rewards as Python functions, and one of them read a
``reference`` key that the completions never carry, so every score was silently 0.
Here a reward is a declaration under ``train.grpo.rewards``. Compile time checks the
regexes and the dataset fields the reward reads, and fills every default. The
resolved list goes into plan.lock. At run time the list becomes TRL reward functions
that are fed the dataset's own columns (``ftc.runtime.rewards_trl``, which imports this
module; the compiler never imports the runtime).

Kinds: ``regex`` (the completion matches), ``answer`` (a value extracted from the
completion equals a dataset field), ``length`` (a length window with linear ramps),
``contains`` (text present, or with ``negate`` absent) and ``python`` (a function in
a file beside the recipe, only with ``train.grpo.allow_python: true``; its sha256 is
locked, and a changed file is refused at run time).

Compiling never runs recipe Python: a ``python`` reward is checked by parsing its
file (``ast``), and only the runtime's ``build_reward_funcs`` executes it, after
``check_source`` found the bytes it runs are the ones whose hash the lock holds.

A recipe's pattern is untrusted input that runs on every generated completion, so it
runs on RE2 (``google-re2``), which matches in time linear in the text: Python's
backtracking ``re`` takes hours on ``^(a+)+$`` against ``'a'*34+'b'``, in ``ftc score`` and
in training alike. The price, refused at compile (FTC166) rather than discovered later:
no backreferences or look-around. Python ``re`` still parses a pattern first, for its
caret-under-the-mistake syntax errors.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ftc.compiler.recipe import schema
from ftc.errors import FtcError

ROOT = "train.grpo.rewards"

# The reward fragment of the recipe schema, read from recipe.schema.json: the one
# definition that validates a recipe, that `ftc schema` prints and that
# reward_check.py checks declarations with. The kinds, the keys each kind takes and
# needs, and the defaults come from it, so a key added there is known without a second copy.
REWARD_SCHEMA: dict[str, Any] = schema()["$defs"]["reward"]
_PROPS: dict[str, Any] = REWARD_SCHEMA["properties"]
KINDS: tuple[str, ...] = tuple(_PROPS["kind"]["enum"])


# --------------------------------------------------------------------------- resolved rewards


@dataclass(frozen=True)
class Reward:
    """A resolved reward: every default filled, as plan.lock records it."""

    kind: ClassVar[str] = ""
    name: str
    weight: float

    def fields(self) -> tuple[str, ...]:
        """Dataset fields this reward reads, so callers can check they are passed."""
        return ()

    def score(self, completion: str, row: Mapping[str, Any]) -> float | None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": self.kind, **d}


@dataclass(frozen=True)
class RegexReward(Reward):
    kind: ClassVar[str] = "regex"
    pattern: str
    fullmatch: bool

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        rx = engine(self.pattern)
        return 1.0 if (rx.fullmatch if self.fullmatch else rx.search)(completion) else 0.0


@dataclass(frozen=True)
class AnswerReward(Reward):
    """Why first group, not the whole match: the pattern needs context ("最终答案:") to
    find the answer, and the context is not part of the value."""

    kind: ClassVar[str] = "answer"
    pattern: str
    field: str
    compare: str
    remove: str
    occurrence: str
    tolerance: float | None = None

    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.tolerance is None:  # exact: tolerance means nothing, so the lock does not say it
            del d["tolerance"]
        return d

    def extract(self, completion: str) -> str | None:
        matches = list(engine(self.pattern).finditer(completion))
        if not matches:
            return None
        return (matches[0] if self.occurrence == "first" else matches[-1]).group(1)

    def score(self, completion: str, row: Mapping[str, Any]) -> float | None:
        """None (TRL: NaN, left out of the means) when the reference itself is unusable:
        that is a data problem, not a wrong answer, and must not read as one."""
        reference = row.get(self.field)
        if self.compare == "numeric":
            want = _number(reference, self.remove)
            if want is None:
                return None
            got = _number(self.extract(completion), self.remove)
            return 1.0 if got is not None and abs(got - want) <= (self.tolerance or 0.0) else 0.0
        if reference is None:
            return None
        got = self.extract(completion)
        return 1.0 if got is not None and _strip(got, self.remove) == _strip(str(reference), self.remove) else 0.0


@dataclass(frozen=True)
class LengthReward(Reward):
    """1.0 for min <= len <= max characters; outside, falls linearly to 0 over ``ramp``
    characters (ramp 0: a hard window). Characters, not tokens: no tokenizer needed,
    and the same number on every machine."""

    kind: ClassVar[str] = "length"
    min: int
    max: int | None
    ramp: int

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        n = len(completion)
        over = self.min - n if n < self.min else (n - self.max if self.max is not None and n > self.max else 0)
        if over <= 0:
            return 1.0
        return max(0.0, 1.0 - over / self.ramp) if self.ramp else 0.0


@dataclass(frozen=True)
class ContainsReward(Reward):
    kind: ClassVar[str] = "contains"
    text: tuple[str, ...]
    mode: str
    negate: bool
    ignore_case: bool

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        hay = completion.casefold() if self.ignore_case else completion
        found = [(t.casefold() if self.ignore_case else t) in hay for t in self.text]
        hit = any(found) if self.mode == "any" else all(found)
        return 1.0 if hit != self.negate else 0.0


@dataclass(frozen=True)
class PythonReward(Reward):
    """Scored by the runtime's ``build_reward_funcs`` after loading the hashed file, never by itself."""

    kind: ClassVar[str] = "python"
    function: str
    sha256: str
    args: tuple[str, ...]  # keyword arguments it is passed: dataset fields, and "prompt"

    def fields(self) -> tuple[str, ...]:
        return tuple(a for a in self.args if a != "prompt")

    @property
    def file(self) -> str:
        return self.function.rsplit(":", 1)[0]

    @property
    def attr(self) -> str:
        return self.function.rsplit(":", 1)[1]


_CLASSES: dict[str, type[Reward]] = {c.kind: c for c in (RegexReward, AnswerReward, LengthReward, ContainsReward, PythonReward)}


def reward_from_dict(d: Mapping[str, Any]) -> Reward:
    """The inverse of ``Reward.to_dict``: a lock entry back to its dataclass."""
    cls = _CLASSES[d["kind"]]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"}
    return cls(**kw)


@lru_cache(maxsize=256)
def engine(pattern: str) -> Any:
    """The compiled RE2 pattern that scores (linear time; see the module docstring).

    Imported here, not at module level, so only code that scores or checks a regex needs it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print its parse error to stderr; FTC166 says it instead
    return re2.compile(pattern, options)


# --------------------------------------------------------------------------- drift of python reward files


def check_drift(resolved: Sequence[Mapping[str, Any]], recipe_dir: Path) -> None:
    """Refuse to run when a python reward's file is not the one compiled into the lock:
    an input fingerprint like the data files' hashes, so the compiler owns it."""
    problems = []
    for r in (reward_from_dict(d) for d in resolved if d["kind"] == "python"):
        try:
            source: bytes | None = (Path(recipe_dir) / r.file).read_bytes()
        except OSError:
            source = None
        problem = _drift(r, source)
        if problem:
            problems.append(problem)
    if problems:
        raise _drift_error(problems)


def check_source(reward: PythonReward, source: bytes) -> None:
    """Refuse bytes of a python reward's file that the lock did not hash: the runtime
    reads the file once, checks those bytes here and runs them (what ran was checked)."""
    problem = _drift(reward, source)
    if problem:
        raise _drift_error([problem])


def _drift(r: PythonReward, source: bytes | None) -> str | None:
    now = None if source is None else hashlib.sha256(source).hexdigest()
    if now == r.sha256:
        return None
    state = "is missing" if now is None else f"changed (lock sha256 {r.sha256[:12]}, now {now[:12]})"
    return f"{r.file} {state}, used by reward {r.name!r}"


def _drift_error(problems: list[str]) -> FtcError:
    return FtcError("FTC507", path=ROOT, problems="; ".join(problems))


# --------------------------------------------------------------------------- scoring helpers


def _number(value: Any, remove: str) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        x = float(_strip(str(value), remove))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _strip(text: str, remove: str) -> str:
    return text.translate({ord(c): None for c in remove}).strip() if remove else text.strip()
