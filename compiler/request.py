"""An inference request -> its prompt: the text or chat turns, rendered with the very templates the
plan trained on, and their ids, encoded by ``encode.encode_prompt`` (the function that made the
training rows' prompt part). ``ftc infer`` (``runtime/run.py``) reaches a request's prompt only
through here, so it cannot drift from training.

A request is a JSON object whose keys are the fields the prompt-side templates read (not the
completion, nor the last assistant turn or later: that is the reply), or for a prompt taken from
a field, that field's text or turns.
"""

from __future__ import annotations

from typing import Any

from ftc.compiler import chat_tools
from ftc.compiler.encode import encode_prompt
from ftc.compiler.render import Template, render_rows, variables
from ftc.errors import FtcError


def prompt_fields(lock: dict) -> list[str]:
    """The fields an inference request must give: the variables of the prompt-side templates."""
    names: set[str] = set()
    for jp, t in lock["templates"].items():
        if _prompt_side(jp, lock["settings"]["template"]):
            names |= variables(Template(t["name"], t["text"]))
    return sorted(names)


def _last_assistant(turns: list[dict]) -> int | None:
    return max((k for k, m in enumerate(turns) if m["role"] == "assistant"), default=None)


def _prompt_side(json_path: str, spec: dict) -> bool:
    """Whether a template renders part of the prompt: not the completion, nor the last assistant turn or later."""
    if json_path in ("template.completion", "template.chosen", "template.rejected"):
        return False
    msgs = spec.get("messages")
    if json_path.startswith("template.messages[") and isinstance(msgs, list):
        i = int(json_path.split("[")[1].split("]")[0])
        last = _last_assistant(msgs)
        return i < (last if last is not None else len(msgs))
    return True


def request_prompt(lock: dict, request: dict) -> str | list[dict]:
    """A request's prompt, rendered with the very templates the plan trained on: the text
    of a plain prompt, or the chat turns before the reply (a ``messages`` field's final
    assistant turn, if given, is the reference reply and is left out)."""
    spec = lock["settings"]["template"]
    fmt = spec["format"]
    missing = [f for f in prompt_fields(lock) if f not in request]
    if missing:
        raise FtcError("FTC775", missing=", ".join(missing), fields=", ".join(prompt_fields(lock)))

    def one(jp: str) -> str:
        t = lock["templates"][jp]
        return render_rows(Template(t["name"], t["text"]), [dict(request)])[0]

    if fmt in ("preference", "unpaired_preference") and not isinstance(spec.get("prompt"), (str, list)):
        # the prompt is a field's value (text or turns), or the turns before a completion's answer
        ref = spec.get("prompt") or spec["chosen" if fmt == "preference" else "completion"]
        key = ref["field"] if isinstance(ref, dict) and "field" in ref else "prompt"
        value = request.get(key, request.get("prompt"))
        if isinstance(value, str) and value:
            return value
        if not isinstance(value, list) or not value:
            raise FtcError("FTC776", key=key)
        return list(value[:-1]) if value[-1].get("role") == "assistant" else list(value)
    if fmt in ("prompt_completion", "prompt", "preference", "unpaired_preference") and isinstance(spec["prompt"], list):
        return [{"role": m["role"], "content": one(f"template.prompt[{i}].content")} for i, m in enumerate(spec["prompt"])]
    if fmt in ("prompt_completion", "prompt", "preference", "unpaired_preference"):
        return one("template.prompt")
    if fmt == "text":
        return one("template.text")
    if isinstance(spec["messages"], dict):  # the turns come from a field
        key = spec["messages"]["field"]
        turns = request.get(key, request.get("messages"))
        if not isinstance(turns, list) or not turns:
            raise FtcError("FTC776", key=key)
        return list(turns[:-1]) if turns[-1].get("role") == "assistant" else list(turns)
    last = _last_assistant(spec["messages"])
    return [{"role": m["role"], "content": one(f"template.messages[{i}].content")}
            for i, m in enumerate(spec["messages"][: last if last is not None else len(spec["messages"])])]


def prompt_of_request(lock: dict, request: dict, tokenizer: Any) -> tuple[str | list[dict], list[int]]:
    """(the rendered prompt, its ids) for an inference request, with the plan's own templates."""
    prompt = request_prompt(lock, request)
    tools = chat_tools.of_request(request.get(chat_tools.FIELD)) if not isinstance(prompt, str) else None
    return prompt, encode_prompt(tokenizer, prompt, tools)
