"""The compile-time check of `train.grpo.rewards`: a recipe's declarations -> the resolved rewards
the lock holds.

Each declaration is checked against the reward fragment of the recipe schema (its kind, the keys
that kind takes and needs, their types), its regex is compiled the way scoring runs it (RE2,
after Python `re` for a readable syntax error), the dataset fields it reads must exist, a
`python` reward's file is read without running it (`reward_python.py`), and every default is
filled, so the lock says exactly what runs. Names are made unique (they label the metrics).
What a reward is and how it scores is `rewards.py`; this module only turns declarations into it.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from ftc.compiler.reward_python import check_field, read_python_reward
from ftc.compiler.rewards import (KINDS, REWARD_SCHEMA, ROOT, AnswerReward, ContainsReward, LengthReward, PythonReward,
                                  RegexReward, Reward, engine)
from ftc.errors import FtcError, did_you_mean

# From the reward fragment of the schema (rewards.REWARD_SCHEMA): each key's default, and per kind
# the keys it takes and needs, so a key added there is known here without a second copy.
_PROPS: dict[str, Any] = REWARD_SCHEMA["properties"]
_DEFAULT: dict[str, Any] = {k: v["default"] for k, v in _PROPS.items() if "default" in v}
# kind -> (the keys it takes, in the schema's order, and the keys it needs)
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    rule["if"]["properties"]["kind"]["const"]: (tuple(rule["then"]["propertyNames"]["enum"]),
                                                tuple(rule["then"]["required"]))
    for rule in REWARD_SCHEMA["allOf"]
}
# what an error message shows as a correct declaration of each kind
_EXAMPLES = {
    "regex": '{"kind": "regex", "pattern": "^<reasoning>[\\\\s\\\\S]+?</reasoning>"}',
    "answer": '{"kind": "answer", "pattern": "最终答案[:：]\\\\s*(-?[\\\\d,.]+)", "field": "answer_number", "compare": "numeric"}',
    "length": '{"kind": "length", "min": 200, "max": 1500, "ramp": 300}',
    "contains": '{"kind": "contains", "text": "</reasoning>"}',
    "python": '{"kind": "python", "function": "rewards.py:my_reward"}',
}


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
