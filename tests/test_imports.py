"""The import graph of ftc/, compiler/ and runtime/: no circles, and the compiler never imports the runtime.

Read from the source (an AST walk), counting the imports inside functions too: a circle that
only closes at call time still means two modules that cannot be read, tested or changed apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = {"ftc": ROOT / "ftc", "ftc.compiler": ROOT / "compiler", "ftc.runtime": ROOT / "runtime"}

# No known violations: an entry here would be an exception to "the compiler never imports the runtime".
ALLOWED_COMPILER_TO_RUNTIME: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ftc modules `name` imports anywhere in its file (module level and inside functions)."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from ftc.runtime import memory_plan`
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_imports_inside_functions_and_finds_a_circle():
    """The checker itself: a circle closed by a function-level import is found."""
    edges = graph()
    assert "ftc.runtime.verify" in edges["ftc.runtime.run"]  # module level
    assert "ftc.compiler.compile" in edges["ftc.runtime.verify"]  # inside verify()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_compiler_never_imports_the_runtime():
    edges = graph()
    crossing = {(a, b) for a, bs in edges.items() if a.startswith("ftc.compiler") for b in bs if b.startswith("ftc.runtime")}
    assert crossing <= ALLOWED_COMPILER_TO_RUNTIME, f"the compiler imports the runtime: {sorted(crossing - ALLOWED_COMPILER_TO_RUNTIME)}"
