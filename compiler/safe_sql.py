"""A recipe's SQL (`filter`, `derive`) is one row-wise data expression, checked on DuckDB's own parse.

The normalizer splices a user's expression into its own queries. Without a check, text such
as ``x; CREATE OR REPLACE VIEW t3 AS ...`` runs a second statement that redefines the data
(and the stage accounting no longer adds up), and a scalar subquery over ``duckdb_settings()``
or ``current_setting('home_directory')`` copies the machine's settings into the training data
and the lock's samples. So an expression is parsed by DuckDB itself (``json_serialize_sql`` of
``SELECT <expr>``: exactly one statement, one select item, no FROM/WHERE/... of its own), and
its parsed form is walked with an allow-list: the expression node classes a data expression is
made of, and DuckDB's deterministic scalar functions and macros minus those that read the
session, the catalog or the clock. A regex over the text could be fooled by quoting and
comments; the parse cannot.

The check needs no data and no connection of the normalizer's: `ftc validate` runs it too.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from ftc.errors import FtcError

# Expression node classes of a row-wise data expression. Not here: SUBQUERY (reads any table,
# duckdb_settings() included), STAR/COLUMNS (many columns), WINDOW (reads other rows), PARAMETER.
CLASSES = frozenset({"COLUMN_REF", "CONSTANT", "FUNCTION", "COMPARISON", "CONJUNCTION", "OPERATOR", "CASE", "CAST",
                     "BETWEEN", "LAMBDA", "LAMBDA_REF", "COLLATE", "TYPE"})
_CLASS_NAMES = {"SUBQUERY": "a subquery", "STAR": "a * / COLUMNS(...) expression", "WINDOW": "a window function (OVER)",
                "PARAMETER": "a prepared-statement parameter", "POSITIONAL_REFERENCE": "a positional reference (#1)",
                "DEFAULT": "DEFAULT"}
# Functions DuckDB calls deterministic (or stable within a query) that still read the session,
# the catalog, the clock or the host, not the row: the data would depend on the machine.
DENIED = frozenset({"getenv", "current_setting", "getvariable", "version", "now", "today", "get_current_time",
                    "get_current_timestamp", "transaction_timestamp", "ago", "in_search_path", "user", "session_user",
                    "col_description", "obj_description", "shobj_description", "format_type", "format_pg_type",
                    "get_block_size", "regexp_split_to_table", "unnest", "generate_subscripts"})
_DENIED_PREFIXES = ("current_", "pg_", "has_", "inet_", "txid_", "duckdb_", "pragma_")
# The top-level SELECT node's keys that must stay empty: the expression may not bring clauses.
_EMPTY_CLAUSES = ("where_clause", "having", "qualify", "sample")


@lru_cache(maxsize=1)
def functions() -> tuple[frozenset[str], frozenset[str]]:
    """(allowed, known): DuckDB's scalar functions and macros that are not volatile, minus the
    denied ones; and every function name DuckDB has (aggregates and table functions included).

    A name DuckDB does not know is left to its binder, which says "does not exist" with a
    did-you-mean (a typo is not an attack)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        rows = con.execute("SELECT function_name, function_type, stability FROM duckdb_functions()").fetchall()
    finally:
        con.close()
    volatile = {n for n, _, s in rows if s == "VOLATILE"}
    allowed = frozenset(n for n, kind, _ in rows if kind in ("scalar", "macro") and n not in volatile
                        and n not in DENIED and not n.startswith(_DENIED_PREFIXES))
    return allowed, frozenset(n for n, _, _ in rows) | DENIED


def _parse(expr: str) -> dict:
    """DuckDB's parse of ``SELECT <expr>`` as JSON, or the parser's own error."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        return json.loads(con.execute("SELECT json_serialize_sql(?::VARCHAR)", ["SELECT " + expr]).fetchone()[0])
    finally:
        con.close()


def check_expression(expr: str, *, path: str, file: str | None, fields: str = "(the source's columns)") -> None:
    """Refuse ``expr`` unless it is exactly one row-wise data expression (see the module doc).

    ``path`` is the JSON path of the expression in the recipe, and ``fields`` the fields it may
    name, for the errors."""
    if not isinstance(expr, str) or not expr.strip():
        raise FtcError("FTC320", file=file, path=path, expr=expr, what="an empty expression")
    import duckdb

    try:
        statements = duckdb.extract_statements("SELECT " + expr)
    except duckdb.Error as e:
        raise FtcError("FTC300", file=file, path=path, where=path, reason=str(e).splitlines()[0], expr=expr,
                       fields=fields) from None
    if len(statements) != 1:
        raise FtcError("FTC320", file=file, path=path, expr=expr, what=f"{len(statements)} SQL statements")
    if any(kind == duckdb.token_type.comment for _, kind in duckdb.tokenize(expr)):
        # spliced into the normalizer's query, a comment would swallow the text that follows it
        raise FtcError("FTC320", file=file, path=path, expr=expr, what="an expression with an SQL comment (-- or /* */)")
    parsed = _parse(expr)
    if parsed.get("error"):
        raise FtcError("FTC320", file=file, path=path, expr=expr,
                       what=f"not a SELECT expression ({parsed.get('error_message', 'DuckDB cannot read it')})")
    node = parsed["statements"][0]["node"]
    if node.get("type") != "SELECT_NODE":
        raise FtcError("FTC320", file=file, path=path, expr=expr, what=f"a {node.get('type', '?').lower()} query")
    items = node.get("select_list", [])
    clauses = [k for k in _EMPTY_CLAUSES if node.get(k)]
    if (node.get("from_table") or {}).get("type", "EMPTY") != "EMPTY":
        clauses.append("FROM")
    if node.get("group_expressions") or node.get("modifiers") or (node.get("cte_map") or {}).get("map"):
        clauses.append("GROUP BY / ORDER BY / LIMIT / WITH")
    if clauses:
        raise FtcError("FTC320", file=file, path=path, expr=expr, what=f"an expression followed by {', '.join(clauses)}")
    if len(items) != 1:
        raise FtcError("FTC320", file=file, path=path, expr=expr, what=f"{len(items)} comma-separated expressions")
    if items[0].get("alias"):
        raise FtcError("FTC320", file=file, path=path, expr=expr, what=f"an expression with an alias (AS {items[0]['alias']})")
    _walk(items[0], expr, path, file)


def _walk(node, expr: str, path: str, file: str | None) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, expr, path, file)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class")
    if cls is not None:
        if cls not in CLASSES:
            raise FtcError("FTC321", file=file, path=path, expr=expr, what=_CLASS_NAMES.get(cls, f"a {cls.lower()} expression"))
        if cls == "FUNCTION":
            _check_function(node, expr, path, file)
    for value in node.values():
        if isinstance(value, (dict, list)):
            _walk(value, expr, path, file)


def _check_function(node: dict, expr: str, path: str, file: str | None) -> None:
    name = str(node.get("function_name", "")).lower()
    if node.get("schema") or node.get("catalog"):
        raise FtcError("FTC321", file=file, path=path, expr=expr,
                       what=f"the qualified function {'.'.join(x for x in (node.get('catalog'), node.get('schema'), name) if x)}")
    if node.get("is_operator") or re.fullmatch(r"[^A-Za-z0-9_]+", name):
        return  # +, ||, ~~ (LIKE), ... : DuckDB's operators on values
    allowed, known = functions()
    if name in known and name not in allowed:
        raise FtcError("FTC321", file=file, path=path, expr=expr, what=f"the function {name}()")
