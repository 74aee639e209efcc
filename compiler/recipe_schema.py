"""The recipe's JSON Schema: where it lies, read once, and a recipe checked against it.

Validation errors are phrased for a person: the JSON path, what was expected, and a
did-you-mean for unknown keys. Also here is what the schema cannot say: an integer is a
Python int, and no count or seed is larger than the Trainer can hold. Everything after a
valid shape (defaults, keys that do not apply) is ``compiler/recipe.py``'s.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ftc.compiler.jsontext import json_path
from ftc.errors import FtcError, did_you_mean

SCHEMA_PATH = Path(__file__).with_name("recipe.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(data: dict, file: str) -> None:
    """Raise the most useful schema error, if any."""
    from jsonschema.exceptions import best_match

    validator = _validator_class()(schema())
    errors = list(validator.iter_errors(data))
    if not errors:
        _check_sizes(data, [], file)
        return
    unknown = _deepest_unknown_key(errors)
    if unknown is not None:
        err, key = unknown
        allowed = sorted(err.schema.get("properties", {}))
        path = json_path(list(err.absolute_path) + [key])
        raise FtcError("FTC103", file=file, path=path, key=key, allowed=", ".join(allowed) or "(none)",
                       suggest=did_you_mean(key, allowed))
    err = best_match(errors)
    while err.context:  # descend into oneOf/anyOf to the most specific branch
        err = best_match(err.context)
    path = json_path(err.absolute_path)
    raise FtcError("FTC102", file=file, path=path, reason=_describe(err), hint=_schema_hint(err))


LARGEST = 2**31 - 1  # a count or size: torch and the Trainer keep them in (at least) 32-bit integers
LARGEST_SEED = 2**32 - 1  # transformers' set_seed seeds numpy, whose seeds are below 2^32


def _check_sizes(node: object, parts: list, file: str) -> None:
    """Numbers the schema lets through (it has no upper bounds) but the Trainer cannot use: a batch of
    10^30 or a seed of 2^64 would end in an OverflowError at `ftc run`. model.config is the model's
    own config, which transformers checks."""
    if isinstance(node, dict):
        for key, value in node.items():
            if parts != ["model"] or key != "config":
                _check_sizes(value, [*parts, key], file)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_sizes(value, [*parts, i], file)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        seed = bool(parts) and parts[-1] == "seed"
        limit = LARGEST_SEED if seed else LARGEST
        if abs(node) > limit:
            raise FtcError("FTC167", file=file, path=json_path(parts), value=node, limit=limit,
                           what="seed" if seed else "number")


@lru_cache(maxsize=1)
def _validator_class():
    """Draft 2020-12, but an integer is an int: JSON Schema counts 4.0 and 1e308 as integers, and a
    float would reach the Trainer as a batch size or a step count (range() refuses 4.0)."""
    from jsonschema import Draft202012Validator, validators

    def is_integer(checker, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", is_integer)
    return validators.extend(Draft202012Validator, type_checker=checker)


def _deepest_unknown_key(errors):
    best = None
    stack = list(errors)
    while stack:
        e = stack.pop()
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            allowed = set(e.schema.get("properties", {}))
            extra = sorted(k for k in e.instance if k not in allowed)
            if extra and (best is None or len(e.absolute_path) > len(best[0].absolute_path)):
                best = (e, extra[0])
        stack.extend(e.context or [])
    return best


def _describe(err) -> str:
    v = err.validator
    if v == "required":
        return err.message.replace("is a required property", "is required")
    if v == "type":
        return f"expected {err.validator_value}, got {json.dumps(err.instance, ensure_ascii=False)[:80]}"
    if v == "enum":
        return f"{json.dumps(err.instance, ensure_ascii=False)} is not one of {', '.join(map(str, err.validator_value))}"
    return err.message


def _schema_hint(err) -> str:
    desc = err.schema.get("description") if isinstance(err.schema, dict) else None
    return desc or "see `ftc schema` for the recipe format"
