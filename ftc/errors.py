"""User-facing errors, each defined once: a code, a message template and a hint.

Like Ruff's diagnostics, every error a person can cause has a stable code, says
where it happened (file, JSON path or row), what was expected, and what to do.
The CLI prints them without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Rule:
    code: str
    message: str  # str.format template
    hint: str = ""  # str.format template


RULES: dict[str, Rule] = {
    r.code: r
    for r in [
        Rule("FTC100", "cannot read recipe: {reason}", "check the path; recipes are JSON files"),
        Rule("FTC101", "recipe is not valid JSON: {reason}", "fix the JSON syntax at line {line}, column {col}"),
        Rule("FTC102", "{reason}", "{hint}"),  # schema violation (message built from jsonschema)
        Rule("FTC103", "unknown key {key!r}", "{hint}"),
        Rule("FTC104", "bad --set {arg!r}: {reason}", "write --set KEY=VALUE with KEY a dotted path, e.g. train.learning_rate=1e-4"),
        Rule("FTC105", "{reason}", "{hint}"),  # semantic recipe error (cross-field)
        Rule("FTC200", "no files match {pattern!r}", "check sources.{source}.path; it is relative to the recipe file ({base})"),
        Rule("FTC201", "cannot decode {file}: {detail}", "declare the file's encoding in sources.{source}.encoding (e.g. \"gb18030\") or fix the file"),
        Rule("FTC202", "cannot parse {file} as {format}: {reason}", "declare sources.{source}.format, or fix the file"),
        Rule("FTC203", "{file}: none of the columns {wanted} for field {field!r} is present", "available columns: {available}{suggest}"),
        Rule("FTC204", "{file}: path does not match sources.{source}.captures {pattern!r}", "every file of the source must match; adjust the pattern or the path"),
        Rule("FTC205", "cannot load Hugging Face dataset {name!r}: {reason}", "check sources.{source}.name/config/split/revision; offline, point 'path' at a local copy instead"),
        Rule("FTC206", "{file} row {row}: role {role!r} is not in sources.{source}.columns.{field}.roles", "add it to the role map, e.g. \"{role}\": \"assistant\" (mapped roles: {mapped})"),
        Rule("FTC207", "unknown format {format!r} for {file}", "declare sources.{source}.format as one of csv, tsv, json, jsonl, parquet"),
        Rule("FTC300", "SQL error in {where}: {reason}\n  expression: {expr}", "expressions are DuckDB SQL over the fields: {fields}"),
        Rule("FTC301", "{where}: unknown field {field!r}", "known fields: {fields}{suggest}"),
        Rule("FTC302", "no rows left after {stage}", "{counts}; relax that step or check the input"),
        Rule("FTC303", "invalid regex in {where}: {reason}", "Python/RE2-style regex; escape backslashes in JSON (\"\\\\d\")"),
        Rule("FTC304", "strip applies to text fields; {field!r} is {type}",
             "name only text fields, or write \"strip\": true to strip every text field; "
             "to strip it as text, derive a text copy first: {{\"derive\": {{\"{field}\": \"{field}::VARCHAR\"}}}}"),
        Rule("FTC305", "{step} failed on {row}: {reason}\n  expression: {expr}",
             "fix that value in the data, or let the expression yield NULL instead of failing "
             "(TRY_CAST(x AS INTEGER), try(expr)) and drop those rows with a filter"),
        Rule("FTC306", "mix names an unknown source {name!r}", "mix keys are source names: {sources}{suggest}"),
        Rule("FTC400", "template {template} line {line}: {reason}", "fix the Jinja syntax"),
        Rule("FTC401", "template {template} line {line}, row {row}: {reason}", "available fields: {fields}"),
        Rule("FTC402", "template {template}: {reason}", "{hint}"),
        Rule("FTC500", "cannot read lock {file}: {reason}", "compile one with `ftc compile RECIPE -o {file}`"),
        Rule("FTC501", "{file} was written by ftc {version}, newer than this ftc {ours}", "upgrade ftc, or recompile the recipe with this version"),
        Rule("FTC502", "{file}: plan_hash does not match its content (the lock was edited by hand)", "recompile the recipe instead of editing the lock"),
        Rule("FTC503", "artifact {file} is missing or changed", "recompile: `ftc compile {recipe}`"),
        Rule("FTC504", "source {file} changed since the plan was compiled ({what})", "nothing trains on data the lock does not describe: recompile with `ftc compile {recipe} -o {lock}`"),
        Rule("FTC505", "{file}: the lock's recipe ({recipe_rel}, relative to the lock) is not there: the lock was moved away from its project, or the recipe was removed",
             "keep the lock where `ftc compile -o` wrote it (its paths are relative to the recipe), or compile again: `ftc compile RECIPE -o {lock}`"),
        Rule("FTC506", "tokenizer {file} differs from the one the plan was compiled with ({changed} changed)",
             "the token ids in the artifacts came from the old tokenizer: recompile with `ftc compile {recipe} -o {lock}`"),
        Rule("FTC507", "python reward drift: {problems}",
             "the lock holds the sha256 of the reward file that was reviewed: recompile the recipe so it records the file you mean to run (`ftc compile RECIPE -o LOCK`)"),
        Rule("FTC600", "cannot load tokenizer {name!r}: {reason}", "offline? point model.tokenizer at a local folder: --set model.tokenizer=PATH"),
        Rule("FTC601", "{reason}", "{hint}"),  # tokenization / masking problem
        Rule("FTC700", "{reason}", "{hint}"),  # ftc run / infer / eval / export: a problem the user can fix
    ]
}


class FtcError(Exception):
    """An error a person can fix. ``str(err)`` is the full, printable message."""

    def __init__(self, code: str, *, file: str | None = None, path: str | None = None, **fields: object):
        rule = RULES[code]
        self.code = code
        self.file = file
        self.path = path
        self.fields = fields
        values = {"file": file, "path": path, **fields}
        self.message = rule.message.format(**values)
        self.hint = rule.hint.format(**values) if rule.hint else ""
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file and self.file not in self.message:
            where += f"{self.file}"
        if self.path:
            where += f"{': ' if where else ''}at {self.path}"
        head = f"error[{self.code}]: {where + ': ' if where else ''}{self.message}"
        return head + (f"\n  hint: {self.hint}" if self.hint else "")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
