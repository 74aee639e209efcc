"""The error catalogue: every rule in ftc/errors.py is raised, tested, and fed the fields it names.

A rule whose template names a field its call site does not pass raises KeyError at the
worst moment, on the user's bad input; so the call sites are read here (AST), not run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ftc.errors import RULES

from conftest import ROOT

PACKAGE = [ROOT / "ftc", ROOT / "compiler", ROOT / "runtime"]
TESTS = ROOT / "tests"

# Rules that still pass their wording through ({reason} / {hint}) instead of stating it:
PASS_THROUGH = {
    "FTC102": "a formatter for jsonschema's messages; the hint is the schema's own description of the key",
}

# FtcError calls whose code is not a literal, and why their fields are right anyway.
DYNAMIC_CALLS = {
    ("compiler/inputs.py", "Drift.error"): "the Drift(CODE, file, {fields}) constructions are read below",
    ("compiler/recipe.py", "_blame"): "re-raises validate's or resolve's FtcError, its code and fields as they were, said of the --set",
    ("runtime/unsloth_process.py", "train_in_child"): "re-raises the child process's FtcError, fields as it serialized them",
}


DRIFT_ADDS = frozenset({"recipe", "lock"})  # what Drift.error passes to every drift rule, used or not


class _Calls(ast.NodeVisitor):
    """(file, line, code, keyword names, names a wrapper adds) of every FtcError("CODE", ...) in a
    module, and of every Drift("CODE", file, {fields}) (compiler/inputs.py: Drift.error adds DRIFT_ADDS)."""

    def __init__(self, rel: str) -> None:
        self.rel, self.scope, self.found = rel, [], []

    def _scoped(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def visit_Call(self, call: ast.Call) -> None:
        name = getattr(call.func, "id", getattr(call.func, "attr", None))
        first = call.args[0] if call.args else None
        if name == "FtcError":
            if not isinstance(first, ast.Constant) or any(k.arg is None for k in call.keywords):
                where = (self.rel, ".".join(self.scope))
                assert where in DYNAMIC_CALLS, (f"{self.rel}:{call.lineno}: FtcError needs a literal code and named fields "
                                               "(or an entry in DYNAMIC_CALLS that says how its fields are right)")
            else:
                self.found.append((self.rel, call.lineno, first.value, frozenset(k.arg for k in call.keywords), frozenset()))
        elif name == "Drift" and isinstance(first, ast.Constant):
            extra = call.args[2] if len(call.args) > 2 else None
            keys = {k.value for k in extra.keys} if isinstance(extra, ast.Dict) else set()
            self.found.append((self.rel, call.lineno, first.value, frozenset({"file", *keys}), DRIFT_ADDS))
        self.generic_visit(call)


def _calls() -> list[tuple[str, int, str, frozenset[str], frozenset[str]]]:
    out = []
    for folder in PACKAGE:
        for py in sorted(folder.rglob("*.py")):
            visitor = _Calls(py.relative_to(ROOT).as_posix())
            visitor.visit(ast.parse(py.read_text(encoding="utf-8")))
            out += visitor.found
    return out


CALLS = _calls()


def test_the_call_sites_are_found():
    assert len(CALLS) > 100 and {c for _, _, c, _, _ in CALLS} >= {"FTC100", "FTC504", "FTC707"}


def test_every_rule_is_raised_and_every_raised_code_is_a_rule():
    raised = {code for _, _, code, _, _ in CALLS}
    assert sorted(set(RULES) - raised) == [], "rules nothing raises: remove them"
    assert sorted(raised - set(RULES)) == [], "codes raised without a rule in ftc/errors.py"


def test_every_call_site_passes_exactly_the_fields_of_its_rule():
    """Missing: str.format raises KeyError on the user's input. Extra: a value the message never shows."""
    problems = []
    for file, line, code, keywords, added in CALLS:
        wanted = RULES[code].fields()
        missing = wanted - keywords - added
        extra = keywords - wanted - {"file", "path"}
        if missing or extra:
            problems.append(f"{file}:{line} {code}: missing {sorted(missing)}, unused {sorted(extra)}")
    assert problems == []


def test_every_rule_is_named_by_a_test():
    texts = {p.name: p.read_text(encoding="utf-8") for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name}
    untested = sorted(code for code in RULES if not any(re.search(rf"\b{code}\b", t) for t in texts.values()))
    assert untested == []


def test_the_only_pass_through_rule_is_the_schema_formatter():
    generic = {code for code, r in RULES.items() if "{reason}" == r.message or "{hint}" == r.hint}
    assert generic == set(PASS_THROUGH)


def test_templates_are_well_formed():
    """Literal braces are doubled: a template that does not parse fails on the user's input."""
    for rule in RULES.values():
        assert rule.code == f"FTC{rule.code[3:]}" and len(rule.code) == 6
        rule.fields()  # ValueError on a stray brace
