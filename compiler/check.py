"""`ftc validate`: what can be checked without reading the data in full.

The files and folders a recipe names exist; the first records of every source file (a CSV's
header and first lines, a JSONL file's first lines, a parquet file's first batch) go through
the real column mapping and the real DuckDB steps, so a misspelled column, a field a step or
template names that no source provides, and SQL that does not parse or bind are refused
here, with the same errors `ftc compile` gives; templates parse; rewards compile (regexes,
python files parsed, never run).

What only the whole data can say (a value a CAST fails on further down, a filter that leaves
no rows, the token lengths) is left to `ftc compile`: a step that leaves the sample empty is
not an error here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ftc.errors import FtcError

HEAD_BYTES = 1 << 16  # of each text file: a header and a few hundred records


@dataclass(frozen=True)
class Checked:
    """What validate looked at, for its one line of output."""

    files: int
    sample_rows: int
    fields: tuple[str, ...]
    not_checked: tuple[str, ...]  # sources validate cannot sample (Hugging Face datasets)


def check_recipe(recipe) -> Checked:
    """Raise the first problem `ftc compile` would hit in the recipe's files, fields, SQL,
    templates and rewards, found on the first records of each source file."""
    from ftc.compiler import render
    from ftc.compiler.compile import _templates
    from ftc.compiler.normalize import Normalizer

    file = str(recipe.path)
    _parse_expressions(recipe.data, file)
    norm = Normalizer(file, empty_ok=True)
    tables, not_checked, n_files, ord_base, rows = {}, [], 0, 0, 0
    for name, spec in recipe.data["sources"].items():
        if "hf" in spec:
            not_checked.append(name)
            continue
        table, count = _head(recipe, name, spec)
        n_files += count
        rows += table.num_rows
        t = norm.register(table.append_column("_ord", pa.array(range(ord_base, ord_base + table.num_rows), pa.int64())))
        ord_base += table.num_rows
        for i, step in enumerate(spec["transforms"]):
            t = norm.apply(t, step, f"sources.{name}.transforms[{i}]")
        tables[name] = t
    templates = _templates(recipe, recipe.data["template"])  # reads template files: FTC402 when one is missing
    for tpl in templates.values():
        render.compile_template(tpl)
    if not tables:  # only Hugging Face sources: their fields are not known without loading them
        return Checked(n_files, rows, (), tuple(not_checked))
    if not_checked:  # fields of the sampled sources alone would call the others' fields unknown
        return Checked(n_files, rows, (), tuple(not_checked))
    t = norm.mix(tables, recipe.data["mix"]) if len(tables) > 1 or recipe.data["mix"] else next(iter(tables.values()))
    for i, step in enumerate(recipe.data["transforms"]):
        t = norm.apply(t, step, f"transforms[{i}]")
    fields = set(norm.fields(t))
    for jp, tpl in templates.items():
        render.check_fields(tpl, fields, file, jp)
    spec = recipe.data["template"]
    if spec["format"] == "messages" and isinstance(spec["messages"], dict):
        norm._check_fields(t, [spec["messages"]["field"]], "template.messages.field")
    train = recipe.data["train"]
    if train["method"] == "grpo":
        from ftc.compiler.reward_check import check_rewards
        from ftc.compiler.schedule import check_grpo_batch

        check_grpo_batch(train, file=file)
        check_rewards(train["grpo"]["rewards"], fields=fields, allow_python=train["grpo"]["allow_python"],
                      recipe_dir=recipe.dir, file=file)
    norm._check_fields(t, recipe.data["split"].get("key") or [], "split.key")
    return Checked(n_files, rows, tuple(sorted(fields)), ())


def _parse_expressions(data: dict, file: str) -> None:
    """Every filter and derive expression, parsed and checked even where no sample binds it
    (a Hugging Face source's steps)."""
    from ftc.compiler.safe_sql import check_expression

    steps = [(f"sources.{n}.transforms[{i}]", st) for n, src in data["sources"].items() for i, st in enumerate(src["transforms"])]
    steps += [(f"transforms[{i}]", st) for i, st in enumerate(data["transforms"])]
    for where, step in steps:
        if "filter" in step:
            check_expression(step["filter"]["where"], path=f"{where}.filter", file=file)
        for name, expr in (step.get("derive") or {}).items():
            check_expression(expr, path=f"{where}.derive.{name}", file=file)


def _head(recipe, name: str, spec: dict) -> tuple[pa.Table, int]:
    """The first records of every file of a path source, made into rows by the very function
    compile uses (``sources.file_table``: decoding, captures, columns, bookkeeping columns)."""
    from ftc.compiler import discovery
    from ftc.compiler.lock import relpath
    from ftc.compiler.sources import capture_pattern, file_table

    found = discovery.discover(recipe, name, spec)  # FTC200: nothing matches
    pattern = capture_pattern(recipe, name, spec)
    tables = []
    for f in found.files:
        data, compressed, whole = _read_head(f, spec)
        try:
            table = file_table(recipe, name, spec, f, found.root, pattern, data, compressed)[0]
        except FtcError:
            if whole:
                raise
            # a head the reader cannot take (a quoted field across the cut): the whole file says
            table = file_table(recipe, name, spec, f, found.root, pattern, f.read_bytes())[0]
        tables.append(table)
    try:
        return pa.concat_tables(tables, promote_options="permissive"), len(found.files)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FtcError("FTC202", file=relpath(found.files[0], recipe.dir), format="table", source=name,
                       reason=f"files of source {name!r} disagree on column types: {e}") from None


def _read_head(f: Path, spec: dict) -> tuple[bytes, bool, bool]:
    """(bytes, still compressed, whole file) of a file's head: the first HEAD_BYTES cut at a
    line end for an uncompressed CSV, TSV or JSONL file, the first complete objects of an
    uncompressed UTF-8 JSON array (as an array of them); the whole file otherwise (a parquet file
    cannot be cut, and a compressed one is decompressed by the reader)."""
    from ftc.compiler import discovery, readers

    suffix, compression = discovery.data_suffix(f)
    fmt = spec.get("format") or readers.FORMATS.get(suffix)
    if compression is None and fmt in ("csv", "tsv", "jsonl"):
        with open(f, "rb") as fh:
            data = fh.read(HEAD_BYTES + 1)
        cut = data.rfind(b"\n", 0, HEAD_BYTES)
        if len(data) > HEAD_BYTES and cut > 0:
            return data[: cut + 1], False, False
    if compression is None and fmt == "json" and spec.get("encoding", "auto") in ("auto", "utf-8", "utf8"):
        with open(f, "rb") as fh:
            data = fh.read(HEAD_BYTES + 1)
        head = _json_array_head(data) if len(data) > HEAD_BYTES else None
        if head is not None:
            return head, False, False
    return f.read_bytes(), True, True


def _json_array_head(data: bytes) -> bytes | None:
    """A JSON array of the first complete objects of a UTF-8 JSON array's head (``json_read.head_objects``,
    the elements as compile reads them), as UTF-8 bytes. None where the head is not plainly that (not
    UTF-8, not an array of objects, no object complete in it): the caller then reads the whole file,
    as compile does."""
    import codecs
    import json

    from ftc.compiler.json_read import head_objects

    bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    try:  # a multi-byte character cut at the end of the head is left out, not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(data[len(bom):], final=False)
    except UnicodeDecodeError:
        return None
    objects = head_objects(text)
    return json.dumps(objects, ensure_ascii=False).encode("utf-8") if objects else None
