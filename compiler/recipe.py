"""Recipe loading: JSON text -> overrides -> schema check -> resolved, frozen Recipe.

The schema check, with its errors phrased for a person, is ``compiler/recipe_schema.py``'s.
Every default is filled in here, once, so the lock shows the settings that will actually
be used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ftc.compiler import jsontext
from ftc.compiler.jsontext import json_path
from ftc.compiler.lock import relpath
from ftc.compiler.project_files import check_project_files, extra_roots
from ftc.compiler.preference import FORMAT_OF, check_method_format, check_method_keys
from ftc.compiler.recipe_schema import schema, validate
from ftc.errors import FtcError


# Keys whose values are filesystem paths. Relative values in the recipe are relative
# to the recipe file; relative values given with --set are relative to the current
# directory (like any command-line path) and are rewritten relative to the recipe.
PATH_KEYS = ("sources.*.path", "model.name", "model.tokenizer", "model.adapter", "output.cache_dir")


@dataclass(frozen=True)
class Recipe:
    path: Path  # the recipe file
    sha256: str  # of the recipe file's bytes
    overrides: tuple[str, ...]  # "KEY=VALUE" as given, after path rewriting
    data: dict = field(repr=False)  # the recipe after overrides, defaults resolved

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.data["name"]

    def resolve_path(self, rel: str) -> Path:
        return (self.dir / rel) if not os.path.isabs(rel) else Path(rel)


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                base: str | os.PathLike | None = None, roots: Sequence[str | os.PathLike] = ()) -> Recipe:
    """Read, override, validate and resolve a recipe file.

    Path values in `overrides` are relative to `base`: the current directory for `--set` on the
    command line (the default), the recipe's folder for the overrides a lock recorded. The files
    the recipe reads must lie in its folder, in one of `roots`, or in a root the command line
    named (`project_roots`)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise FtcError("FTC100", file=str(path), reason=e.strerror or str(e)) from None
    try:
        text = raw.decode("utf-8-sig")
        data, dupes = jsontext.loads(text)
    except UnicodeDecodeError as e:
        raise FtcError("FTC101", file=str(path), reason=f"not UTF-8 ({e.reason} at byte {e.start})", line=1, col=1) from None
    except json.JSONDecodeError as e:
        raise FtcError("FTC101", file=str(path), reason=e.msg, line=e.lineno, col=e.colno) from None
    if not isinstance(data, dict):
        raise FtcError("FTC102", file=str(path), reason="a recipe is a JSON object", hint="wrap it in { ... }")
    _check_text(text, data, dupes, str(path))
    original = copy.deepcopy(data)
    applied = []
    for arg in overrides:
        applied.append(apply_override(data, arg, p.parent, base=base))
    try:
        validate(data, str(path))
        resolved = resolve(data, str(path))
        check_project_files(resolved, p.parent, [*extra_roots(), *roots], str(path))
    except FtcError as err:
        raise _blame(err, original, list(overrides), str(path)) from None
    return Recipe(path=p, sha256=hashlib.sha256(raw).hexdigest(), overrides=tuple(applied), data=resolved)


def _check_text(text: str, data: dict, dupes: list, file: str) -> None:
    """Refuse what json read silently: a duplicated key (the first one's value was dropped), NaN or Infinity."""
    if dupes:
        at = jsontext.duplicate_at(text)
        parts, key, first, second = at if at else ([], dupes[0], "?", "?")
        raise FtcError("FTC140", file=file, path=json_path([*parts, key]), key=key, first=first, second=second)
    found = jsontext.non_finite(data)
    if found:
        raise FtcError("FTC141", file=file, path=json_path(found[0]), value=found[1])


def _blame(err: FtcError, original: dict, overrides: list[str], file: str) -> FtcError:
    """The error as said of the --set that caused it, when one did: an error at a path a --set
    wrote (or under it, or an unknown key it created) that the recipe file alone does not have.
    The origin takes the file's place in the message (`--set no.such.key=1: at no: ...`)."""
    if not overrides or not err.path or err.file != file:
        return err
    where = err.path.replace("[", ".").replace("]", "").split(".")
    culprit = next((arg for arg in reversed(overrides)
                    if _related(arg.partition("=")[0].strip().split("."), where)), None)
    if culprit is None:
        return err
    try:
        validate(copy.deepcopy(original), file)
        resolve(original, file)
    except FtcError as before:
        if (before.code, before.path) == (err.code, err.path):
            return err  # the recipe file has it with or without the --set
    return FtcError(err.code, file=f"--set {culprit}", path=err.path, **err.fields)


