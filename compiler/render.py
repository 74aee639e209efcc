"""Rendering: Jinja templates -> the training text fields.

Templates run in Jinja's sandbox with ``StrictUndefined`` so a typo in a field name
is an error, not an empty string, and ``{{ ''.__class__ }}`` cannot reach Python
internals. Simple templates (text, ``{{ field }}``, ``{% if field %}…{% else %}…``)
are lowered to DuckDB string concatenation, which renders 200k rows in a fraction of
a second; anything else is rendered by Jinja, row by row. Both paths give the same
text (tested on real data).

A null is not text: Jinja would print it as ``None``, so a template that prints a null
field is refused with the row named (the SQL lowering lets the null through to the
output and ``check_rendered`` finds it there; Jinja's ``finalize`` refuses it). A
template must print something: an empty one, or one that renders to nothing on every
row, is refused.

A template is untrusted input that runs once per row, so each row renders under a budget
(FTC420/FTC421): ``{% for %}`` loops may take ``RENDER_STEPS`` iterations in all, and ``*``
and ``**`` may not build a string, list or number past ``RENDER_SIZE``. Without it, two
nested loops over ``range(100000)`` (each within the sandbox's own range limit) hang
compile for hours. Steps are counted, not timed, so a row that renders on one machine
renders on every machine.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from ftc.compiler.normalize import lit, q
from ftc.errors import FtcError


@dataclass(frozen=True)
class Template:
    name: str  # file path relative to the recipe, or the JSON path of an inline template
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()


RENDER_STEPS = 1_000_000  # loop iterations one row's rendering may take, all loops together
RENDER_SIZE = 10_000_000  # items a `*` may build (characters, list items), and digits a `**` may


class _OverBudget(Exception):
    """Raised inside a render when a row exceeds its budget; render_rows names the row (FTC420/FTC421)."""

    def __init__(self, what: str, size: int) -> None:
        super().__init__(what)
        self.what, self.size = what, size


class _Budget(threading.local):
    left: int = RENDER_STEPS


_BUDGET = _Budget()
_LOOP = "__ftc_loop__"  # the global every {% for %} iterates through (added by _parse, below)


def _counted(iterable):
    """What a template's {% for %} iterates: the row's steps run down by one per item."""
    for item in iterable:
        _BUDGET.left -= 1
        if _BUDGET.left < 0:
            raise _OverBudget("steps", RENDER_STEPS)
        yield item


def _bounded_env_class():
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """Jinja's immutable sandbox, plus the per-row budget: loops counted, products sized before they are built."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > RENDER_SIZE:
                        raise _OverBudget(f"{type(seq).__name__} * {n}", len(seq) * n)
            elif isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                digits = int(right * math.log10(abs(left))) + 1
                if digits > RENDER_SIZE:
                    raise _OverBudget(f"{left} ** {right}", digits)
            return super().call_binop(context, operator, left, right)

        def _parse(self, source, name, filename):
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Call(nodes.Name(_LOOP, "load", lineno=loop.lineno), [loop.iter], [], None, None,
                                       lineno=loop.lineno)
            return tree

    return BoundedEnvironment


