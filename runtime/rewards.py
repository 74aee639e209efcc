"""Declared GRPO rewards: checked when the recipe compiles, called by TRL when it trains.

The seed article wrote its rewards as Python functions, and one of them read a
``reference`` key that the completions never carry, so every score was silently 0.
Here a reward is a declaration under ``train.grpo.rewards``. Compile time checks the
regexes and the dataset fields the reward reads, and fills every default. The
resolved list goes into plan.lock. At run time the list becomes TRL reward functions
that are fed the dataset's own columns.

Kinds: ``regex`` (the completion matches), ``answer`` (a value extracted from the
completion equals a dataset field), ``length`` (a length window with linear ramps),
``contains`` (text present, or with ``negate`` absent) and ``python`` (a function in
a file beside the recipe, only with ``train.grpo.allow_python: true``; its sha256 is
locked, and a changed file is refused at run time).

Compiling never runs recipe Python: a ``python`` reward is checked by parsing its
file (``ast``), and only ``build_reward_funcs`` executes it, after its hash matched.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar, Mapping, Sequence

from ftc.errors import FtcError, did_you_mean

ROOT = "train.grpo.rewards"
KINDS = ("regex", "answer", "length", "contains", "python")
NAME_RE = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
FUNCTION_RE = re.compile(r"^(?P<file>[^:]+\.py):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")

_COMMON = {
    "kind": {"enum": list(KINDS)},
    "name": {
        "type": "string",
        "pattern": NAME_RE,
        "description": "Label in logs (rewards/<name>/mean). Default: the kind (python: the function name), "
        "numbered _2, _3 when repeated.",
    },
    "weight": {
        "type": "number",
        "default": 1.0,
        "description": "Multiplies this reward in the total (GRPOConfig.reward_weights); 0 logs it without training on it.",
    },
}
_PROPS = {
    "pattern": {"type": "string", "minLength": 1, "description": "Python `re` regex (escape backslashes in JSON)."},
    "fullmatch": {"type": "boolean", "default": False, "description": "regex: the whole completion must match (re.fullmatch) instead of re.search."},
    "field": {"type": "string", "description": "answer: the dataset field holding the reference answer, e.g. answer_number."},
    "compare": {"enum": ["exact", "numeric"], "default": "exact", "description": "answer: string equality after strip, or numbers within tolerance."},
    "tolerance": {"type": "number", "minimum": 0, "default": 1e-6, "description": "answer (numeric): |extracted - reference| <= tolerance."},
    "remove": {"type": "string", "description": "answer: characters deleted from both sides before comparing (numeric default \",\", exact default \"\")."},
    "occurrence": {"enum": ["first", "last"], "default": "first", "description": "answer: which match of pattern to use when several match."},
    "min": {"type": "integer", "minimum": 0, "default": 0, "description": "length: fewest characters that still score 1.0."},
    "max": {"type": "integer", "minimum": 1, "description": "length: most characters that still score 1.0 (default: no upper bound)."},
    "ramp": {"type": "integer", "minimum": 0, "default": 0, "description": "length: characters over which the score falls linearly from 1 to 0 outside [min, max]; 0 = hard limits."},
    "text": {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ],
        "description": "contains: the text (or texts) to look for.",
    },
    "mode": {"enum": ["any", "all"], "default": "any", "description": "contains: any or all of the texts must be present."},
    "negate": {"type": "boolean", "default": False, "description": "contains: score 1.0 when the texts are NOT present."},
    "ignore_case": {"type": "boolean", "default": False, "description": "contains: case-insensitive search."},
    "function": {
        "type": "string",
        "description": "python: \"FILE.py:function\", the file relative to the recipe; the function is called as "
        "fn(completion_text, **fields_it_names) -> float | None. Needs train.grpo.allow_python: true.",
    },
}
# Which keys each kind takes, and which of them it needs.
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "regex": (("pattern", "fullmatch"), ("pattern",)),
    "answer": (("pattern", "field", "compare", "tolerance", "remove", "occurrence"), ("pattern", "field")),
    "length": (("min", "max", "ramp"), ()),
    "contains": (("text", "mode", "negate", "ignore_case"), ("text",)),
    "python": (("function",), ("function",)),
}
_EXAMPLES = {
    "regex": '{"kind": "regex", "pattern": "^<reasoning>[\\\\s\\\\S]+?</reasoning>"}',
    "answer": '{"kind": "answer", "pattern": "最终答案[:：]\\\\s*(-?[\\\\d,.]+)", "field": "answer_number", "compare": "numeric"}',
    "length": '{"kind": "length", "min": 200, "max": 1500, "ramp": 300}',
    "contains": '{"kind": "contains", "text": "</reasoning>"}',
    "python": '{"kind": "python", "function": "rewards.py:my_reward"}',
}

REWARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "GRPO reward",
    "description": "One declared reward; each scores a completion in [0, 1] (python: any float or null).",
    "type": "object",
    "additionalProperties": False,
    "required": ["kind"],
    "properties": {**_COMMON, **_PROPS},
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"required": list(required), "propertyNames": {"enum": ["kind", "name", "weight", *keys]}},
        }
        for kind, (keys, required) in _KEYS.items()
    ],
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
        match = re.fullmatch if self.fullmatch else re.search
        return 1.0 if match(self.pattern, completion) else 0.0


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
        matches = list(re.finditer(self.pattern, completion))
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
    """Scored by ``build_reward_funcs`` after loading the hashed file, never by itself."""

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
        raise FtcError("FTC105", file=file, path=ROOT, reason="GRPO needs at least one reward",
                       hint=f"declare one, e.g. {_EXAMPLES['answer']}")
    rewards = [_resolve(i, spec, fields, allow_python, Path(recipe_dir), file) for i, spec in enumerate(specs)]
    return [r.to_dict() for r in _name_rewards(specs, rewards, file)]


def _resolve(i: int, spec: Mapping[str, Any], fields: set[str], allow_python: bool, recipe_dir: Path,
             file: str | None) -> Reward:
    at = f"{ROOT}[{i}]"
    if not isinstance(spec, Mapping):
        raise FtcError("FTC105", file=file, path=at, reason=f"a reward is a JSON object, not {type(spec).__name__}",
                       hint=f"e.g. {_EXAMPLES['regex']}")
    kind = spec.get("kind")
    if kind not in KINDS:
        what = "has no 'kind'" if kind is None else f"has unknown kind {kind!r}"
        raise FtcError("FTC105", file=file, path=f"{at}.kind", reason=f"reward {what}",
                       hint=f"kind is one of: {', '.join(KINDS)}" + (did_you_mean(str(kind), KINDS) if kind else ""))
    keys, required = _KEYS[kind]
    allowed = ("kind", "name", "weight", *keys)
    for key in spec:
        if key not in allowed:
            raise FtcError("FTC103", file=file, path=f"{at}.{key}", key=key,
                           hint=f"{kind} rewards take: {', '.join(allowed)}{did_you_mean(key, allowed)}")
    for key in required:
        if key not in spec:
            raise FtcError("FTC105", file=file, path=at, reason=f"{kind} reward needs {key!r}",
                           hint=f"e.g. {_EXAMPLES[kind]}")
    _check_types(spec, at, file)

    name = spec.get("name", "")  # filled in by _name_rewards when not declared
    weight = float(spec.get("weight", 1.0))
    if kind == "regex":
        _compile(spec["pattern"], f"{at}.pattern", file)
        return RegexReward(name=name, weight=weight, pattern=spec["pattern"], fullmatch=spec.get("fullmatch", False))
    if kind == "answer":
        rx = _compile(spec["pattern"], f"{at}.pattern", file)
        if rx.groups < 1:
            raise FtcError("FTC105", file=file, path=f"{at}.pattern",
                           reason=f"answer pattern has no group to extract the answer with: {spec['pattern']}",
                           hint="put parentheses around the answer part, e.g. 最终答案[:：]\\s*(-?[\\d,.]+)")
        _check_field(spec["field"], fields, f"{at}.field", "answer reward", file)
        compare = spec.get("compare", "exact")
        if compare == "exact" and "tolerance" in spec:
            raise FtcError("FTC105", file=file, path=f"{at}.tolerance", reason="tolerance only applies to compare \"numeric\"",
                           hint="set \"compare\": \"numeric\", or drop tolerance")
        numeric = compare == "numeric"
        return AnswerReward(
            name=name, weight=weight, pattern=spec["pattern"], field=spec["field"], compare=compare,
            remove=spec.get("remove", "," if numeric else ""), occurrence=spec.get("occurrence", "first"),
            tolerance=float(spec.get("tolerance", 1e-6)) if numeric else None,
        )
    if kind == "length":
        lo, hi = spec.get("min", 0), spec.get("max")
        if "min" not in spec and hi is None:
            raise FtcError("FTC105", file=file, path=at, reason="length reward needs min, max or both",
                           hint=f"e.g. {_EXAMPLES['length']}")
        if hi is not None and hi < lo:
            raise FtcError("FTC105", file=file, path=f"{at}.max", reason=f"max ({hi}) is below min ({lo})",
                           hint="max and min are character counts with min <= max")
        return LengthReward(name=name, weight=weight, min=lo, max=hi, ramp=spec.get("ramp", 0))
    if kind == "contains":
        text = spec["text"]
        return ContainsReward(name=name, weight=weight, text=(text,) if isinstance(text, str) else tuple(text),
                              mode=spec.get("mode", "any"), negate=spec.get("negate", False),
                              ignore_case=spec.get("ignore_case", False))
    return _resolve_python(spec, name, weight, at, fields, allow_python, recipe_dir, file)


def _check_types(spec: Mapping[str, Any], at: str, file: str | None) -> None:
    """Types and ranges, by the same schema the recipe is validated with (one source of truth)."""
    import jsonschema  # only at compile time

    errors = sorted(jsonschema.Draft202012Validator(REWARD_SCHEMA).iter_errors(dict(spec)), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join([at, *map(str, err.path)])
        raise FtcError("FTC102", file=file, path=where, reason=err.message,
                       hint={**_COMMON, **_PROPS}.get(str(err.path[0]) if err.path else "", {}).get("description", "see the reward kinds"))


def _compile(pattern: str, path: str, file: str | None) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        pos = e.pos if e.pos is not None else 0
        reason = f"{e.msg} at position {pos} (checked with Python `re`, which is what scores)\n  regex: {pattern}\n         {' ' * pos}^"
        raise FtcError("FTC303", file=file, path=path, where="reward", reason=reason) from None


def _check_field(field: str, fields: set[str], path: str, where: str, file: str | None) -> None:
    if field not in fields:
        raise FtcError("FTC301", file=file, path=path, where=where, field=field,
                       fields=", ".join(sorted(fields)) or "(none)", suggest=did_you_mean(field, fields))


def _resolve_python(spec: Mapping[str, Any], name: str, weight: float, at: str, fields: set[str],
                    allow_python: bool, recipe_dir: Path, file: str | None) -> PythonReward:
    function = spec["function"]
    path = f"{at}.function"
    if not allow_python:
        raise FtcError("FTC105", file=file, path=path,
                       reason=f"reward runs Python ({function}), and the recipe does not allow Python",
                       hint="if you trust that file, set train.grpo.allow_python: true; "
                            "or declare the reward as regex, answer, length or contains")
    m = FUNCTION_RE.match(function)
    if not m:
        raise FtcError("FTC105", file=file, path=path, reason=f"cannot read {function!r} as FILE.py:function",
                       hint="write the file's path relative to the recipe, a colon, and the function, e.g. rewards.py:my_reward")
    rel = PurePosixPath(m["file"].replace("\\", "/"))
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", str(rel)):
        raise FtcError("FTC105", file=file, path=path, reason=f"{m['file']} is an absolute path",
                       hint="give the path relative to the recipe folder, so the lock works on another machine")
    source_file = recipe_dir / rel
    try:
        source = source_file.read_bytes()
    except OSError as e:
        raise FtcError("FTC105", file=file, path=path, reason=f"cannot read reward file {rel} ({e.strerror})",
                       hint=f"the path is relative to the recipe folder: {recipe_dir}") from None
    try:
        tree = ast.parse(source, filename=str(rel))
    except SyntaxError as e:
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel} line {e.lineno}: {e.msg}",
                       hint="fix the Python syntax") from None
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    fn = defs.get(m["attr"])
    if fn is None:
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel} defines no top-level function {m['attr']!r}",
                       hint=f"functions defined there: {', '.join(sorted(defs)) or '(none)'}{did_you_mean(m['attr'], defs)}")
    if isinstance(fn, ast.AsyncFunctionDef):
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel}:{fn.name} is async",
                       hint="write it as a plain def")
    args = _python_args(fn, rel, fields, path, file)
    return PythonReward(name=name or fn.name, weight=weight, function=f"{rel.as_posix()}:{fn.name}",
                        sha256=hashlib.sha256(source).hexdigest(), args=args)


def _python_args(fn: ast.FunctionDef, rel: PurePosixPath, fields: set[str], path: str, file: str | None) -> tuple[str, ...]:
    """The function's contract: the first parameter is the completion text; every other
    parameter it names must be a dataset field (or ``prompt``) — the seed's bug, a
    parameter nothing passes, is caught here instead of silently scoring 0."""
    a = fn.args
    positional = [p.arg for p in (*a.posonlyargs, *a.args)]
    if not positional:
        raise FtcError("FTC105", file=file, path=path, reason=f"{rel}:{fn.name} takes no completion parameter",
                       hint=f"define it as def {fn.name}(completion, **fields) -> float")
    named = positional[1:] + [p.arg for p in a.kwonlyargs]
    for arg in named:
        if arg != "prompt" and arg not in fields:
            _check_field(arg, fields, path, f"python reward {rel}:{fn.name} parameter", file)
    if a.kwarg is not None:  # **fields: pass every field
        named = [*named, *fields, "prompt"]
    return tuple(sorted(set(named)))


def _name_rewards(specs: Sequence[Mapping[str, Any]], rewards: list[Reward], file: str | None) -> list[Reward]:
    """Declared names must be unique (they label metrics); the rest get their kind,
    numbered in order when a kind repeats, never colliding with a declared name."""
    taken: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if "name" in spec:
            if spec["name"] in taken:
                raise FtcError("FTC105", file=file, path=f"{ROOT}[{i}].name",
                               reason=f"reward name {spec['name']!r} is also used by {ROOT}[{taken[spec['name']]}]",
                               hint="names label the logged metrics rewards/<name>/mean; give each reward its own")
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


# --------------------------------------------------------------------------- run time


def check_drift(resolved: Sequence[Mapping[str, Any]], recipe_dir: Path) -> None:
    """Refuse to run when a python reward's file is not the one compiled into the lock."""
    problems = []
    for d in resolved:
        if d["kind"] != "python":
            continue
        r = reward_from_dict(d)
        now = _sha256_or_none(Path(recipe_dir) / r.file)
        if now != r.sha256:
            problems.append(_drift(r, now))
    if problems:
        raise _drift_error(problems)