def _related(a: list[str], b: list[str]) -> bool:
    """One dotted path is the other or lies under it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


# ---------------------------------------------------------------- overrides

def apply_override(data: dict, arg: str, recipe_dir: Path, *, base: str | os.PathLike | None = None) -> str:
    """Apply one ``KEY=VALUE`` to ``data`` in place; returns the recorded form (path values
    relative to the recipe's folder)."""
    key, sep, text = arg.partition("=")
    key = key.strip()
    if not sep or not key:
        raise FtcError("FTC104", arg=arg, reason="expected KEY=VALUE")
    try:
        value: Any = jsontext.loads(text)[0]
    except json.JSONDecodeError:
        value = text  # bare strings need no quotes
    found = jsontext.non_finite(value)
    if found:
        raise FtcError("FTC142", arg=arg, key=json_path([*key.split("."), *found[0]]), value=found[1])
    parts = key.split(".")
    if _is_path_key(parts) and isinstance(value, str) and not os.path.isabs(value):
        here = os.path.join(base, value) if base is not None else value
        if os.path.exists(here):
            value = relpath(here, recipe_dir)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_index(arg, node, part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise FtcError("FTC104", arg=arg, reason=f"{'.'.join(parts[: i + 1])} is a {type(node).__name__}, not an object")
        else:
            raise FtcError("FTC104", arg=arg, reason=f"{'.'.join(parts[:i])} is not an object")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(arg, node, last)] = value
    else:
        node[last] = value
    return f"{key}={json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}"


def _index(arg: str, node: list, part: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise FtcError("FTC104", arg=arg, reason=f"{part!r} is not an index of a list of {len(node)}")
    return int(part)


def _is_path_key(parts: list[str]) -> bool:
    for pattern in PATH_KEYS:
        pp = pattern.split(".")
        if len(pp) == len(parts) and all(a == "*" or a == b for a, b in zip(pp, parts)):
            return True
    return False


# ---------------------------------------------------------------- defaults

def _defaults(defn: dict) -> dict:
    return {k: copy.deepcopy(v["default"]) for k, v in defn.get("properties", {}).items() if "default" in v}


def resolve(data: dict, file: str) -> dict:
    """Fill every default so the lock states exactly what will be used."""
    defs = schema()["$defs"]
    out = copy.deepcopy(data)
    out.pop("$schema", None)
    out.setdefault("description", "")
    out.setdefault("transforms", [])
    out.setdefault("mix", {})
    for name, src in out["sources"].items():
        src.setdefault("transforms", [])
        if "path" in src:
            src.setdefault("encoding", "auto")
            src.setdefault("encoding_errors", "strict")
            src.setdefault("on_malformed", "error")
        if "hf" in src:
            src["hf"].setdefault("split", "train")
        for step in src["transforms"]:
            _resolve_step(step)
    for step in out["transforms"]:
        _resolve_step(step)
    split = out.setdefault("split", {})
    split.setdefault("eval", 0)
    split.setdefault("seed", 0)
    if split["eval"] >= 1 and split["eval"] != int(split["eval"]):
        raise FtcError("FTC106", file=file, path="split.eval", value=split["eval"])
    model = {**_defaults(defs["model"]), **out.get("model", {})}
    if "name" not in model:
        raise FtcError("FTC102", file=file, path="model", reason="'name' is required", hint="the base model: a hub id or a local folder")
    model.setdefault("revision", None)
    model.setdefault("tokenizer", model["name"])
    model.setdefault("tokenizer_revision", model["revision"] if model["tokenizer"] == model["name"] else None)
    model.setdefault("config", {})
    model.setdefault("adapter", None)  # no earlier run to start from
    out["model"] = model
    out["lora"] = {**_defaults(defs["lora"]), **out.get("lora", {})}
    train = {**_defaults(defs["train"]), **out.get("train", {})}
    fmt = out["template"]["format"]
    train.setdefault("completion_only_loss", fmt == "prompt_completion")
    train.setdefault("assistant_only_loss", fmt == "messages")
    if "warmup_steps" in train and "warmup_ratio" in train:  # one would be ignored; the schedule resolves either
        raise FtcError("FTC107", file=file, path="train.warmup_ratio", steps=train["warmup_steps"], ratio=train["warmup_ratio"])
    train.setdefault("warmup_ratio", 0.0)
    train.setdefault("eval_steps", None)
    if train["method"] in FORMAT_OF or fmt in FORMAT_OF.values():  # preference tuning: its format, its TRL keys
        check_method_format(train["method"], fmt, file)
        train[train["method"]] = {**_defaults(defs["train"]["properties"][train["method"]]), **train.get(train["method"], {})}
    if train["method"] == "grpo":
        train["grpo"] = {**_defaults(defs["train"]["properties"]["grpo"]), **train.get("grpo", {})}
        train["grpo"].setdefault("rewards", [])
        if fmt != "prompt":
            raise FtcError("FTC108", file=file, path="template.format", format=fmt)
    else:
        train.pop("grpo", None)
        if fmt == "prompt":
            raise FtcError("FTC109", file=file, path="template.format")
    out["train"] = train
    from ftc.compiler.trainer_choices import check_fsdp, check_optim

    check_optim(train["optim"], file)  # a free string in the schema: the installed Trainer's names decide
    check_fsdp(train["fsdp"], file)  # so is train.fsdp: its FSDPOption words
    out["output"] = {"cache_dir": ".ftc", **out.get("output", {})}
    _check_template_keys(out["template"], file)
    _check_applies(data, out, file)
    return out


_FILE_KEYS = ("format", "encoding", "delimiter", "captures", "encoding_errors", "on_malformed")  # what only the file readers read
_LOSS_KEYS = {"completion_only_loss": "prompt_completion", "assistant_only_loss": "messages"}


def _check_applies(written: dict, out: dict, file: str) -> None:
    """Refuse a key the user wrote that nothing would read (DESIGN: a key that does not apply is an
    error, never silently ignored). `written` is the recipe as given (after --set, before defaults):
    the resolver fills some of these keys itself, and only the user's own are the user's mistake."""
    for name, src in written["sources"].items():
        if "hf" in src:
            for key in _FILE_KEYS:
                if key in src:
                    raise FtcError("FTC212", file=file, path=json_path(["sources", name, key]), source=name, key=key)
        else:
            from ftc.compiler.discovery import check_keys_apply

            check_keys_apply(src, name, file)
    train, model = written.get("train", {}), written.get("model", {})
    method, fmt = out["train"]["method"], out["template"]["format"]
    if method == "grpo" and train.get("packing") is True:
        raise FtcError("FTC150", file=file, path="train.packing")
    if method == "grpo" and train.get("micro_batch") == "auto":  # memory_plan keeps a GRPO batch's split
        raise FtcError("FTC151", file=file, path="train.micro_batch")
    if method != "grpo" and "grpo" in train:
        raise FtcError("FTC155", file=file, path="train.grpo", method=method)
    for key in FORMAT_OF:  # train.dpo, train.kto...: the keys of one method
        if key in train and key != method:
            raise FtcError("FTC181", file=file, path=f"train.{key}", key=key, method=method)
    kto = out["train"].get("kto")
    if method == "kto" and kto["loss_type"] == "kto" and out["train"]["per_device_train_batch_size"] < 2:  # TRL refuses it
        raise FtcError("FTC183", file=file, path="train.per_device_train_batch_size",
                       batch=out["train"]["per_device_train_batch_size"])
    check_method_keys(train, out["train"], file)  # a TRL key the chosen loss would not read
    if method in FORMAT_OF and train.get("packing") is True:
        raise FtcError("FTC182", file=file, path="train.packing", method=method)
    if "eval_steps" in train and out["split"]["eval"] == 0:  # no eval artifact: the run passes no eval_steps
        raise FtcError("FTC152", file=file, path="train.eval_steps")
    for key, applies in _LOSS_KEYS.items():
        if key in train and fmt != applies:
            raise FtcError("FTC153", file=file, path=f"train.{key}", key=key, applies=applies, format=fmt)
    init = out["model"]["init"]
    if model.get("config") and init != "random":  # {} overrides nothing (and lets --set clear a recipe's config)
        raise FtcError("FTC154", file=file, path="model.config", init=init)
    if init == "random" and out["model"]["load_in_4bit"]:  # also refused at run time, for older locks
        raise FtcError("FTC710", file=file, path="model.load_in_4bit")


def _resolve_step(step: dict) -> None:
    (kind, arg), = step.items()
    if kind == "filter" and isinstance(arg, str):
        step["filter"] = {"where": arg}
    elif kind == "extract":
        arg.setdefault("required", True)
        arg.setdefault("remove", "")
    elif kind == "sample":
        arg.setdefault("seed", 0)


_TEMPLATE_KEYS = {"text": {"text"}, "prompt_completion": {"prompt", "completion"}, "prompt": {"prompt"}, "messages": {"messages"},
                  "preference": {"chosen", "rejected"}, "unpaired_preference": {"completion", "label"}}
# keys a format may leave out: a preference prompt can come from the completions' own chat turns
_TEMPLATE_OPTIONAL = {"preference": {"prompt"}, "unpaired_preference": {"prompt"}}


def _check_template_keys(tpl: dict, file: str) -> None:
    want = _TEMPLATE_KEYS[tpl["format"]]
    have = set(tpl) - {"format"}
    for k in sorted(want - have):
        raise FtcError("FTC403", file=file, path=f"template.{k}", format=tpl["format"], key=k)
    for k in sorted(have - want - _TEMPLATE_OPTIONAL.get(tpl["format"], set())):
        raise FtcError("FTC404", file=file, path=f"template.{k}", format=tpl["format"], key=k, keys=", ".join(sorted(want)))

