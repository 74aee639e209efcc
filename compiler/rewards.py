"""Declared GRPO rewards: their kinds, compile-time checks, scoring and drift check.

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
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ftc.compiler.recipe import schema
from ftc.compiler.reward_python import check_field, read_python_reward
from ftc.errors import FtcError, did_you_mean

ROOT = "train.grpo.rewards"

# The reward fragment of the recipe schema, read from recipe.schema.json: the one
# definition that validates a recipe, that `ftc schema` prints and that the checks
# below use. The kinds, the keys each kind takes and needs, and the defaults come
# from it, so a key added there is known here without a second copy.
REWARD_SCHEMA: dict[str, Any] = schema()["$defs"]["reward"]
_PROPS: dict[str, Any] = REWARD_SCHEMA["properties"]
KINDS: tuple[str, ...] = tuple(_PROPS["kind"]["enum"])
_DEFAULT: dict[str, Any] = {k: v["default"] for k, v in _PROPS.items() if "default" in v}
# kind -> (the keys it takes, in the schema's order, and the keys it needs).
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    rule["if"]["properties"]["kind"]["const"]: (tuple(rule["then"]["propertyNames"]["enum"]),
                                                tuple(rule["then"]["required"]))
    for rule in REWARD_SCHEMA["allOf"]
}
_EXAMPLES = {
    "regex": '{"kind": "regex", "pattern": "^<reasoning>[\\\\s\\\\S]+?</reasoning>"}',
    "answer": '{"kind": "answer", "pattern": "最终答案[:：]\\\\s*(-?[\\\\d,.]+)", "field": "answer_number", "compare": "numeric"}',
    "length": '{"kind": "length", "min": 200, "max": 1500, "ramp": 300}',
    "contains": '{"kind": "contains", "text": "</reasoning>"}',
    "python": '{"kind": "python", "function": "rewards.py:my_reward"}',
}


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


# --------------------------------------------------------------------------- compile-time check


def check_rewards(
    specs: Sequence[Mapping[str, Any]],
    *,
    fields: set[str],
    allow_python: bool,
    recipe_dir: Path,
    file: str | None = None,
) -> list[dict[str, Any]]:
    """Validate the declared rewards and return them resolved, for plan.lock.

    Every default is filled, so the lock says exactly what runs and ``ftc diff`` shows
    a changed default. Raises FtcError at the first problem, with its JSON path.
    """
    if not specs:
        raise FtcError("FTC120", file=file, path=ROOT, example=_EXAMPLES["answer"])
    rewards = [_resolve(i, spec, fields, allow_python, Path(recipe_dir), file) for i, spec in enumerate(specs)]
    return [r.to_dict() for r in _name_rewards(specs, rewards, file)]


def _resolve(i: int, spec: Mapping[str, Any], fields: set[str], allow_python: bool, recipe_dir: Path,
             file: str | None) -> Reward:
    at = f"{ROOT}[{i}]"
    if not isinstance(spec, Mapping):
        raise FtcError("FTC121", file=file, path=at, type=type(spec).__name__, example=_EXAMPLES["regex"])
    kind = spec.get("kind")
    if kind is None:
        raise FtcError("FTC122", file=file, path=f"{at}.kind", kinds=", ".join(KINDS))
    if kind not in KINDS:
        raise FtcError("FTC123", file=file, path=f"{at}.kind", kind=kind, kinds=", ".join(KINDS),
                       suggest=did_you_mean(str(kind), KINDS))
    allowed, required = _KEYS[kind]
    for key in spec:
        if key not in allowed:
            raise FtcError("FTC103", file=file, path=f"{at}.{key}", key=key, allowed=", ".join(allowed),
                           suggest=did_you_mean(key, allowed))
    for key in required:
        if key not in spec:
            raise FtcError("FTC124", file=file, path=at, kind=kind, key=key, example=_EXAMPLES[kind])
    _check_types(spec, at, file)

    name = spec.get("name", "")  # filled in by _name_rewards when not declared
    weight = float(spec.get("weight", _DEFAULT["weight"]))
    # The kind's own keys, each as declared or else the schema's default (None: it has none).
    own = {k: spec[k] if k in spec else _DEFAULT.get(k) for k in allowed if k not in ("kind", "name", "weight")}
    if kind == "regex":
        _compile(spec["pattern"], f"{at}.pattern", file)
        return RegexReward(name=name, weight=weight, **own)
    if kind == "answer":
        rx = _compile(spec["pattern"], f"{at}.pattern", file)
        if rx.groups < 1:
            raise FtcError("FTC126", file=file, path=f"{at}.pattern", pattern=spec["pattern"])
        check_field(spec["field"], fields, f"{at}.field", "answer reward", file)
        numeric = own["compare"] == "numeric"
        if not numeric and "tolerance" in spec:
            raise FtcError("FTC127", file=file, path=f"{at}.tolerance", compare=own["compare"])
        # remove's default depends on compare, so the schema states it in words only
        return AnswerReward(name=name, weight=weight, **{**own, "remove": spec.get("remove", "," if numeric else ""),
                                                         "tolerance": float(own["tolerance"]) if numeric else None})
    if kind == "length":
        lo, hi = own["min"], own["max"]
        if "min" not in spec and hi is None:
            raise FtcError("FTC125", file=file, path=at, example=_EXAMPLES["length"])
        if hi is not None and hi < lo:
            raise FtcError("FTC128", file=file, path=f"{at}.max", max=hi, min=lo)
        return LengthReward(name=name, weight=weight, **own)
    if kind == "contains":
        text = own["text"]
        return ContainsReward(name=name, weight=weight, **{**own, "text": (text,) if isinstance(text, str) else tuple(text)})
    fn = read_python_reward(spec["function"], recipe_dir, fields, allow_python, f"{at}.function", file)
    return PythonReward(name=name or fn.name, weight=weight, function=fn.function, sha256=fn.sha256, args=fn.args)


def _check_types(spec: Mapping[str, Any], at: str, file: str | None) -> None:
    """Types and ranges, by the same schema the recipe is validated with (one source of truth)."""
    import jsonschema  # only at compile time

    errors = sorted(jsonschema.Draft202012Validator(REWARD_SCHEMA).iter_errors(dict(spec)), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join([at, *map(str, err.path)])
        raise FtcError("FTC102", file=file, path=where, reason=err.message,
                       hint=_PROPS.get(str(err.path[0]) if err.path else "", {}).get("description", "see the reward kinds"))


def _compile(pattern: str, path: str, file: str | None) -> Any:
    """The pattern as RE2 runs it; Python ``re`` parses it first, for the position of a syntax error."""
    try:
        re.compile(pattern)
    except re.error as e:
        pos = e.pos if e.pos is not None else 0
        reason = (f"{e.msg} at position {pos} (checked with Python `re`; rewards then run on RE2)\n"
                  f"  regex: {pattern}\n         {' ' * pos}^")
        raise FtcError("FTC303", file=file, path=path, where="reward", reason=reason) from None
    try:
        return engine(pattern)
    except Exception as e:  # re2.error: bytes of RE2's own words, e.g. b"invalid perl operator: (?="
        said = e.args[0] if e.args else e
        raise FtcError("FTC166", file=file, path=path, pattern=pattern,
                       reason=said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)) from None


@lru_cache(maxsize=256)
def engine(pattern: str) -> Any:
    """The compiled RE2 pattern that scores (linear time; see the module docstring).

    Imported here, not at module level, so only code that scores or checks a regex needs it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print its parse error to stderr; FTC166 says it instead
    return re2.compile(pattern, options)


def _name_rewards(specs: Sequence[Mapping[str, Any]], rewards: list[Reward], file: str | None) -> list[Reward]:
    """Declared names must be unique (they label metrics); the rest get their kind,
    numbered in order when a kind repeats, never colliding with a declared name."""
    taken: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if "name" in spec:
            if spec["name"] in taken:
                raise FtcError("FTC129", file=file, path=f"{ROOT}[{i}].name", name=spec["name"],
                               other=f"{ROOT}[{taken[spec['name']]}]")
            taken[spec["name"]] = i
    out = []
    for i, (spec, reward) in enumerate(zip(specs, rewards)):
        if "name" not in spec:
            base = reward.name or reward.kind  # python: the function name
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken[name] = i
            reward = type(reward)(**{**asdict(reward), "name": name})
        out.append(reward)
    return out


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
