"""The CLI imports the runtime modules to wire its commands; that must not pull in torch,
transformers, TRL, PEFT, datasets or matplotlib (seconds of start-up for `ftc --help`).
Every runtime module is imported, so a new one is covered without editing this list."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "matplotlib")


def test_runtime_modules_import_without_the_training_stack():
    modules = sorted(f"ftc.runtime.{p.stem}" for p in (ROOT / "runtime").glob("*.py") if p.stem != "__init__")
    assert {"ftc.runtime.session", "ftc.runtime.sft", "ftc.runtime.grpo", "ftc.runtime.unsloth_process"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_package_holds_no_test_helpers():
    """Test helpers live in tests/ (tests/fixtures.py): nothing the package ships imports them."""
    import ast

    assert not (ROOT / "runtime" / "fixtures.py").exists()
    for path in [*(ROOT / "runtime").glob("*.py"), *(ROOT / "compiler").glob("*.py"), *(ROOT / "ftc").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[-1] in ("fixtures", "conftest") for n in names), (path, names)


def test_the_runtime_restates_no_schema_default():
    """A default is stated once, in the schema: the runtime reads the resolved plan, so no
    `section.get("seed", 3407)`-style call names a schema key together with a fallback value.
    (Left alone: rewards.py and score.py, owned by another branch, and keys the schema leaves
    without a default, which the resolver may not store.)"""
    import ast
    import json

    schema = json.loads((ROOT / "compiler" / "recipe.schema.json").read_text(encoding="utf-8"))["$defs"]
    sections = [schema["model"], schema["lora"], schema["train"], schema["train"]["properties"]["grpo"]]
    defaulted = {key for s in sections for key, spec in s["properties"].items() if "default" in spec}
    found = []
    for path in sorted((ROOT / "runtime").glob("*.py")):
        if path.stem in ("rewards", "score"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in defaulted):
                found.append(f"{path.name}:{node.lineno} .get({node.args[0].value!r}, ...)")
    assert "seed" in defaulted and "r" in defaulted and "max_seq_length" in defaulted
    assert not found, "schema defaults re-stated in the runtime: " + "; ".join(found)
