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
        from ftc.compiler.rewards import check_rewards
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
    """The first records of every file of a path source, mapped onto fields as `load_source` maps
    them (captures, columns), with the bookkeeping columns the normalizer expects."""
    import re

    from ftc.compiler import readers
    from ftc.compiler.lock import relpath
    from ftc.compiler.sources import discover, map_columns

    files, root = discover(recipe, name, spec)  # FTC200: nothing matches
    pattern = re.compile(spec["captures"]) if "captures" in spec else None
    tables = []
    for f in files:
        rel_recipe, rel_root = relpath(f, recipe.dir), relpath(f, root)
        fmt = spec.get("format") or readers.FORMATS.get(f.suffix.lower())
        if fmt is None:
            raise FtcError("FTC207", file=rel_recipe, format=f.suffix, source=name)
        res = _read_head(f, fmt, spec, rel_recipe, name)
        captured: dict[str, str] = {}
        if pattern is not None:
            m = pattern.search(rel_root)
            if not m:
                raise FtcError("FTC204", file=rel_recipe, source=name, pattern=spec["captures"])
            captured = {k: v for k, v in m.groupdict().items() if v is not None}
        table, _ = map_columns(res.table, spec.get("columns"), captured, rel_recipe, name)
        n = table.num_rows
        table = table.append_column("_source", pa.array([name] * n, pa.string()))
        table = table.append_column("_file", pa.array([rel_root] * n, pa.string()))
        tables.append(table.append_column("_row", pa.array(range(1, n + 1), pa.int64())))
    try:
        return pa.concat_tables(tables, promote_options="permissive"), len(files)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FtcError("FTC202", file=relpath(files[0], recipe.dir), format="table", source=name,
                       reason=f"files of source {name!r} disagree on column types: {e}") from None


def _read_head(f: Path, fmt: str, spec: dict, rel: str, source: str):
    """A file's first records through the real reader: the first HEAD_BYTES cut at a line end
    (CSV, TSV, JSONL), the first batch of a parquet file, a JSON array whole. A head the reader
    cannot take (a quoted field across the cut) is read whole instead."""
    from ftc.compiler import readers

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(f)
            batch = next(pf.iter_batches(batch_size=256), None)
            table = pa.Table.from_batches([batch]) if batch is not None else pf.schema_arrow.empty_table()
            return readers.ReadResult(table, None)
        except (pa.ArrowException, OSError):
            pass  # the reader says what is wrong, with its own error
    encoding, delimiter = spec.get("encoding", "auto"), spec.get("delimiter")
    if fmt in ("csv", "tsv", "jsonl"):
        with open(f, "rb") as fh:
            data = fh.read(HEAD_BYTES + 1)
        cut = data.rfind(b"\n", 0, HEAD_BYTES)
        if len(data) > HEAD_BYTES and cut > 0:
            try:
                return readers.read_file(data[: cut + 1], fmt, encoding, delimiter, rel, source)
            except FtcError:
                pass
    return readers.read_file(f.read_bytes(), fmt, encoding, delimiter, rel, source)
