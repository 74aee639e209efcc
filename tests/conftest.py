"""Shared test helpers: the ../shared data folder, recipe writing, CLI calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub: fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NEEDS_SHARED = pytest.mark.skipif(not (SHARED / "data").is_dir(), reason=f"real data folder {SHARED}/data is absent")
TOKENIZER = SHARED / "tokenizers" / "qwen2.5-bpe"
DEMO_TOKENIZER = ROOT / "recipes" / "demo" / "tokenizer"  # small, shipped in the repository


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data folder {SHARED}/data is absent")
    return SHARED


@pytest.fixture
def demo(tmp_path) -> Path:
    """A copy of the shipped demo (recipe, data slice, tokenizer, tiny model config) to compile and change."""
    import shutil

    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "recipes" / "demo", proj / "demo")
    shutil.copy(ROOT / "recipes" / "demo.json", proj / "demo.json")
    return proj


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.json") -> Path:
    base = {"name": "t", "model": {"name": "tiny", "tokenizer": str(DEMO_TOKENIZER)}}
    p = folder / name
    p.write_text(json.dumps({**base, **recipe}, ensure_ascii=False, indent=1), encoding="utf-8")
    return p


@pytest.fixture
def cli(capsys):
    """Run ftc in-process: returns (exit code, stdout, stderr)."""
    from ftc.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
