"""Declared rewards as TRL callables: what GRPO training and ``ftc score`` both call.

The declarations, their checks and their scoring live in ``ftc.compiler.rewards``;
this module only adapts a resolved list from plan.lock to TRL's reward-function
interface (``f(prompts, completions, **columns) -> list[float | None]``), and is the
one place that executes a ``python`` reward's file, after its hash matched the lock.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ftc.compiler.rewards import ROOT, PythonReward, Reward, check_drift, check_source, reward_from_dict
from ftc.errors import FtcError


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
            raise FtcError("FTC752", path=ROOT, name=reward.name, fields=", ".join(missing),
                           passed=", ".join(sorted(_columns(kwargs))) or "none")
        out = []
        for i, completion in enumerate(completions):
            row = {f: kwargs[f][i] for f in needed}
            if "prompt" in getattr(reward, "args", ()):
                row["prompt"] = prompts[i] if prompts is not None else None
            text = completion_text(completion)
            try:
                out.append(scorer(text, row))
            except FtcError:
                raise
            except Exception as e:  # only a python reward's own code raises: name it, the completion and the row
                if not isinstance(reward, PythonReward):
                    raise
                rows = kwargs.get("row_id")
                raise FtcError("FTC762", path=ROOT, name=reward.name, function=reward.function, index=i,
                               row=rows[i] if isinstance(rows, list) and i < len(rows) else "?",
                               exception=f"{type(e).__name__}: {e}", line=_raised_at(e, reward),
                               start=text[:60]) from None
        return out

    reward_func.__name__ = reward_func.__qualname__ = reward.name
    reward_func.__doc__ = f"ftc {reward.kind} reward {reward.name!r} (weight {reward.weight})"
    return reward_func


def _raised_at(e: BaseException, reward: PythonReward) -> str:
    """Where in the reward's file the exception came from ("rewards.py line 3"), the innermost such frame."""
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).name == Path(reward.file).name]
    return f"{reward.file} line {lines[-1]}" if lines else reward.file


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
    check_source(reward, source)
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
        raise FtcError("FTC753", path=ROOT, name=reward.name, function=reward.function, value=repr(value))

    return score


