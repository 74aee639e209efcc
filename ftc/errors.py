"""User-facing errors, each defined once: a code, a message template and a hint.

Like Ruff's diagnostics, every error a person can cause has a stable code, says
where it happened (file, JSON path or row), what was expected, and what to do.
The CLI prints them without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Rule:
    """One diagnostic: its code, and what it says as templates the call site fills with values.

    A call site passes facts (a field name, a count, a row), never prose, so the wording of
    each error lives here once; tests/test_errors.py checks that every call site passes the
    fields its rule's templates name."""

    code: str
    message: str  # str.format template
    hint: str = ""  # str.format template

    def fields(self) -> set[str]:
        """The names the message and hint templates use (``file`` and ``path`` included)."""
        return {name.split(".")[0].split("[")[0] for text in (self.message, self.hint)
                for _, name, _, _ in string.Formatter().parse(text) if name}


RULES: dict[str, Rule] = {
    r.code: r
    for r in [
        # ---- 1xx the recipe: reading, the schema, settings that contradict each other
        Rule("FTC100", "cannot read recipe: {reason}", "check the path; recipes are JSON files"),
        Rule("FTC101", "recipe is not valid JSON: {reason}", "fix the JSON syntax at line {line}, column {col}"),
        # Generic on purpose: a formatter for what jsonschema reports (required, type, enum, ...);
        # the hint is the schema's own description of the key, so the schema stays the one source.
        Rule("FTC102", "{reason}", "{hint}"),
        Rule("FTC103", "unknown key {key!r}", "keys allowed here: {allowed}{suggest}"),
        Rule("FTC104", "bad --set {arg!r}: {reason}", "write --set KEY=VALUE with KEY a dotted path, e.g. train.learning_rate=1e-4"),
        Rule("FTC106", "split.eval is {value}: neither a share below 1 nor a whole row count",
             "use e.g. 0.05 (5% of the rows) or 200 (rows)"),
        Rule("FTC107", "train.warmup_steps ({steps}) and train.warmup_ratio ({ratio}) are both set, and one would be ignored",
             "keep one: warmup_steps (a step count) or warmup_ratio (a share of the total steps)"),
        Rule("FTC108", "GRPO trains on prompts; template.format is {format!r}",
             "use \"format\": \"prompt\" (completions are generated and scored by the rewards)"),
        Rule("FTC109", "format \"prompt\" has nothing to learn with SFT (a prompt row has no completion)",
             "use prompt_completion, messages or text, or set train.method to \"grpo\""),
        # -- 11x the schedule: batch and step arithmetic (compiler/schedule.py)
        Rule("FTC110", "train.max_steps 0 trains no step (the Trainer would still take one)",
             "use -1 to train num_train_epochs, or a positive number of optimizer steps"),
        Rule("FTC111", "per_device_train_batch_size {batch} x gradient_accumulation_steps {accumulation}{processes} = "
                       "{completions} completions per generation, which is not a multiple of train.grpo.num_generations ({generations})",
             "in GRPO a batch counts completions, {generations} per prompt: set per_device_train_batch_size to {batch_up} "
             "(or another multiple of {generations}), or lower num_generations to a divisor of {completions}"),
        Rule("FTC112", "the train split has {prompts} prompts, fewer than one generation batch takes ({completions} completions = "
                       "{per_generation} prompts x {generations} generations): no step would train",
             "use more rows, or a smaller per_device_train_batch_size x gradient_accumulation_steps or num_generations"),
        # -- 12x GRPO rewards (compiler/rewards.py)
        Rule("FTC120", "GRPO needs at least one reward", "declare one in train.grpo.rewards, e.g. {example}"),
        Rule("FTC121", "a reward is a JSON object, not {type}", "e.g. {example}"),
        Rule("FTC122", "reward has no 'kind'", "kind is one of: {kinds}"),
        Rule("FTC123", "unknown reward kind {kind!r}", "kind is one of: {kinds}{suggest}"),
        Rule("FTC124", "{kind} reward needs {key!r}", "e.g. {example}"),
        Rule("FTC125", "length reward needs min, max or both", "e.g. {example}"),
        Rule("FTC126", "answer pattern has no group to extract the answer with: {pattern}",
             "put parentheses around the answer part, e.g. 最终答案[:：]\\s*(-?[\\d,.]+)"),
        Rule("FTC127", "tolerance only applies to compare \"numeric\" (this reward compares {compare!r})",
             "set \"compare\": \"numeric\", or drop tolerance"),
        Rule("FTC128", "max ({max}) is below min ({min})", "max and min are character counts with min <= max"),
        Rule("FTC129", "reward name {name!r} is also used by {other}",
             "names label the logged metrics rewards/<name>/mean; give each reward its own"),
        # -- 13x python rewards, checked by parsing the file, never by running it (compiler/reward_python.py)
        Rule("FTC130", "reward runs Python ({function}), and the recipe does not allow Python",
             "if you trust that file, set train.grpo.allow_python: true; or declare the reward as regex, answer, length or contains"),
        Rule("FTC131", "cannot read {function!r} as FILE.py:function",
             "write the file's path relative to the recipe, a colon, and the function, e.g. rewards.py:my_reward"),
        Rule("FTC132", "reward file {reward_file} is an absolute path",
             "give the path relative to the recipe folder, so the lock works on another machine"),
        Rule("FTC133", "cannot read reward file {reward_file} ({reason})", "the path is relative to the recipe folder: {recipe_dir}"),
        Rule("FTC134", "reward file {reward_file} line {line}: {reason}", "fix the Python syntax"),
        Rule("FTC135", "{reward_file} defines no top-level function {function!r}", "functions defined there: {defined}{suggest}"),
        Rule("FTC136", "{reward_file}:{function} is async", "write it as a plain def"),
        Rule("FTC137", "{reward_file}:{function} takes no completion parameter",
             "define it as def {function}(completion, **fields) -> float"),
        # -- 14x the recipe's JSON text: what Python's json would take silently
        Rule("FTC140", "duplicate key {key!r} (lines {first} and {second}): JSON keeps the last and drops the first silently",
             "keep one {key!r} in that object (merge the two if both hold settings you mean)"),
        Rule("FTC141", "{value} is not a finite number (JSON has no NaN or Infinity; Python's json reads them anyway)",
             "write a finite number"),
        Rule("FTC142", "--set {arg!r}: {value} at {key} is not a finite number",
             "give a finite number, e.g. --set train.learning_rate=1e-4"),
        # -- 15x keys that do not apply to the recipe's method, format or model (checked as written, before defaults)
        Rule("FTC150", "train.packing applies to SFT, and train.method is \"grpo\" (GRPO generates its completions; it packs nothing)",
             "drop train.packing (or set it to false) under GRPO"),
        Rule("FTC151", "train.micro_batch \"auto\" applies to SFT, and train.method is \"grpo\": "
                       "GRPO keeps the plan's split (a batch is a group of completions)",
             "drop train.micro_batch (or set it to \"plan\") under GRPO; per_device_train_batch_size is the micro-batch"),
        Rule("FTC152", "train.eval_steps evaluates the eval split, and split.eval is 0: there is no eval split",
             "set split.eval (a share such as 0.05, or a row count), or drop train.eval_steps"),
        Rule("FTC153", "train.{key} sets the loss mask of format {applies!r}, and template.format is {format!r}",
             "drop train.{key}: it does not apply to format {format!r}"),
        Rule("FTC154", "model.config overrides the config of a model built with random weights, and model.init is {init!r}",
             "set model.init to \"random\" to build the model from its config, or drop model.config "
             "(a pretrained model keeps the config it was trained with)"),
        Rule("FTC155", "train.grpo configures GRPO, and train.method is {method!r}",
             "set train.method to \"grpo\", or drop train.grpo"),
        # -- 156+ files a recipe reads (templates, python rewards) come from inside the project
        Rule("FTC156", "{what} {target!r} ({resolved}) lies outside the project ({roots})",
             "a recipe reads template and reward files only from its own folder or a folder named with --root DIR: "
             "move the file into the project, or pass --root with the folder that holds it (data sources are not limited)"),
        Rule("FTC157", "--root {root} is not a folder", "name an existing folder that holds the recipe's template or reward files"),
        # -- 16x bounds on untrusted recipe input (compiler/rewards.py, runtime sizes)
        Rule("FTC166", "reward pattern {pattern!r} cannot run on RE2, the linear-time regex engine rewards are scored with: {reason}",
             "RE2 has no backreferences (\\1) and no look-around ((?=...), (?!...), (?<=...)): rewrite the pattern without them "
             "(syntax: https://github.com/google/re2/wiki/Syntax)"),
        Rule("FTC167", "{value} is larger than {limit}, the largest {what} ftc accepts",
             "seeds are below 2^32 (numpy's seed range), counts and sizes below 2^31: "
             "a larger value overflows the Trainer's integers instead of training"),
        Rule("FTC168", "cannot use {folder} as the artifact cache: {reason}",
             "output.cache_dir must be a folder ftc can create and write (it is relative to the recipe file)"),
        Rule("FTC169", "cannot write the lock {output}: {reason}", "give -o a path in a folder you can write"),
        # -- 19x a free string of the plan checked against the trainer's own choices
        Rule("FTC195", "train.optim {optim!r} is not an optimizer of the installed transformers{suggest}",
             "one of: {choices}"),
        Rule("FTC196", "train.fsdp word {word!r} is not an FSDP option of the installed transformers{suggest}",
             "train.fsdp is space-separated words, each one of: {choices} ('' trains with DDP)"),
        Rule("FTC197", "train.fsdp {fsdp!r} names the sharding strategy {strategies}; the installed transformers "
             "takes exactly one of {allowed}",
             "write one sharding strategy: {allowed} (hybrid and no_shard are FSDP1's, which ftc does not configure)"),
        Rule("FTC180", "train.method {method!r} trains on template.format {needs!r}, and template.format is {format!r}",
             "write template.format \"{needs}\" ({keys}), or choose a train.method for {format!r}: {methods}"),
        Rule("FTC181", "train.{key} configures {key}, and train.method is {method!r}",
             "set train.method to \"{key}\", or drop train.{key}"),
        Rule("FTC183", "KTO estimates its KL term from the other completions of a batch, and per_device_train_batch_size is {batch}",
             "set train.per_device_train_batch_size to 2 or more (or train.kto.loss_type \"apo_zero_unpaired\", which has no KL term)"),
        Rule("FTC184", "train.dpo.label_smoothing {value} is read by DPO's losses {losses}, and train.dpo.loss_type is {loss!r}, "
                       "which TRL computes without it",
             "drop train.dpo.label_smoothing, or choose a loss_type that reads it (robust is conservative DPO)"),
        Rule("FTC185", "train.dpo.loss_type {loss!r} needs a label_smoothing {need}, and it is {value}",
             "set train.dpo.label_smoothing {need}"),
        Rule("FTC182", "train.packing applies to SFT, and train.method is {method!r} (a preference example is trained as whole sequences, not packed)",
             "drop train.packing"),
        # -- 17x model.adapter: the earlier run a plan starts from
        Rule("FTC170", "model.adapter {folder} is not a LoRA adapter: it has no {missing}",
             "point model.adapter at the output folder of `ftc run` or at a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)"),
        Rule("FTC171", "model.adapter {folder} was trained on base model {base!r}{init}, and model.name is {ours!r} (init {our_init})",
             "an adapter fits only the base it was trained on: set model.name (and model.init) to that base, or train a new adapter"),
        Rule("FTC172", "model.adapter is merged into the base weights, and model.load_in_4bit quantizes them: the merge would round the adapter's update away",
             "set model.load_in_4bit to false for a run that starts from an adapter"),
        # ---- 2xx sources: files, formats, encodings, columns
        Rule("FTC200", "no files match {pattern!r}", "check sources.{source}.path; it is relative to the recipe file ({base})"),
        Rule("FTC201", "cannot decode {file}: {detail}", "declare the file's encoding in sources.{source}.encoding (e.g. \"gb18030\") or fix the file"),
        Rule("FTC202", "cannot parse {file} as {format}: {reason}", "declare sources.{source}.format, or fix the file"),
        Rule("FTC203", "{file}: none of the columns {wanted} for field {field!r} is present", "available columns: {available}{suggest}"),
        Rule("FTC204", "{file}: path does not match sources.{source}.captures {pattern!r}", "every file of the source must match; adjust the pattern or the path"),
        Rule("FTC205", "cannot load Hugging Face dataset {name!r}: {reason}", "check sources.{source}.name/config/split/revision; offline, point 'path' at a local copy instead"),
        Rule("FTC206", "{file} row {row}: role {role!r} is not in sources.{source}.columns.{field}.roles",
             "add it to the role map, e.g. \"{role}\": \"{suggested}\" ({why}; mapped roles: {mapped})"),
        Rule("FTC207", "unknown format {format!r} for {file}", "declare sources.{source}.format as one of csv, tsv, json, jsonl, parquet"),
        Rule("FTC208", "unknown encoding {encoding!r}",
             "set sources.{source}.encoding to a Python codec name such as utf-8, gb18030, big5, latin-1, or to \"auto\""),
        Rule("FTC209", "field {field!r} is both the column {column!r} and a path capture of sources.{source}.captures",
             "rename the capture group or the field, so each field has one origin"),
        Rule("FTC210", "column {column!r} is {type}, not a list of turns",
             "map a column that holds a list of objects, such as ShareGPT 'conversations'"),
        Rule("FTC211", "the turns of column {column!r} have no key {key!r} (their keys: {keys})",
             "set sources.{source}.columns.{field}.role_key and content_key to the turns' keys (defaults: \"from\", \"value\")"),
        Rule("FTC212", "sources.{source}.{key} applies to files read from 'path', and source {source!r} is a Hugging Face dataset ('hf')",
             "drop sources.{source}.{key} (the dataset's own loader reads it); to read the files yourself, give 'path' instead of 'hf'"),
        # -- 213-239 reading source files exactly (compiler/decoding.py, readers.py, discovery.py, csv_records.py)
        Rule("FTC213", "{file} is UTF-8 except {count} byte(s) that are not, the first at byte offset {offset} (line {line}): "
                       "{context}; it is UTF-8 with a defect ({why}), and decoding it as GB18030 would garble every row",
             "fix those bytes; or set sources.{source}.encoding_errors to \"replace\" to read them as U+FFFD (counted in the lock); "
             "or, if the whole file is in another codec, declare it in sources.{source}.encoding (cp1252 writes \u2019 as 0x92)"),
        Rule("FTC214", "{file} is not UTF-8 (byte offset {offset}, line {line}: {context}) and does not read as GB18030 text "
                       "({share} of its {chars} non-ASCII characters are common GB2312 ones)",
             "declare the file's codec in sources.{source}.encoding (e.g. cp1252, latin-1, big5), or set "
             "sources.{source}.encoding_errors to \"replace\" to read it as UTF-8 with U+FFFD, counted"),
        Rule("FTC215", "{file} line {line}: a quoted value starts in this record and runs over {lines} lines, to line {end}: {why} "
                       "(an unbalanced quote merges rows)",
             "close the quote on line {line} (a quote inside a value is written twice, \"\"); if the value really spans "
             "those lines, set sources.{source}.on_malformed to \"warn\" to read it as parsed (reported in the lock)"),
        Rule("FTC216", "cannot decompress {file} as {compression}: {reason}",
             "the name's last suffix says {compression}: recompress the file, or rename it to what it holds"),
        Rule("FTC217", "{file}: the header names the column {column!r} twice (columns {first} and {second})",
             "rename one of them in the file's header: every column needs its own name (the second would be lost)"),
        Rule("FTC218", "the delimiter {delimiter!r} is {why}, and a CSV delimiter is one byte other than a line break or a quote",
             "use one ASCII character such as \",\", \"\\t\", \";\" or \"|\""),
        Rule("FTC219", "{encoding!r} is not a text encoding (a Python codec between bytes and bytes, or text and text)",
             "set sources.{source}.encoding to a text codec such as utf-8, gb18030, big5, latin-1, or to \"auto\""),
        Rule("FTC220", "{file} has no rows: {what}", "remove the file from the source (narrow the path or glob), or give it rows"),
        Rule("FTC221", "{file}: element {index} of the array is a {type} ({value}), not an object",
             "every element of a JSON array source is one row, an object of fields"),
        Rule("FTC222", "{file}: the column {column!r} has the name of a column ftc adds itself ({internal})",
             "rename it through sources.{source}.columns, e.g. {{\"{column}_\": \"{column}\"}}"),
        Rule("FTC223", "sources.{source}.delimiter applies to csv and tsv files, and {file} is {format}",
             "drop sources.{source}.delimiter (or set sources.{source}.format to csv)"),
        Rule("FTC224", "sources.{source}.{key} applies to {applies} files, and this source reads {format}",
             "drop sources.{source}.{key}: nothing would read it"),
        Rule("FTC240", "{files}: no field {field!r} for template.{key} (format {format!r})",
             "fields there: {fields}{suggest}; map a column onto it in sources.<name>.columns, e.g. \"{field}\": \"COLUMN\""),
        Rule("FTC241", "template.label: field {field!r} is {type}, not boolean (row {row} holds {value})",
             "KTO's label says whether the completion is desirable: map a column of true/false onto it"),
        Rule("FTC242", "row {row}: {first} and {second} give different prompts (from turn {turn} on)",
             "a preference pair answers one prompt: fix the row, or leave it out with a filter"),
        Rule("FTC243", "row {row}: {key} is {what}, not a completion",
             "a completion is a string, an assistant turn ({{role, content}} or {{from, value}}), or chat turns ending with an assistant turn"),
        Rule("FTC244", "row {row}: there is no prompt: template.prompt is not given and {key} holds no turns before its answer",
             "give template.prompt (e.g. {{\"field\": \"prompt\"}}), or map chat turns that include the prompt onto {key}"),
        # ---- 3xx transforms (DuckDB steps)
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
        # -- 307-319: column mapping and stage accounting: nothing lost or invented (compiler/sources.py, duckdb_engine.py)
        Rule("FTC307", "field {field!r}: its alternative columns have types that cannot be one field ({types})",
             "map them to separate fields, or list only columns of one kind (text, or lists of turns)"),
        Rule("FTC308", "internal error: {stage}: {rows_in} rows in, {rows_out} rows out and {dropped} counted as dropped do not add up",
             "the stage lost or invented rows without counting them; this is a bug in ftc (or an expression that "
             "changed more than its own value): please report it with the recipe"),
        Rule("FTC310", "row {row}: a turn of column {column!r} has a null {key!r} ({count} turns do), which a chat template "
                       "would print as 'None'",
             "fix or drop those rows in the data; a turn's text is never made up"),
        Rule("FTC311", "{where}: {name!r} is a name ftc keeps for its own bookkeeping ({internal})",
             "give the field another name: writing it would change the rows' identity or order, not a field"),
        Rule("FTC312", "the turns of column {column!r} hold {type} under {key!r}, not text",
             "point content_key at the key that holds each turn's text"),
        Rule("FTC309", "sources.{source}.captures {pattern!r} has no named group, so it captures no field",
             "name each part to capture, e.g. ^(?P<department>[^/]+)/ (groups become fields)"),
        # -- 32x the SQL surface of filter/derive (compiler/safe_sql.py): one row-wise expression, nothing else
        Rule("FTC320", "an expression is one SQL expression, and this is {what}\n  expression: {expr}",
             "write one value over the row's fields, e.g. length(question) > 10 AND answer IS NOT NULL; "
             "a second statement, clause or comment is not part of a data expression"),
        Rule("FTC321", "{what} is not allowed in a data expression\n  expression: {expr}",
             "filter and derive read the row's own fields with DuckDB's deterministic scalar functions; "
             "subqueries, windows, table functions, settings, the clock and random numbers are refused"),
        # ---- 4xx templates (Jinja, and the template section of the recipe)
        Rule("FTC400", "template {template} line {line}: {reason}", "fix the Jinja syntax"),
        Rule("FTC401", "template {template} line {line}, row {row}: {reason}", "available fields: {fields}"),
        Rule("FTC402", "cannot read template file {template}: {reason}", "template files are relative to the recipe file's folder ({base})"),
        Rule("FTC403", "format {format!r} needs template.{key}",
             "add \"{key}\": an inline Jinja string or {{\"file\": \"templates/....jinja\"}}"),
        Rule("FTC404", "format {format!r} does not use template.{key}", "format {format!r} takes: {keys}"),
        # -- 405-419: rendering prints what the data holds, never a stand-in (compiler/render.py, encode.py)
        Rule("FTC405", "template {template}, row {row}: field {field!r} is null, and Jinja would print it as 'None' "
                       "({count} rows print a null)",
             "drop those rows first ({{\"drop_empty\": [\"{field}\"]}}), or say what to print instead, "
             "e.g. {{{{ {field} or '' }}}} or {{% if {field} %}}...{{% endif %}}"),
        Rule("FTC406", "template {template} is empty", "write the Jinja text that makes this part of the row, e.g. {{{{ question }}}}"),
        Rule("FTC407", "template {template} renders to nothing (empty or only whitespace) on all {rows} rows",
             "check the fields it prints and the conditions around them; the rows have: {fields}"),
        Rule("FTC408", "row {row}: tools is not a list of tool definitions: {reason}",
             "tools hold the JSON schemas of the functions the model may call, as a list or its JSON text, "
             "e.g. [{{\"name\": \"search\", \"parameters\": {{...}}}}]; rows without tools hold null"),
        Rule("FTC409", "template file {template} is not UTF-8 text: byte {byte} at offset {offset} (line {line}) does not decode",
             "save the template as UTF-8 (e.g. iconv -f gb18030 -t utf-8)"),
        # -- 42x the render budget of one row (compiler/render.py)
        Rule("FTC420", "template {template} line {line}, row {row}: rendering takes more than {budget} loop steps, the render budget of one row",
             "loops run once per row, and nested loops multiply (two loops over range(100000) are 10^10 steps): "
             "loop over the row's own fields, or build the text in the data with a derive step"),
        Rule("FTC421", "template {template} line {line}, row {row}: {operation} would build {size} items, past the render budget of {budget}",
             "a template renders one row's text: build long repeats in the data (derive), not in the template"),
        # ---- 5xx the lock and the inputs it fingerprints
        Rule("FTC500", "cannot read lock {file}: {reason}", "compile one with `ftc compile RECIPE -o {file}`"),
        Rule("FTC501", "{lock_version!r} (written by ftc {version}) is newer than or unknown to this ftc {ours}, "
                       "which reads lock_version {reads}",
             "upgrade ftc, or recompile the recipe with this version"),
        Rule("FTC502", "{file}: plan_hash does not match its content (the lock was edited by hand)", "recompile the recipe instead of editing the lock"),
        Rule("FTC503", "artifact {file} is missing or changed", "recompile: `ftc compile {recipe}`"),
        Rule("FTC504", "source {file} changed since the plan was compiled ({what})", "nothing trains on data the lock does not describe: recompile with `ftc compile {recipe} -o {lock}`"),
        Rule("FTC505", "{file}: the lock's recipe ({recipe_rel}, relative to the lock) is not there: the lock was moved away from its project, or the recipe was removed",
             "keep the lock where `ftc compile -o` wrote it (its paths are relative to the recipe), or compile again: `ftc compile RECIPE -o {lock}`"),
        Rule("FTC506", "tokenizer {file} differs from the one the plan was compiled with ({changed} changed)",
             "the token ids in the artifacts came from the old tokenizer: recompile with `ftc compile {recipe} -o {lock}`"),
        Rule("FTC507", "python reward drift: {problems}",
             "the lock holds the sha256 of the reward file that was reviewed: recompile the recipe so it records the file you mean to run (`ftc compile RECIPE -o LOCK`)"),
        Rule("FTC508", "{file} is a recipe, not a plan.lock (it has sources and no plan_hash)",
             "that is a recipe; compile it first: ftc compile {file} -o plan.lock (then give plan.lock here)"),
        Rule("FTC509", "{file}: the lock's settings are not what its recipe resolves to with the lock's overrides ({keys} differ)",
             "the lock was edited and its plan_hash recomputed, or it comes from another recipe: nothing trains on "
             "settings the recipe does not say; recompile with `ftc compile {recipe} -o {lock}`"),
        Rule("FTC510", "model {file} is not the one the plan was compiled with: {changed}",
             "another base model behind the same model.name would train under this plan: put the original back, "
             "or recompile for this one with `ftc compile {recipe} -o {lock}`"),
        Rule("FTC520", "model.adapter {file} changed since the plan was compiled ({changed})",
             "the lock fingerprints the adapter this run starts from: recompile with `ftc compile {recipe} -o {lock}` to start from the adapter as it is now"),
        Rule("FTC530", "ftc clean: {file} is not a folder", "give the project folder that holds the locks and their caches (default: .)"),
        # ---- 6xx the tokenizer and tokenization
        Rule("FTC600", "cannot load tokenizer {name!r}: {reason}", "offline? point model.tokenizer at a local folder: --set model.tokenizer=PATH"),
        Rule("FTC602", "row {row} is {tokens} tokens, longer than max_seq_length {max_seq_length} ({count} rows are)",
             "raise model.max_seq_length, or set train.overlong to \"truncate\" or \"drop\""),
        Rule("FTC603", "row {row} has {tokens} tokens, more than the packing capacity {capacity}",
             "tokenize with max_seq_length <= the packing capacity (train.overlong truncates or drops)"),
        Rule("FTC604", "row {row}: {column} is null ({count} rows are)",
             "filter empty rows in the recipe (filter/clean) before tokenization"),
        Rule("FTC605", "row {row}: the tokenizer merges the prompt's end ({prompt_end!r}) with the completion's start "
                       "({completion_start!r}), and encoded apart they decode to {apart!r}, not the row's text",
             "end the prompt at a token boundary (e.g. with a newline, or without a trailing space, which then "
             "starts the completion), so that the prompt's ids are the start of the row's ids"),
        Rule("FTC606", "train.{setting} needs a chat template with {{% generation %}} markers around assistant turns, "
                       "and the template of {tokenizer!r} has none",
             "use a chat template that marks assistant turns with {{% generation %}}...{{% endgeneration %}}, "
             "or train on all tokens: --set train.{setting}=false"),
        Rule("FTC607", "row {row}: the chat template failed: {reason}",
             "check the row's roles and contents against the model's chat template"),
        Rule("FTC610", "row {row} is {tokens} tokens, longer than max_seq_length {max_seq_length} ({count} examples are)",
             "set train.overlong to \"truncate\" (the prompt is cut from the left first, then the completions) or \"drop\", or raise model.max_seq_length"),
        # ---- 7xx ftc run / infer / eval / score / export
        # 77x: the CLI's own inputs to infer / eval / score / preview
        Rule("FTC770", "--input is not JSON: {reason}", "e.g. --input '{{\"question\": \"...\"}}', or a file of JSON lines"),
        Rule("FTC771", "--input must be a JSON object (or a file of JSON lines, one object each); it gives {got}",
             "give the prompt fields by name, e.g. --input '{{\"question\": \"...\"}}'"),
        Rule("FTC772", "--json is the output of --dry-run", "add --dry-run, or leave out --json"),
        Rule("FTC773", "the plan has no {split} split",
             "set split.eval in the recipe (a share such as 0.05, or a row count) and recompile"),
        Rule("FTC774", "the plan declares no rewards to score with", "declare train.grpo.rewards in the recipe and recompile"),
        Rule("FTC775", "the request lacks {missing}", "give a JSON object with the fields {fields}"),
        Rule("FTC776", "the request gives no turns in {key!r}", "give {{\"{key}\": [{{\"role\": \"user\", \"content\": \"...\"}}]}}"),
        Rule("FTC777", "-n {n}: preview shows at least one row", "give a positive count of rows, e.g. -n 3"),
        Rule("FTC778", "--output takes the answers, and --dry-run generates none",
             "leave out --output (--dry-run --json prints JSON lines to stdout), or leave out --dry-run"),
        Rule("FTC779", "train.report_to {tracker} needs the {package} package, which is not installed",
             "pip install {package}, or set train.report_to to \"none\" (--set train.report_to=none) and recompile"),
        # ---- ftc run / infer / eval / export / score (runtime/): one rule per thing that goes wrong there
        # 70x: the run folder, the backend and the method
        Rule("FTC701", "--backend unsloth needs {missing}", "use --backend hf (transformers + peft + trl), which runs on the CPU too"),
        Rule("FTC702", "the unsloth backend runs on one GPU in this build, and this run has {world_size} processes",
             "use --backend hf for several GPUs (DDP), or run on one GPU"),
        Rule("FTC703", "the unsloth training process exited with code {returncode} (its output is above)",
             "fix what it printed, or run the same plan with --backend hf"),
        Rule("FTC704", "{folder} holds the run of another plan ({other}; this one is {ours})",
             "choose another --output folder, or remove that run"),
        Rule("FTC705", "{folder} is not empty and holds no ftc run", "choose an empty or new --output folder"),
        Rule("FTC706", "--resume: no checkpoint in {folder}", "run without --resume to start training from step 0"),
        Rule("FTC707", "{folder} already holds checkpoints of a run", "continue it with --resume, or choose another --output folder"),
        Rule("FTC708", "{folder} is not a run folder: it has no {missing}", "point at the output folder of `ftc run`"),
        Rule("FTC709", "train.method {method!r} has no trainer in this ftc", "recompile the recipe with a method this ftc trains ({methods})"),
        # 71x: the model
        Rule("FTC710", "4-bit quantization needs trained weights, and model.init is random",
             "drop one of the two: --set model.load_in_4bit=false, or model.init=pretrained"),
        Rule("FTC711", "cannot read the config of model {name!r}: {reason}",
             "model.init=random builds the model from model.name's config.json: point model.name at a folder (or hub id) that has one"),
        Rule("FTC712", "model.load_in_4bit needs {missing}",
             "4-bit loading runs through bitsandbytes on a CUDA GPU: run where both are (pip install bitsandbytes), or set model.load_in_4bit=false"),
        Rule("FTC713", "cannot load model {name!r} with {loader}: {reason}",
             "offline? point model.name at a local folder; a typo in a hub id looks the same"),
        Rule("FTC714", "the random-init base rebuilt from its config and seed (weights {got}) is not the one this adapter was trained on ({expected})",
             "use the same torch version as the run (see run.json versions), or retrain"),
        Rule("FTC715", "token id {token_id} in {file} is outside the model's vocabulary ({vocab} ids)",
             "the plan was compiled with another tokenizer than this model's (or model.config shrank vocab_size): "
             "compile with the model's tokenizer"),
        # 72x: the compiled artifacts the trainer reads (a broken contract: the compiler or a hand edit)
        Rule("FTC720", "the {kind} artifact lacks the column(s) {missing}; it has {columns}",
             "recompile the plan: the {kind} artifact does not follow the compiler's contract"),
        Rule("FTC721", "the {kind} artifact has no rows", "recompile the plan: the {kind} artifact does not follow the compiler's contract"),
        Rule("FTC722", "row {row}: {ids} input_ids, {labels} labels and length {length} disagree",
             "recompile the plan: the token artifact does not follow the compiler's contract"),
        Rule("FTC723", "row {row} has no tokens", "recompile the plan: the token artifact does not follow the compiler's contract"),
        Rule("FTC724", "row {row}: a trained label differs from its input id (labels equal input_ids, unshifted, or are -100)",
             "recompile the plan: the token artifact does not follow the compiler's contract"),
        Rule("FTC725", "{what} has {tokens} tokens, more than model.max_seq_length={limit}",
             "recompile the plan: the token artifact does not follow the compiler's contract"),
        Rule("FTC726", "the plan has no token artifact for {method} to train on", "recompile the recipe (ftc compile tokenizes)"),
        # 73x: the trainer's config against the plan
        Rule("FTC730", "{who} changed the plan's settings: {changes}",
             "this backend does not train the plan as written: use --backend hf, or change the recipe to values this backend keeps"),
        Rule("FTC731", "packing with attention {attention!r}, which would let packed rows attend to each other",
             "use sdpa or flash-attention, or set train.packing=false"),
        # 74x: ftc score's completions file
        Rule("FTC740", "cannot read completions: {reason}", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC741", "no completions in the file", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC742", "line {line}: not valid JSON: {reason} (column {col})", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC743", "line {line}: expected a JSON object, got {type}", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC744", "line {line}: missing {missing} (keys: {keys})", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC745", "line {line}: row_id must be a string or an integer, not {value}", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC746", "{where}: completion must be a string or a list of chat messages, not {type}", 'each line is one JSON object: {{"row_id": ..., "completion": "..."}} (completion: a string or a list of chat messages)'),
        Rule("FTC747", "{count} completion row_id(s) are not rows of this split: {ids}",
             "score completions of the same plan and split (--split); its row ids look like {examples}"),
        # 75x: GRPO and its rewards at run time
        Rule("FTC750", "GRPO needs at least one reward, and the plan declares none",
             'declare one, e.g. {{"kind": "regex", "pattern": "</reasoning>"}}, and recompile'),
        Rule("FTC751", "reward {name!r} reads field(s) {fields}, which {artifact} does not have (it has: {columns})",
             "recompile the plan so the data keeps the fields the rewards read"),
        Rule("FTC752", "reward {name!r} needs dataset column(s) {fields}, which the trainer did not pass (it passed: {passed})",
             "the GRPO dataset must keep the fields rewards read; recompile the plan"),
        Rule("FTC753", "python reward {name!r} ({function}) returned {value}", "return a float (or None when the completion cannot be judged)"),
        Rule("FTC754", "{over} of {total} prompts in {artifact} are longer than train.grpo.max_prompt_length ({limit} tokens); "
             "the longest, row {row}, has {longest}", "raise train.grpo.max_prompt_length, or set train.overlong to truncate or drop"),
        Rule("FTC755", "all {total} prompts in {artifact} are longer than train.grpo.max_prompt_length ({limit} tokens): "
             "train.overlong=drop leaves none", "raise train.grpo.max_prompt_length"),
        Rule("FTC756", "GRPOTrainer of trl {version} has no _tokenize_prompts, so train.grpo.max_prompt_length cannot be applied",
             "use trl 1.15 or 1.16 (see README, Versions)"),
        # 76x: several processes
        Rule("FTC760", "the plan's global batch ({batch} x {accumulation} accumulation = {total}) cannot be split evenly over {world_size} processes",
             "use a number of processes that divides gradient_accumulation_steps ({accumulation}), or recompile with "
             "--set train.gradient_accumulation_steps=<a multiple of {world_size}>"),
        Rule("FTC761", "--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT",
             "give every host the same endpoint (the first host's address and a free port)"),
        # 762+: untrusted recipe code and interrupted runs (765: FSDP, with the other several-process rules)
        Rule("FTC762", "python reward {name!r} ({function}) raised {exception} at {line}, on completion {index} of the batch (row {row})",
             "return None for a completion the reward cannot judge (it is left out of the mean) instead of raising; "
             "that completion begins {start!r}"),
        Rule("FTC763", "--resume: {folder} holds no complete checkpoint, only {partial}: the run stopped while saving it",
             "run without --resume to train from step 0 in this folder (the incomplete checkpoint is removed then)"),
        Rule("FTC764", "train.optim {optim!r} needs the {module} module, which is not installed here",
             "install it on the machine that trains (pip install {module}; bitsandbytes also needs a CUDA GPU), "
             "or recompile with another optimizer: --set train.optim=adamw_torch"),
        Rule("FTC765", "train.fsdp {fsdp!r} needs CUDA GPUs: without one, accelerate does not shard, and the run would be "
             "plain DDP with the key ignored", "run the plan on GPUs, or recompile it for the CPU with --set train.fsdp="),
        Rule("FTC766", "train.fsdp {fsdp!r} shards across the processes of a distributed launch, and this process is "
             "not one (transformers' Trainer refuses FSDP outside distributed training)",
             "run the plan with `ftc run PLAN` (it launches torchrun for an FSDP plan, one GPU included; --gpus N for "
             "more), or start this process under torchrun"),
        Rule("FTC767", "train.fsdp {fsdp!r} is not in force: the Trainer did not turn FSDP on (accelerate's distributed "
             "type is {distributed_type})", "run the plan with `ftc run PLAN --gpus N` on CUDA GPUs; to train without "
             "sharding, recompile with --set train.fsdp="),
        Rule("FTC768", "the unsloth backend does not shard the model, and the plan sets train.fsdp {fsdp!r}",
             "use --backend hf for FSDP, or recompile with --set train.fsdp= to train on unsloth"),
        # 78x: model.adapter and GRPO generation at run time
        Rule("FTC780", "model.adapter {folder} does not fit the base model: {reason}",
             "the adapter's LoRA shape (target modules, sizes) must match the base model it is put on: use the base it was trained on"),
        Rule("FTC781", "model.adapter {folder} was trained on a random-init base with weights {expected}, and this plan builds one with weights {got}",
             "set model.config, model.name and train.seed as the adapter's run had them (its run.json, settings)"),
        Rule("FTC782", "train.grpo.generation is \"vllm\", and vllm does not import here ({reason})",
             "install vllm (TRL's colocated mode), or set train.grpo.generation to \"auto\" (ftc's fast path) or \"generate\""),
        Rule("FTC783", "model.adapter {file} changed since this run trained on it ({changed})",
             "the run's adapter was trained on top of that adapter as it was: restore it, or train again"),
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
