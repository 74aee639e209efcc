"""The one tokenizer loader, and the fingerprint that says whether a tokenizer changed.

Compile, training and inference all load the tokenizer here (the runtime's
``load_tokenizer`` is a thin call of this one), so the ids a plan trains on and
the ids ``ftc infer`` feeds come from the same object built the same way.

The fingerprint is computed from the tokenizer's files alone (``fingerprint``), so
``ftc run`` can check cheaply, without building a tokenizer, that the one on disk
is still the one the lock recorded; ``load_tokenizer`` records that very value.

transformers is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc.errors import FtcError

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_FINGERPRINT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class TokenizerInfo:
    """What the lock records about the tokenizer: enough to notice when it changes."""

    name: str  # as written in the recipe: hub id or path
    revision: str | None
    fingerprint: dict[str, str]  # file name (or "chat_template") -> sha256
    eos_token: str
    eos_token_id: int
    pad_token_id: int | None
    vocab_size: int  # len(tokenizer): the base vocabulary plus added tokens
    has_generation_markers: bool


HUB_PROBE_SECONDS = 2.0  # how long `hub_offline` waits for the Hub (or the proxy) to answer a TCP connect
OFFLINE_REASON = "it is not in the local Hugging Face cache, and the Hub cannot be reached (offline)"
_hub_state: dict[str, bool] = {}


def hub_offline() -> bool:
    """Whether Hub downloads are off: HF_HUB_OFFLINE is set, or a TCP connect to the Hub
    endpoint (or the HTTPS proxy) does not succeed within HUB_PROBE_SECONDS. Asked once a
    process. Without it, a name that is not cached costs 28-74 s of retries on a box without
    network before the error; with it, loaders read the cache only (`local_files_only`)
    and fail at once."""
    if "offline" not in _hub_state:
        _hub_state["offline"] = _offline_by_setting() or not _reachable(_hub_address(), HUB_PROBE_SECONDS)
    return _hub_state["offline"]


def _offline_by_setting() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _hub_address() -> tuple[str, int]:
    """(host, port) a Hub request first connects to: the HTTPS proxy if one is set, else HF_ENDPOINT."""
    import os
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _reachable(address: tuple[str, int], seconds: float) -> bool:
    """A TCP connect within `seconds`, name resolution included (run in a thread: getaddrinfo has no timeout)."""
    import socket
    import threading

    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=seconds).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result and result[0])


def hub_kwargs(name_or_path: str) -> dict[str, Any]:
    """from_pretrained keywords for `name_or_path`: the cache only, when it is a hub id and the Hub is off."""
    return {"local_files_only": True} if not Path(name_or_path).expanduser().is_dir() and hub_offline() else {}


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> tuple[Any, TokenizerInfo]:
    """Load a fast (Rust-backed) tokenizer from a local folder or the Hub cache.

    Offline use is the norm on training boxes, so every failure (no network,
    missing files, no tokenizer.json) becomes FTC600, whose hint says how to point
    ``model.tokenizer`` at a local folder instead of a stack trace; without a network
    a hub id is looked up in the cache only (`hub_offline`), so that takes seconds.
    ``revision`` and ``trust_remote_code`` are the plan's model.tokenizer_revision and
    model.trust_remote_code: compile and run pass both, so they load the same tokenizer.
    """
    local = Path(name_or_path).expanduser()
    try:
        from transformers import AutoTokenizer

        if local.is_dir():
            tok = AutoTokenizer.from_pretrained(str(local), trust_remote_code=trust_remote_code)
        else:
            tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                                                **hub_kwargs(name_or_path))
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot load", said once
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not local.is_dir() and hub_offline():
            reason = OFFLINE_REASON
        raise FtcError("FTC600", name=name_or_path, reason=reason) from err
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise FtcError("FTC600", name=name_or_path, reason="it has no fast tokenizer (tokenizer.json)")
    if tok.eos_token is None or tok.eos_token_id is None:
        raise FtcError("FTC600", name=name_or_path, reason="it defines no eos_token")
    info = TokenizerInfo(
        name=name_or_path,
        revision=revision,
        fingerprint=fingerprint(name_or_path, revision),
        eos_token=str(tok.eos_token),
        eos_token_id=int(tok.eos_token_id),
        pad_token_id=None if tok.pad_token_id is None else int(tok.pad_token_id),
        vocab_size=len(tok),
        has_generation_markers=has_generation_markers(tok),
    )
    return tok, info


def fingerprint(location: str, revision: str | None = None) -> dict[str, str]:
    """The tokenizer's current fingerprint, from its files only (no tokenizer is built).

    sha256 of each file's bytes, plus of the chat template text: the template may
    live in tokenizer_config.json or in chat_template.jinja, and what matters is the
    text transformers uses (the .jinja file wins, as in ``from_pretrained``).
    ``location`` is a local folder or a hub id (then the files of the Hub cache).
    """
    local = Path(location).expanduser()
    files = _tokenizer_files(local if local.is_dir() else None, location, revision)
    out = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(files.items())}
    template = _chat_template_of_files(files)
    if template is not None:
        out["chat_template"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
    return out


def _tokenizer_files(folder: Path | None, name: str, revision: str | None) -> dict[str, Path]:
    """The on-disk files the tokenizer came from (the local folder, or the Hub cache)."""
    found: dict[str, Path] = {}
    for fname in _FINGERPRINT_FILES:
        if folder is not None:
            path = folder / fname
        else:
            from transformers.utils import cached_file

            hit = cached_file(name, fname, revision=revision, _raise_exceptions_for_missing_entries=False,
                              **hub_kwargs(name))
            path = Path(hit) if hit else Path("/nonexistent")
        if path.is_file():
            found[fname] = path
    return found


def _chat_template_of_files(files: dict[str, Path]) -> str | None:
    """The chat template text transformers loads from these files (None if there is none)."""
    if "chat_template.jinja" in files:
        return files["chat_template.jinja"].read_text(encoding="utf-8")
    if "tokenizer_config.json" not in files:
        return None
    try:
        template = json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # load_tokenizer reports an unreadable config; the bytes are hashed anyway
    if isinstance(template, list):  # named templates: [{"name", "template"}] becomes {name: template}
        template = {t["name"]: t["template"] for t in template}
    return _template_text(template)


def _template_text(template: Any) -> str | None:
    if template is None or isinstance(template, str):
        return template
    return json.dumps(template, sort_keys=True, ensure_ascii=False)  # named templates


def has_generation_markers(tok: Any) -> bool:
    """Whether the chat template marks assistant turns with ``{% generation %}`` (needed for masks)."""
    text = _template_text(getattr(tok, "chat_template", None))
    return bool(text and _GENERATION_RE.search(text))