def _drift(r: PythonReward, now: str | None) -> str:
    state = "is missing" if now is None else f"changed (lock sha256 {r.sha256[:12]}, now {now[:12]})"
    return f"{r.file} {state}, used by reward {r.name!r}"


def _drift_error(problems: list[str]) -> FtcError:
    return FtcError("FTC105", path=ROOT, reason="python reward drift: " + "; ".join(problems),
                    hint="recompile the recipe so the lock records the file you mean to run: `ftc compile RECIPE`")


def _sha256_or_none(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def reward_weights(resolved: Sequence[Mapping[str, Any]]) -> list[float]:
    """For GRPOConfig(reward_weights=...): TRL weights the functions' raw scores itself."""
    return [float(d["weight"]) for d in resolved]


def build_reward_funcs(resolved: Sequence[Mapping[str, Any]], recipe_dir: Path) -> list[Callable[..., list[float | None]]]:
    """TRL GRPOTrainer reward functions, one per resolved reward, in order.

    Each is ``f(prompts, completions, **kwargs) -> list[float | None]`` and is named
    after its reward, so TRL logs ``rewards/<name>/mean``. Weights are not applied
    here; pass ``reward_weights(resolved)`` to GRPOConfig. Python rewards are loaded
    from exactly the bytes whose hash the lock holds.
    """
    check_drift(resolved, recipe_dir)
    return [_trl_func(reward_from_dict(d), Path(recipe_dir)) for d in resolved]


def _trl_func(reward: Reward, recipe_dir: Path) -> Callable[..., list[float | None]]:
    scorer = _load_python(reward, recipe_dir) if isinstance(reward, PythonReward) else reward.score
    needed = reward.fields()

    def reward_func(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any) -> list[float | None]:
        missing = [f for f in needed if f not in kwargs]
        if missing:
            raise FtcError("FTC105", path=ROOT, reason=f"reward {reward.name!r} needs dataset column(s) {', '.join(missing)}, "
                           f"which the trainer did not pass (it passed: {', '.join(sorted(_columns(kwargs))) or 'none'})",
                           hint="the GRPO dataset must keep the fields rewards read; recompile the plan")
        out = []
        for i, completion in enumerate(completions):
            row = {f: kwargs[f][i] for f in needed}
            if "prompt" in getattr(reward, "args", ()):
                row["prompt"] = prompts[i] if prompts is not None else None
            out.append(scorer(completion_text(completion), row))
        return out

    reward_func.__name__ = reward_func.__qualname__ = reward.name
    reward_func.__doc__ = f"ftc {reward.kind} reward {reward.name!r} (weight {reward.weight})"
    return reward_func


def _columns(kwargs: Mapping[str, Any]) -> list[str]:
    return [k for k, v in kwargs.items() if isinstance(v, list)]


def completion_text(completion: Any) -> str:
    """The text to score. TRL passes a string for plain prompts and a list of chat
    messages for conversational ones ([{"role": "assistant", "content": ...}]); the
    last assistant message is the answer. Content may be a string, None (a tool call
    only) or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        raise TypeError(f"a completion is a string or a list of chat messages, not {type(completion).__name__}")
    messages = [m for m in completion if isinstance(m, Mapping)]
    assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
    if not assistant:
        return ""
    content = assistant[-1].get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text")


def _load_python(reward: PythonReward, recipe_dir: Path) -> Callable[[str, Mapping[str, Any]], float | None]:
    """Execute the file's hashed bytes (read once: what ran is what was checked)."""
    path = recipe_dir / reward.file
    source = path.read_bytes()
    now = hashlib.sha256(source).hexdigest()
    if now != reward.sha256:
        raise _drift_error([_drift(reward, now)])
    module = types.ModuleType(f"ftc_reward_{reward.sha256[:16]}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # so dataclasses/pickle inside the file work
    exec(compile(source, str(path), "exec"), module.__dict__)
    fn = getattr(module, reward.attr)

    def score(completion: str, row: Mapping[str, Any]) -> float | None:
        value = fn(completion, **row)
        if value is None or isinstance(value, bool):
            return None if value is None else float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        if isinstance(value, float):  # nan: TRL's own "no score"
            return None
        raise FtcError("FTC105", path=ROOT, reason=f"python reward {reward.name!r} ({reward.function}) returned {value!r}",
                       hint="return a float (or None when the completion cannot be judged)")

    return score


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