@lru_cache(maxsize=1)
def env():
    from jinja2 import StrictUndefined

    # Jinja's default newline handling (a file's single final newline is dropped), as in
    # HF chat templates: a prompt that must end in "\n" ends its file with a blank line.
    e = _bounded_env_class()(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
    e.globals[_LOOP] = _counted
    return e


class NullPrinted(Exception):
    """A ``{{ ... }}`` of a template evaluated to None (Jinja would print 'None')."""


def _finalize(value):
    if value is None:
        raise NullPrinted()
    return value


@lru_cache(maxsize=1)
def _null() -> object:
    """What a null field is inside a template: falsy (``{% if x %}``, ``x or ''`` and
    ``x | default('')`` choose their fallback), but never text: printing it, a filter
    that makes text of it (``upper``) or ``~`` raise NullPrinted instead of giving 'None'."""
    from jinja2 import Undefined

    def fail(self, *args, **kwargs):
        raise NullPrinted()

    def attribute(self, name):
        if name[:2] == "__":
            raise AttributeError(name)  # Python's own probes (hasattr(x, "__html__")) stay probes
        raise NullPrinted()

    members = {name: fail for name in ("_fail_with_undefined_error", "__str__", "__iter__", "__len__")}
    return type("Null", (Undefined,), {"__slots__": (), "__getattr__": attribute, **members})()


def _with_nulls(row: dict) -> dict:
    null = _null()
    return {k: null if v is None else v for k, v in row.items()}


def load_template(spec, recipe_dir: Path, json_path: str, recipe_file: str) -> Template:
    if isinstance(spec, str):
        t = Template(json_path, spec)
    else:
        p = recipe_dir / spec["file"]
        try:
            data = p.read_bytes()
        except OSError as e:
            raise FtcError("FTC402", file=recipe_file, path=f"{json_path}.file", template=spec["file"],
                           reason=e.strerror or str(e), base=recipe_dir) from None
        try:
            t = Template(spec["file"], data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FtcError("FTC409", file=recipe_file, path=f"{json_path}.file", template=spec["file"],
                           byte=f"0x{data[e.start]:02x}", offset=e.start, line=data[: e.start].count(b"\n") + 1) from None
    if not t.source.strip():
        raise FtcError("FTC406", file=recipe_file, path=json_path, template=t.name)
    return t


def compile_template(t: Template):
    from jinja2 import TemplateSyntaxError

    try:
        return env().from_string(t.source)
    except TemplateSyntaxError as e:
        raise FtcError("FTC400", template=t.name, line=e.lineno, reason=e.message) from None


def variables(t: Template) -> set[str]:
    from jinja2 import meta

    return meta.find_undeclared_variables(env().parse(t.source)) - {_LOOP}


# ---------------------------------------------------------------- lowering to SQL

def to_sql(t: Template, types: dict[str, str]) -> str | None:
    """A DuckDB expression equal to rendering ``t``, or None if it is not simple."""
    from jinja2 import nodes

    try:
        tree = env().parse(t.source)
    except Exception:
        return None

    def expr(node) -> str | None:
        if isinstance(node, nodes.TemplateData):
            return lit(node.data)
        if isinstance(node, nodes.Const) and isinstance(node.value, str):
            return lit(node.value)
        if isinstance(node, nodes.Name) and node.ctx == "load" and types.get(node.name) == "VARCHAR":
            # A null makes the whole text null (DuckDB's ||): check_rendered finds and refuses it
            return q(node.name)
        if isinstance(node, nodes.Output):
            return seq(node.nodes)
        if isinstance(node, nodes.If) and not node.elif_:
            cond = test(node.test)
            body, other = seq(node.body), seq(node.else_)
            if None in (cond, body, other):
                return None
            return f"(CASE WHEN {cond} THEN {body} ELSE {other} END)"
        return None

    def test(node) -> str | None:
        if isinstance(node, nodes.Name) and types.get(node.name) == "VARCHAR":
            return f"({q(node.name)} IS NOT NULL AND {q(node.name)} <> '')"
        if isinstance(node, nodes.Not):
            inner = test(node.node)
            return None if inner is None else f"(NOT {inner})"
        return None

    def seq(items) -> str | None:
        parts = [expr(n) for n in items]
        if None in parts:
            return None
        return "(" + " || ".join(parts) + ")" if parts else "''"

    return seq(tree.body)


# ---------------------------------------------------------------- Jinja per row

def render_rows(t: Template, rows: list[dict]) -> list[str]:
    """Render ``t`` for each row; errors name the template line and the row."""
    compiled = compile_template(t)
    out, nulls = [], []
    for row in rows:
        _BUDGET.left = RENDER_STEPS
        try:
            out.append(compiled.render(_with_nulls(row)))
        except NullPrinted:
            nulls.append(row)  # counted over every row, then refused
            out.append("")
        except _OverBudget as e:
            if e.what == "steps":
                raise FtcError("FTC420", template=t.name, line=_line(e, t.name), row=row.get("row_id", "?"),
                               budget=f"{RENDER_STEPS:,}") from None
            raise FtcError("FTC421", template=t.name, line=_line(e, t.name), row=row.get("row_id", "?"), operation=e.what,
                           size=f"{e.size:,}", budget=f"{RENDER_SIZE:,}") from None
        except Exception as e:  # undefined names, sandbox refusals, and errors of the template's own logic
            raise FtcError("FTC401", template=t.name, line=_line(e, t.name), row=row.get("row_id", "?"),
                           reason=getattr(e, "message", None) or str(e),
                           fields=", ".join(k for k in row if not k.startswith("_"))) from None
    if nulls:
        raise FtcError("FTC405", template=t.name, row=nulls[0].get("row_id", "?"), field=_null_field(t, nulls[0]),
                       count=len(nulls))
    return out


def _null_field(t: Template, row: dict) -> str:
    """The field a template prints that is null in ``row`` (the first by name), as the error names it."""
    return next((v for v in sorted(variables(t)) if v in row and row[v] is None), "a value it prints")


def check_rendered(table: pa.Table, spec: dict, templates: dict[str, Template], *, all_rows: bool) -> None:
    """Refuse a rendered split that printed a null (FTC405) or, where ``all_rows`` (the
    train split), a template that rendered to nothing on every row (FTC407).

    Jinja refuses a null as it renders; the SQL lowering lets it through as a null
    output (DuckDB's ``||`` is null when a part is), found here in one pass per column.
    """
    import pyarrow.compute as pc

    n = table.num_rows
    if not n:
        return
    fields = [c for c in table.column_names if not c.startswith("_") and c != "row_id"]
    for key, value in spec.items():
        if key == "format" or key not in table.column_names:
            continue
        col = table.column(key).combine_chunks()
        if isinstance(value, dict) and "field" in value:
            if col.null_count:
                row = table.column("row_id")[pc.index(pc.is_null(col), True).as_py()].as_py()
                raise FtcError("FTC405", template=f"template.{key}.field", row=row, field=value["field"],
                               count=col.null_count)
            turns = col.flatten() if pa.types.is_list(col.type) and pa.types.is_struct(col.type.value_type) else None
            if turns is not None and {f.name for f in turns.type} == {"role", "content"} and turns.field("content").null_count:
                # nothing but the text could stand in for it (no tool_calls): the template would print 'None'
                at = pc.index(pc.is_null(turns.field("content")), True).as_py()
                i = int(np.searchsorted(col.offsets.to_numpy(), at, side="right")) - 1
                raise FtcError("FTC310", row=table.column("row_id")[i].as_py(), column=value["field"], key="content",
                               count=turns.field("content").null_count)
            continue
        if isinstance(value, list):  # chat turns from templates: k contents per row, in order
            k = len(value)
            content = col.flatten().field("content")
            parts = [(f"template.{key}[{j}].content", pc.take(content, pa.array(range(j, n * k, k), pa.int64())))
                     for j in range(k)]
        else:
            parts = [(f"template.{key}", col)]
        for jp, text in parts:
            t = templates[jp]
            if text.null_count:
                i = pc.index(pc.is_null(text), True).as_py()
                row = {c: table.column(c)[i].as_py() for c in fields if c in variables(t)}
                raise FtcError("FTC405", template=t.name, row=table.column("row_id")[i].as_py(), field=_null_field(t, row),
                               count=text.null_count)
            if all_rows and pc.all(pc.equal(pc.utf8_trim_whitespace(text), "")).as_py():
                raise FtcError("FTC407", template=t.name, rows=n, fields=", ".join(sorted(set(fields) - set(spec))))


def _line(e: BaseException, name: str) -> int | str:
    import traceback

    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if frame.filename in ("<template>", name):
            return frame.lineno
    return getattr(e, "lineno", None) or "?"


def check_fields(t: Template, fields: set[str], recipe_file: str, json_path: str) -> None:
    """Fail at compile time, before any row, when a template names a field no row has."""
    from ftc.errors import did_you_mean

    missing = sorted(variables(t) - fields - set(env().globals))
    if missing:
        raise FtcError("FTC401", file=recipe_file, path=json_path, template=t.name, line=_first_use(t, missing[0]),
                       row="(every row)", reason=f"{missing[0]!r} is undefined{did_you_mean(missing[0], fields)}",
                       fields=", ".join(sorted(fields)))


def _first_use(t: Template, name: str) -> int:
    for i, line in enumerate(t.source.splitlines(), 1):
        if name in line:
            return i
    return 1


def chat_sql(messages: list[tuple[str, str]]) -> str:
    """A DuckDB list of {role, content} structs from (role, content-expression) pairs."""
    items = ", ".join(f"struct_pack(role := {lit(r)}, content := {c})" for r, c in messages)
    return f"[{items}]"


def chat_arrow(roles: list[str], contents: list[list[str]]) -> pa.Array:
    """Arrow list<struct<role, content>> from per-message columns of rendered text."""
    n = len(contents[0]) if contents else 0
    k = len(roles)
    role_col = pa.array([roles[j] for _ in range(n) for j in range(k)], pa.string())
    content_col = pa.array([contents[j][i] for i in range(n) for j in range(k)], pa.string())
    structs = pa.StructArray.from_arrays([role_col, content_col], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array([i * k for i in range(n + 1)], pa.int32()), structs)
