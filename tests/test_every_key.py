"""Issue 12, "every key does what it says, or is refused": a walk over every key of
compiler/recipe.schema.json, and for each key a case that shows its effect.

`test_every_schema_key_has_a_case` enumerates the schema's property paths (a `$ref` is walked
once, as its own `#def` root), so a key added to the schema without a case here fails the suite.
Each case edits a small recipe with `--set`-style overrides, compiles it in-process (no artifacts
written) and checks the effect where it is documented: the lock (settings, stages, sources,
tokens, schedule, templates), the run's real objects (SFTConfig/GRPOConfig built as the run
skeleton builds them, PEFT's LoraConfig, the transformers config and model, the reward functions
TRL calls), or the FtcError where the key does not apply. Every check compares against the
recipe without the edit, so it could fail: a key that were ignored would leave it unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from conftest import ROOT, SHARED
from ftc.compiler.compile import compile_recipe
from ftc.compiler.recipe import load_recipe, schema
from ftc.errors import FtcError

# ---------------------------------------------------------------- the walk


def schema_keys() -> set[str]:
    """Every property path of the schema: `train.learning_rate`, `#transform.extract.from`,
    `sources.*` for a map's values, `[]` for a list's items; a `$ref` is a root of its own."""
    s = schema()
    out: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict) or "$ref" in node:
            return
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            ref = sub.get("$ref", "").rpartition("/")[2]
            if ref and "properties" in s["$defs"][ref]:
                continue  # a section defined once (model, lora, train...): its keys are walked under #name
            out.add(path)
            walk(sub, path)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], prefix + ".*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], prefix + "[]")
        for branch in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(branch, []):
                walk(sub, prefix)
        for branch in ("then", "else"):
            walk(node.get(branch), prefix)

    walk(s, "")
    for name, defn in s["$defs"].items():
        walk(defn, f"#{name}")
    return out


# ---------------------------------------------------------------- the project: the demo plus small data files

ROWS = [{"q": f" question {i} ", "a": f"answer {i} #### {1000 + i:,}", "cat": "x" if i % 2 else "y"} for i in range(12)]
ROWS[3]["q"] = ROWS[2]["q"]  # one duplicate question
ROWS[5]["a"] = ""  # one empty answer


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("keys")
    shutil.copytree(ROOT / "recipes" / "demo", p / "demo", ignore=shutil.ignore_patterns("gsm8k_64.jsonl"))
    (p / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (p / "e.jsonl").write_text("".join(json.dumps({"q": f"other {i}", "a": f"b {i}", "cat": "z"}) + "\n" for i in range(6)))
    shutil.copytree(p / "demo" / "tokenizer", p / "tok2")
    (p / "tok2" / "tokenizer_config.json").write_text(
        (p / "tok2" / "tokenizer_config.json").read_text(encoding="utf-8").replace("{", '{"model_max_length": 77,', 1), encoding="utf-8")
    (p / "model2").mkdir()
    cfg = json.loads((p / "demo" / "model" / "config.json").read_text(encoding="utf-8"))
    (p / "model2" / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}), encoding="utf-8")
    (p / "semi.txt").write_text("q;a\nhello;world\nhi;there\n", encoding="utf-8")
    (p / "gb.csv").write_bytes("q,a\n你好,世界\n早上,好\n".encode("gb18030"))
    (p / "bad.csv").write_bytes(b"q,a\ncaf\xe9,x\nok,y\n")
    (p / "quote.csv").write_text('q,a\n"open,x\nb,y\nc",z\nd,w\n', encoding="utf-8")
    (p / "parts" / "dep_1").mkdir(parents=True)
    (p / "parts" / "dep_1" / "p.jsonl").write_text('{"q": "z", "a": "w"}\n')
    (p / "conv.jsonl").write_text("".join(json.dumps({"c": [{"who": "h", "txt": f"hi {i}"}, {"who": "g", "txt": f"yo {i}"}],
                                                      "t": [{"from": "human", "value": f"hey {i}"}, {"from": "gpt", "value": f"ho {i}"}]}) + "\n"
                                          for i in range(4)), encoding="utf-8")
    (p / "p.jinja").write_text("From a file: {{ q }}", encoding="utf-8")
    (p / "rw.py").write_text("def score(completion, a):\n    return 0.25\n\n\ndef other(completion, a):\n    return 0.75\n", encoding="utf-8")
    (p / "remote").mkdir()
    (p / "remote" / "config.json").write_text(json.dumps({"model_type": "ftc_toy", "auto_map": {"AutoConfig": "configuration_toy.ToyConfig"}}))
    (p / "remote" / "configuration_toy.py").write_text(
        "from transformers import PretrainedConfig\n\nclass ToyConfig(PretrainedConfig):\n    model_type = 'ftc_toy'\n")
    model = {"name": "demo/model", "init": "random", "tokenizer": "demo/tokenizer", "max_seq_length": 64, "dtype": "float32"}
    base = {"name": "keys", "sources": {"s": {"path": "d.jsonl"}},
            "template": {"format": "prompt_completion", "prompt": "Q: {{ q }}", "completion": " {{ a }}"},
            "model": model, "train": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}}
    (p / "base.json").write_text(json.dumps(base), encoding="utf-8")
    grpo = {**base, "template": {"format": "prompt", "prompt": "Q: {{ q }}"},
            "train": {"method": "grpo", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                      "grpo": {"num_generations": 2, "rewards": [{"kind": "regex", "pattern": "answer"}]}}}
    (p / "grpo.json").write_text(json.dumps(grpo), encoding="utf-8")
    hf = {**base, "sources": {"s": {"hf": {"name": "json", "data_files": str(p / "d.jsonl")}}}}
    (p / "hf.json").write_text(json.dumps(hf), encoding="utf-8")
    write_preference_recipes(p, base)
    return p


PREFERENCE_DATA = SHARED / "data" / "preference"


def write_preference_recipes(p: Path, base: dict) -> None:
    """pref.json (DPO, ShareGPT pairs) and kto.json (chat turns + a label) on the first real rows of
    ../shared/data/preference, with the demo's small tokenizer and longer sequences (the rows are long)."""
    if not PREFERENCE_DATA.is_dir():
        return
    pairs = json.loads((PREFERENCE_DATA / "dpo_en_demo.json").read_text(encoding="utf-8"))[:6]
    (p / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    kto = json.loads((PREFERENCE_DATA / "kto_en_demo.json").read_text(encoding="utf-8"))[:6]
    assert {r["label"] for r in kto} == {True, False}
    (p / "unpaired.json").write_text(json.dumps([{"m": r["messages"], "ok": r["label"]} for r in kto]), encoding="utf-8")
    model = {**base["model"], "max_seq_length": 256}
    train = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    pref = {"name": "pref", "model": model, "train": {**train, "method": "dpo"},
            "sources": {"s": {"path": "pairs.json", "columns": {"prompt": {"from": "conversations", "roles": roles},
                                                                "chosen": "chosen", "rejected": "rejected"}}},
            "template": {"format": "preference", "prompt": {"field": "prompt"}, "chosen": {"field": "chosen"},
                         "rejected": {"field": "rejected"}}}
    (p / "pref.json").write_text(json.dumps(pref), encoding="utf-8")
    unpaired = {"name": "kto", "model": model, "train": {**train, "method": "kto"}, "sources": {"s": {"path": "unpaired.json"}},
                "template": {"format": "unpaired_preference", "completion": {"field": "m"}, "label": {"field": "ok"}}}
    (p / "kto.json").write_text(json.dumps(unpaired), encoding="utf-8")


def plan(proj: Path, sets=(), recipe: str = "base.json", tokenize: bool = True):
    """The compiled plan (in memory: no artifact, no lock written)."""
    r = load_recipe(proj / recipe, [s for s in sets], base=proj)
    return compile_recipe(r, proj / "plan.lock", write=False, tokenize=tokenize)


# ---------------------------------------------------------------- the run's real objects


def sft_config(c) -> Any:
    """SFTConfig as runtime/session.py builds it from the lock (training_arguments + SFT's own keys)."""
    from ftc.runtime.sft import METHOD
    from ftc.runtime.trainer_config import checked_config, training_arguments

    train = c.lock["settings"]["train"]
    kwargs = training_arguments(train, warmup_steps=c.lock["schedule"]["warmup_steps"], checkpoints=Path("/tmp/ftc-ck"),
                                max_steps=train["max_steps"], dtype="float32", device="cpu", eval_steps=train["eval_steps"])
    cls, own = METHOD.config(train, None)
    return checked_config(cls, {**kwargs, **own})


def grpo_config(c) -> Any:
    from ftc.runtime.grpo import GRPO
    from ftc.runtime.trainer_config import checked_config, training_arguments

    train = c.lock["settings"]["train"]
    kwargs = training_arguments(train, warmup_steps=c.lock["schedule"]["warmup_steps"], checkpoints=Path("/tmp/ftc-ck"),
                                max_steps=train["max_steps"], dtype="float32", device="cpu", eval_steps=None)
    from ftc.runtime.generation import plan_generation

    generation = plan_generation(train["grpo"]["generation"], load_in_4bit=False, world_size=1)
    cls, own = GRPO().config(train, SimpleNamespace(rewards=train["grpo"]["rewards"], generation=generation))
    return checked_config(cls, {**kwargs, **own})


def pref_config(c) -> Any:
    """DPOConfig / ORPOConfig / CPOConfig / KTOConfig as runtime/preference.py builds them from the lock."""
    from ftc.runtime.preference import METHODS
    from ftc.runtime.trainer_config import checked_config

    train = c.lock["settings"]["train"]
    cls, own = METHODS[train["method"]].config(train, SimpleNamespace(train_table=c.tokens.get("train")))
    return checked_config(cls, {**targs(c), **own})


def lora(c) -> Any:
    from ftc.runtime.model import lora_config

    return lora_config(c.lock["settings"]["lora"])


def model_section(c, proj: Path) -> dict:
    m = dict(c.lock["settings"]["model"])
    m["name"] = str(proj / m["name"])
    return m


def hf_model_config(c, proj: Path) -> Any:
    from ftc.runtime.model import model_config

    return model_config(model_section(c, proj))


def scores(c, proj: Path, completion: str, **row) -> list:
    """What the reward functions TRL calls give one completion."""
    from ftc.runtime.rewards_trl import build_reward_funcs

    funcs = build_reward_funcs(c.lock["settings"]["train"]["grpo"]["rewards"], proj)
    return [f(prompts=["p"], completions=[completion], **{k: [v] for k, v in row.items()})[0] for f in funcs]


def grpo_prompts(c, p):
    """The prompts GRPO trains on, read as the run reads them (runtime/grpo.py prepare), from the written plan."""
    from ftc.compiler.lock import Plan, write_lock
    from ftc.runtime.grpo import GRPO
    from ftc.runtime.model import load_tokenizer

    lock_path = p / "grpo.lock"
    compile_recipe(load_recipe(p / G, c.lock["recipe"]["overrides"], base=p), lock_path, write=True)
    plan_ = Plan.load(lock_path)
    data = GRPO().prepare(plan_, plan_.settings["train"], tokenizer=load_tokenizer(plan_.tokenizer_location), world_size=1)
    return data.prompt_facts["train"]["over_limit"], data.train_dataset.num_rows


def memory_used(c, proj: Path) -> dict:
    from ftc.runtime import memory_plan

    s = c.lock["settings"]
    return memory_plan.apply(model_section(c, proj), s["lora"], s["train"], tokens_per_item=64, backend="hf",
                             can_split=s["train"]["method"] == "sft", announce=False)[0]


def rendered(c, column: str = "prompt", split: str = "train") -> list:
    return c.splits[split].column(column).to_pylist()


def stage(c, prefix: str) -> dict:
    return next(s for s in c.lock["stages"] if s["stage"].startswith(prefix))


def settings(c, *path: str) -> Any:
    node = c.lock["settings"]
    for p in path:
        node = node[p]
    return node


def targs(c) -> dict:
    from ftc.runtime.trainer_config import training_arguments

    train = c.lock["settings"]["train"]
    return training_arguments(train, warmup_steps=c.lock["schedule"]["warmup_steps"], checkpoints=Path("/tmp/ftc-ck"),
                              max_steps=train["max_steps"], dtype="float32", device="cpu", eval_steps=train["eval_steps"])


def arg(cfg: Callable, key: str) -> Callable:
    def look(c, p):
        v = getattr(cfg(c), key)
        return getattr(v, "value", v)
    return look


def load_model(c, p):
    from ftc.runtime.model import load_base_model

    loaded = load_base_model(model_section(c, p), seed=0, device="cpu")
    return str(loaded.model.dtype), loaded.random_init


def rows(c, p):
    return len(rendered(c))


def prompts(c, p):
    return rendered(c)


def messages(c, p):
    return rendered(c, "messages")


def reward_scores(completion: str, **row) -> Callable:
    return lambda c, p: scores(c, p, completion, **row)


def safe(fn: Callable) -> Callable:
    """A look whose failure is itself the effect (a class transformers refuses to load, say)."""
    def look(c, p):
        try:
            return fn(c, p)
        except Exception as err:  # noqa: BLE001 - the type is what is compared
            return type(err).__name__
    return look


class Case:
    """One key's evidence: `sets` (--set edits) applied to `recipe` after `base`; `look` reads the
    effect from the compiled plan; the edit must change it (to `want`, when given), or be refused
    with `error` (a code prefix) where the recipe without it is not; `same`: documented to change
    nothing in the plan. `tokenize`: the look needs the token facts."""

    def __init__(self, sets, look=None, want: Any = None, *, base=(), recipe="base.json", error: str | None = None,
                 tokenize: bool = False, same: bool = False):
        self.sets, self.look, self.want, self.base = list(sets), look, want, list(base)
        self.recipe, self.error, self.tokenize, self.same = recipe, error, tokenize, same


TF = "transforms=[{}]".format
EXTRACT = TF('{"extract": {"from": "a", "pattern": "####\\\\s*([0-9,]+)", "into": "n"}}')
CHAT_LIST = 'template={"format": "messages", "messages": [{"role": "user", "content": "{{ q }}"}, {"role": "assistant", "content": "{{ a }}"}]}'
SHAREGPT = ["sources.s.path=conv.jsonl", 'template={"format": "messages", "messages": {"field": "m"}}',
            'sources.s.columns={"m": {"from": "t", "roles": {"human": "user", "gpt": "assistant"}}}']
TWO = ["sources.e.path=e.jsonl"]
R = "train.grpo.rewards="
R0 = "train.grpo.rewards.0."
ANSWER = R + '[{"kind": "answer", "pattern": "= *([0-9,.]+)", "field": "a"}]'
LENGTH = R + '[{"kind": "length"}]'
CONTAINS = R + '[{"kind": "contains", "text": "ans"}]'
PY = ["train.grpo.allow_python=true", R + '[{"kind": "python", "function": "rw.py:score"}]']
G = "grpo.json"
P, K = "pref.json", "kto.json"  # DPO pairs and KTO's labelled completions (real rows)
ORPO, SIMPO = ["train.method=orpo"], ["train.method=simpo"]


def p_args(key):
    return arg(pref_config, key)


def generation_path(c) -> str:
    """The generation path the run takes for the plan (runtime/generation.py plan_generation, one process)."""
    from ftc.runtime.generation import plan_generation

    g = c.lock["settings"]["train"]["grpo"]
    return plan_generation(g["generation"], load_in_4bit=c.lock["settings"]["model"]["load_in_4bit"], world_size=1).path


def g_args(key):
    return arg(grpo_config, key)


def s_args(key):
    return arg(sft_config, key)


CASES: dict[str, Case] = {
    # ---- the recipe's top level
    "$schema": Case(["$schema=anything.json"], lambda c, p: ("$schema" in c.lock["settings"], c.lock["settings"]), same=True),
    "name": Case(["name=other"], lambda c, p: settings(c, "name"), "other"),
    "description": Case(["description=hello"], lambda c, p: settings(c, "description"), "hello"),
    "sources": Case(TWO, lambda c, p: (sorted(c.lock["sources"]), rows(c, p)), (["e", "s"], 18)),
    "mix.*.count": Case(["mix.s.count=3", "mix.e.count=6"], rows, 9, base=TWO),
    "mix.*.weight": Case(["mix.s.weight=1", "mix.e.weight=1"], rows, 12, base=TWO),
    "transforms": Case([TF('{"limit": 2}')], rows, 2),
    "split.eval": Case(["split.eval=3"], lambda c, p: c.splits["eval"].num_rows, 3),
    "split.key": Case(['split.key=["q"]'], lambda c, p: sorted(rendered(c, split="eval")), base=["split.eval=0.5"]),
    "split.seed": Case(["split.seed=7"], lambda c, p: sorted(rendered(c, split="eval")), base=["split.eval=0.5"]),
    "output.cache_dir": Case(["output.cache_dir=elsewhere"], lambda c, p: c.lock["artifacts"]["data"]["train"]["path"].split("/")[0],
                             "elsewhere"),
    # ---- a source
    "#source.path": Case(["sources.s.path=e.jsonl"], lambda c, p: c.lock["sources"]["s"]["files"][0]["path"], "e.jsonl"),
    "#source.format": Case(["sources.s.format=csv"], lambda c, p: c.lock["sources"]["s"]["files"][0]["format"], "csv",
                           base=["sources.s.path=semi.txt", "sources.s.delimiter=;"]),
    "#source.delimiter": Case(["sources.s.delimiter=;"], prompts, ["Q: hello", "Q: hi"], base=["sources.s.path=semi.txt", "sources.s.format=csv"]),
    "#source.encoding": Case(["sources.s.encoding=latin-1"], prompts, base=["sources.s.path=gb.csv"]),
    "#source.encoding_errors": Case(["sources.s.encoding_errors=replace"], lambda c, p: c.lock["sources"]["s"]["files"][0]["replaced_bytes"], 1,
                                    base=["sources.s.path=bad.csv", "sources.s.encoding=utf-8"]),
    "#source.on_malformed": Case(["sources.s.on_malformed=warn"], rows, 2, base=["sources.s.path=quote.csv"]),
    "#source.captures": Case(["sources.s.captures=dep_(?P<dep>[0-9])"], prompts, ["Q: z 1"],
                             base=["sources.s.path=parts", "template.prompt=Q: {{ q }} {{ dep }}"]),
    "#source.columns": Case(['sources.s.columns={"q": "a", "a": "q"}'], lambda c, p: prompts(c, p)[0], "Q: answer 0 #### 1,000"),
    "#source.transforms": Case(['sources.s.transforms=[{"limit": 2}]'], lambda c, p: (rows(c, p), [s["stage"] for s in c.lock["stages"]][1]),
                               (8, "sources.s.transforms[0]: limit"),
                               base=TWO),
    "#source.hf.name": Case(["sources.s.hf.name=no-such/dataset"], rows, recipe="hf.json", error="FTC205"),
    "#source.hf.split": Case(["sources.s.hf.split=train[:3]"], rows, 3, recipe="hf.json"),
    "#source.hf.config": Case(["sources.s.hf.config=default"], lambda c, p: c.lock["sources"]["s"]["config"], "default", recipe="hf.json"),
    "#source.hf.revision": Case(["sources.s.hf.revision=v9"], lambda c, p: c.lock["sources"]["s"]["revision"], "v9", recipe="hf.json"),
    "#source.hf.data_files": Case(["sources.s.hf.data_files=e.jsonl"], rows, 6, recipe="hf.json"),
    "#source.delimiter (on an hf source)": Case(["sources.s.delimiter=;"], recipe="hf.json", error="FTC212"),
    # ---- a column
    "#column.const": Case(['sources.s.columns={"q": {"const": "K"}, "a": "a"}'], lambda c, p: set(prompts(c, p)), {"Q: K"}),
    "#column.from": Case(['sources.s.columns.m={"from": "c", "roles": {"h": "user", "g": "assistant"}, "role_key": "who", "content_key": "txt"}'],
                         messages, base=SHAREGPT),
    "#column.roles": Case(['sources.s.columns.m.roles={"human": "system", "gpt": "assistant"}'], messages, base=SHAREGPT),
    "#column.role_key": Case(["sources.s.columns.m.role_key=value"], base=SHAREGPT, error="FTC206"),  # roles read from another key
    "#column.content_key": Case(["sources.s.columns.m.content_key=from"], messages, base=SHAREGPT),
    # ---- the template
    "#template.format": Case(['template={"format": "text", "text": "{{ q }}"}'], lambda c, p: c.splits["train"].column_names),
    "#template.text": Case(["template.text=T {{ a }}"], lambda c, p: rendered(c, "text"), base=['template={"format": "text", "text": "{{ q }}"}']),
    "#template.prompt": Case(["template.prompt=P: {{ q }}"], prompts),
    "#template.completion": Case(["template.completion=C {{ q }}"], lambda c, p: rendered(c, "completion")),
    "#template.chosen": Case(["template.chosen=I would rather not."], lambda c, p: rendered(c, "chosen"), ["I would rather not."] * 6,
                             recipe=P),
    "#template.rejected": Case(["template.rejected=No."], lambda c, p: rendered(c, "rejected"), ["No."] * 6, recipe=P),
    "#template.chosen (on a prompt_completion template)": Case(["template.chosen=x"], error="FTC404"),
    "#field_ref.field": Case(["template.chosen.field=rejected", "template.rejected.field=chosen"],
                             lambda c, p: [r["value"][:30] for r in rendered(c, "chosen")], recipe=P),
    "#template.messages.field": Case(['sources.s.columns={"m2": {"from": "t", "roles": {"human": "assistant", "gpt": "user"}}}',
                                      "template.messages.field=m2"], messages, base=SHAREGPT),
    "#text_template.file": Case(['template.prompt={"file": "p.jinja"}'], lambda c, p: prompts(c, p)[0], "From a file:  question 0 "),
    "#chat[].role": Case(["template.messages.0.role=system"], messages, base=[CHAT_LIST]),
    "#chat[].content": Case(["template.messages.0.content=X {{ q }}"], messages, base=[CHAT_LIST]),
    # ---- a transform (one definition for the recipe's and each source's transforms)
    "#transform.strip": Case([TF('{"strip": true}')], lambda c, p: prompts(c, p)[0], "Q: question 0"),
    "#transform.drop_empty": Case([TF('{"drop_empty": ["a"]}')], rows, 11),
    "#transform.filter": Case([TF('{"filter": "cat = \'x\'"}')], rows, 6),
    "#transform.filter.where": Case([TF('{"filter": {"where": "cat = \'y\'"}}')], rows, 6),
    "#transform.filter.name": Case(['transforms.0.filter.name=only_x'], lambda c, p: stage(c, "transforms[0]"),
                                   base=[TF('{"filter": {"where": "cat = \'x\'"}}')]),
    "#transform.dedup": Case([TF('{"dedup": ["q"]}')], rows, 11),
    "#transform.derive": Case([TF('{"derive": {"u": "upper(q)"}}'), "template.prompt={{ u }}"], lambda c, p: prompts(c, p)[0], " QUESTION 0 "),
    "#transform.extract.from": Case(["transforms.0.extract.from=q"], base=[EXTRACT, "template.completion= {{ n }}"], error="FTC302"),  # q has no ####
    "#transform.extract.pattern": Case(["transforms.0.extract.pattern=answer ([0-9]+)"], lambda c, p: rendered(c, "completion")[0], " 0",
                                       base=[EXTRACT, "template.completion= {{ n }}"]),
    "#transform.extract.into": Case(["transforms.0.extract.into=m"], base=[EXTRACT, "template.completion= {{ n }}"], error="FTC401"),  # n undefined
    "#transform.extract.remove": Case(['transforms.0.extract.remove=,'], lambda c, p: rendered(c, "completion")[0], " 1000",
                                      base=[EXTRACT, "template.completion= {{ n }}"]),
    "#transform.extract.required": Case(["transforms.0.extract.required=false"], lambda c, p: stage(c, "transforms[0]"),
                                        base=[EXTRACT]),
    "#transform.length.field": Case(["transforms.0.length.field=cat"], rows, 12, base=[TF('{"length": {"field": "q", "max": 12}}')]),
    "#transform.length.min": Case(["transforms.0.length.min=13"], rows, 2, base=[TF('{"length": {"field": "q"}}')]),
    "#transform.length.max": Case(["transforms.0.length.max=12"], rows, 10, base=[TF('{"length": {"field": "q"}}')]),
    "#transform.sample.n": Case([TF('{"sample": {"n": 3}}')], rows, 3),
    "#transform.sample.fraction": Case([TF('{"sample": {"fraction": 0.5}}')], rows),
    "#transform.sample.seed": Case(["transforms.0.sample.seed=5"], lambda c, p: sorted(prompts(c, p)), base=[TF('{"sample": {"n": 3}}')]),
    "#transform.limit": Case([TF('{"limit": 4}')], rows, 4),
    # ---- the model
    "#model.name": Case(["model.name=model2"], lambda c, p: hf_model_config(c, p).num_hidden_layers, 3),
    "#model.revision": Case(["model.revision=v1"], lambda c, p: settings(c, "model", "revision"), "v1"),
    "#model.tokenizer": Case(["model.tokenizer=tok2"], lambda c, p: c.lock["tokens"]["tokenizer"]["fingerprint"], tokenize=True),
    "#model.tokenizer_revision": Case(["model.tokenizer_revision=v2"], lambda c, p: c.lock["tokens"]["tokenizer"]["revision"], "v2", tokenize=True),
    "#model.max_seq_length": Case(["model.max_seq_length=12"], lambda c, p: c.lock["tokens"]["stats"]["train"]["truncated"], 11, tokenize=True),
    "#model.dtype": Case(["model.dtype=bfloat16"], load_model, ("torch.bfloat16", True)),
    "#model.load_in_4bit": Case(["model.load_in_4bit=true"], error="FTC710"),
    "#model.trust_remote_code": Case(["model.trust_remote_code=true"], safe(lambda c, p: type(hf_model_config(c, p)).__name__), "ToyConfig",
                                     base=["model.name=remote"]),
    "#model.init": Case(["model.init=pretrained"], safe(load_model)),
    # a folder that holds no adapter: the key is read (and refused there) at compile, before any source
    "#model.adapter": Case(["model.adapter=tok2"], error="FTC170"),
    "#model.config": Case(['model.config={"num_hidden_layers": 1}'], lambda c, p: hf_model_config(c, p).num_hidden_layers, 1),
    # ---- LoRA: PEFT's LoraConfig
    "#lora.r": Case(["lora.r=4"], arg(lora, "r"), 4),
    "#lora.lora_alpha": Case(["lora.lora_alpha=3"], arg(lora, "lora_alpha"), 3),
    "#lora.lora_dropout": Case(["lora.lora_dropout=0.25"], arg(lora, "lora_dropout"), 0.25),
    "#lora.target_modules": Case(['lora.target_modules=["q_proj"]'], arg(lora, "target_modules"), {"q_proj"}),
    "#lora.bias": Case(["lora.bias=lora_only"], arg(lora, "bias"), "lora_only"),
    "#lora.use_rslora": Case(["lora.use_rslora=true"], arg(lora, "use_rslora"), True),
    # ---- training: SFTConfig as the run builds it, the schedule, the token artifact
    "#train.method": Case(["train.method=grpo"], error="FTC108"),
    "#train.num_train_epochs": Case(["train.num_train_epochs=3"], lambda c, p: (sft_config(c).num_train_epochs, c.lock["schedule"]["total_steps"]), (3.0, 18)),
    "#train.max_steps": Case(["train.max_steps=5"], lambda c, p: (sft_config(c).max_steps, c.lock["schedule"]["total_steps"]), (5, 5)),
    "#train.learning_rate": Case(["train.learning_rate=0.01"], s_args("learning_rate"), 0.01),
    "#train.per_device_train_batch_size": Case(["train.per_device_train_batch_size=3"], lambda c, p: (sft_config(c).per_device_train_batch_size, c.lock["schedule"]["total_steps"]), (3, 4)),
    "#train.gradient_accumulation_steps": Case(["train.gradient_accumulation_steps=2"], lambda c, p: (sft_config(c).gradient_accumulation_steps, c.lock["schedule"]["total_steps"]), (2, 3)),
    "#train.warmup_steps": Case(["train.warmup_steps=3"], s_args("warmup_steps"), 3),
    "#train.warmup_ratio": Case(["train.warmup_ratio=0.5"], s_args("warmup_steps"), 3),
    "#train.lr_scheduler_type": Case(["train.lr_scheduler_type=cosine"], s_args("lr_scheduler_type"), "cosine"),
    "#train.optim": Case(["train.optim=sgd"], s_args("optim"), "sgd"),
    "#train.report_to": Case(["train.report_to=tensorboard"], s_args("report_to"), ["tensorboard"]),
    "#train.weight_decay": Case(["train.weight_decay=0.1"], s_args("weight_decay"), 0.1),
    "#train.max_grad_norm": Case(["train.max_grad_norm=0.5"], s_args("max_grad_norm"), 0.5),
    "#train.seed": Case(["train.seed=11"], s_args("seed"), 11),
    "#train.logging_steps": Case(["train.logging_steps=3"], s_args("logging_steps"), 3),
    "#train.save_steps": Case(["train.save_steps=7"], s_args("save_steps"), 7),
    "#train.eval_steps": Case(["train.eval_steps=3"], lambda c, p: (s_args("eval_strategy")(c, p), sft_config(c).eval_steps), ("steps", 3),
                              base=["split.eval=2"]),
    "#train.fsdp": Case(["train.fsdp=full_shard auto_wrap"], lambda c, p: (targs(c)["fsdp"], targs(c).get("fsdp_config")),
                        (True, {"reshard_after_forward": True})),  # the words as transformers 5's fsdp_config
    "#train.packing": Case(["train.packing=true"], lambda c, p: (c.lock["tokens"].get("packing") is not None, c.lock["schedule"]["counts"]), tokenize=True),
    "#train.completion_only_loss": Case(["train.completion_only_loss=false"], lambda c, p: c.lock["tokens"]["stats"]["train"]["supervised_tokens"], tokenize=True),
    "#train.assistant_only_loss": Case(["train.assistant_only_loss=false"], lambda c, p: c.lock["tokens"]["stats"]["train"]["supervised_tokens"],
                                       base=[CHAT_LIST], tokenize=True),
    "#train.overlong": Case(["train.overlong=drop"], lambda c, p: c.lock["tokens"]["stats"]["train"]["dropped"], 11, base=["model.max_seq_length=12"], tokenize=True),
    "#train.gradient_checkpointing": Case(["train.gradient_checkpointing=true"], lambda c, p: memory_used(c, p)["gradient_checkpointing"], True),
    "#train.micro_batch": Case(["train.micro_batch=auto"], recipe=G, error="FTC151"),
    # ---- preference methods: DPOConfig, KTOConfig, ORPOConfig, CPOConfig (SimPO) as runtime/preference.py builds them
    "#train.dpo.beta": Case(["train.dpo.beta=0.5"], p_args("beta"), 0.5, recipe=P),
    "#train.dpo.loss_type": Case(["train.dpo.loss_type=ipo"], p_args("loss_type"), ["ipo"], recipe=P),
    "#train.dpo.label_smoothing": Case(["train.dpo.label_smoothing=0.2"], p_args("label_smoothing"), 0.2, recipe=P,
                                       base=["train.dpo.loss_type=robust"]),
    "#train.dpo.label_smoothing (on a loss that does not read it)": Case(["train.dpo.label_smoothing=0.2"], recipe=P, error="FTC184"),
    "#train.dpo.loss_type (exo_pair, unsmoothed)": Case(["train.dpo.loss_type=exo_pair"], recipe=P, error="FTC185"),
    "#train.dpo (under another method)": Case(['train.dpo={"beta": 0.5}'], recipe=K, error="FTC181"),
    "#train.kto.beta": Case(["train.kto.beta=0.5"], p_args("beta"), 0.5, recipe=K),
    "#train.kto.loss_type": Case(["train.kto.loss_type=apo_zero_unpaired"], p_args("loss_type"), "apo_zero_unpaired", recipe=K),
    "#train.kto.desirable_weight": Case(["train.kto.desirable_weight=1.5"], p_args("desirable_weight"), 1.5, recipe=K),
    "#train.kto.undesirable_weight": Case(["train.kto.undesirable_weight=0.5"], p_args("undesirable_weight"), 0.5, recipe=K),
    "#train.kto (under another method)": Case(['train.kto={"beta": 0.5}'], recipe=P, error="FTC181"),
    "#train.orpo.beta": Case(["train.orpo.beta=0.5"], p_args("beta"), 0.5, recipe=P, base=ORPO, tokenize=True),
    "#train.orpo (under another method)": Case(['train.orpo={"beta": 0.5}'], recipe=P, error="FTC181"),
    "#train.simpo.beta": Case(["train.simpo.beta=2.5"], p_args("beta"), 2.5, recipe=P, base=SIMPO, tokenize=True),
    "#train.simpo.simpo_gamma": Case(["train.simpo.simpo_gamma=1.0"], p_args("simpo_gamma"), 1.0, recipe=P, base=SIMPO, tokenize=True),
    "#train.simpo.cpo_alpha": Case(["train.simpo.cpo_alpha=0.5"], p_args("cpo_alpha"), 0.5, recipe=P, base=SIMPO, tokenize=True),
    "#train.simpo.label_smoothing": Case(["train.simpo.label_smoothing=0.1"], p_args("label_smoothing"), 0.1, recipe=P, base=SIMPO,
                                         tokenize=True),
    "#train.simpo (under another method)": Case(['train.simpo={"beta": 2.5}'], recipe=P, error="FTC181"),
    # ---- GRPO: GRPOConfig as the run builds it, and the reward functions TRL calls
    "#train.grpo.num_generations": Case(["train.grpo.num_generations=4", "train.per_device_train_batch_size=4"], g_args("num_generations"), 4, recipe=G),
    "#train.grpo.max_prompt_length": Case(["train.grpo.max_prompt_length=5"], grpo_prompts, (12, 12), recipe=G, tokenize=True),
    "#train.grpo.max_completion_length": Case(["train.grpo.max_completion_length=9"], g_args("max_completion_length"), 9, recipe=G),
    "#train.grpo.temperature": Case(["train.grpo.temperature=0.5"], g_args("temperature"), 0.5, recipe=G),
    "#train.grpo.top_p": Case(["train.grpo.top_p=0.5"], g_args("top_p"), 0.5, recipe=G),
    "#train.grpo.generation": Case(["train.grpo.generation=generate"], lambda c, p: generation_path(c), "generate", recipe=G),
    "#train.grpo.beta": Case(["train.grpo.beta=0.1"], g_args("beta"), 0.1, recipe=G),
    "#train.grpo.loss_type": Case(["train.grpo.loss_type=grpo"], g_args("loss_type"), "grpo", recipe=G),
    "#train.grpo.epsilon": Case(["train.grpo.epsilon=0.3"], lambda c, p: (grpo_config(c).epsilon, grpo_config(c).epsilon_high), (0.3, 0.3), recipe=G),
    "#train.grpo.epsilon_high": Case(["train.grpo.epsilon_high=0.4"], g_args("epsilon_high"), 0.4, recipe=G),
    "#train.grpo.mask_truncated_completions": Case(["train.grpo.mask_truncated_completions=true"], g_args("mask_truncated_completions"), True, recipe=G),
    "#train.grpo.scale_rewards": Case(["train.grpo.scale_rewards=batch"], g_args("scale_rewards"), "batch", recipe=G),
    "#train.grpo.allow_python": Case(["train.grpo.allow_python=false"], recipe=G, base=PY, error="FTC130"),
    "#train.grpo.rewards": Case([R + '[{"kind": "regex", "pattern": "answer"}, {"kind": "regex", "pattern": "zzz"}]'], reward_scores("answer 1"),
                                [1.0, 0.0], recipe=G),
    "#reward.kind": Case([R + '[{"kind": "length", "max": 3}]'], reward_scores("answer 1"), [0.0], recipe=G),
    "#reward.name": Case([R0 + "name=mine"], lambda c, p: [r["name"] for r in settings(c, "train", "grpo", "rewards")], ["mine"], recipe=G),
    "#reward.weight": Case([R0 + "weight=0.5"], g_args("reward_weights"), [0.5], recipe=G),
    "#reward.pattern": Case([R0 + "pattern=zzz"], reward_scores("answer 1"), [0.0], recipe=G),
    "#reward.fullmatch": Case([R0 + "fullmatch=true"], reward_scores("answer 1"), [0.0], recipe=G),
    "#reward.field": Case([R0 + "field=q"], reward_scores("= 7", a="7", q="8"), [0.0], recipe=G, base=[ANSWER]),
    "#reward.compare": Case([R0 + "compare=numeric"], reward_scores("= 1000.0", a="1000", q=""), [1.0], recipe=G, base=[ANSWER]),
    "#reward.tolerance": Case([R0 + "tolerance=1"], reward_scores("= 1000.5", a="1000", q=""), [1.0], recipe=G, base=[ANSWER, R0 + "compare=numeric"]),
    "#reward.remove": Case([R0 + "remove=,"], reward_scores("= 1,000", a="1000", q=""), [1.0], recipe=G, base=[ANSWER]),
    "#reward.occurrence": Case([R0 + "occurrence=last"], reward_scores("= 5 then = 1000", a="1000", q=""), [1.0], recipe=G, base=[ANSWER]),
    "#reward.min": Case([R0 + "min=5"], reward_scores("abc"), [0.0], recipe=G, base=[LENGTH]),
    "#reward.max": Case([R0 + "max=2"], reward_scores("abc"), [0.0], recipe=G, base=[LENGTH]),
    "#reward.ramp": Case([R0 + "ramp=2"], reward_scores("abc"), [0.5], recipe=G, base=[LENGTH, R0 + "max=2"]),
    "#reward.text": Case([R0 + "text=zzz"], reward_scores("answer"), [0.0], recipe=G, base=[CONTAINS]),
    "#reward.mode": Case([R0 + "mode=all"], reward_scores("answer"), [0.0], recipe=G, base=[CONTAINS, R0 + 'text=["ans", "zzz"]']),
    "#reward.negate": Case([R0 + "negate=true"], reward_scores("answer"), [0.0], recipe=G, base=[CONTAINS]),
    "#reward.ignore_case": Case([R0 + "ignore_case=true"], reward_scores("ANSWER"), [1.0], recipe=G, base=[CONTAINS]),
    "#reward.function": Case([R0 + "function=rw.py:other"], reward_scores("x", a="y"), [0.75], recipe=G, base=PY),
}


_plans: dict = {}


def outcome(proj: Path, case: Case, sets: list[str]) -> Any:
    """The case's look at the compiled plan, or ("error", code) when the recipe is refused."""
    key = (proj, case.recipe, tuple(sets), case.tokenize)
    if key not in _plans:
        try:
            _plans[key] = plan(proj, sets, case.recipe, tokenize=case.tokenize)
        except FtcError as err:
            _plans[key] = ("error", err.code)
    c = _plans[key]
    if isinstance(c, tuple) or case.look is None:
        return c if isinstance(c, tuple) else ("ok",)
    return case.look(c, proj)


def test_every_schema_key_has_a_case():
    """A key added to the schema needs a case here (and a case for a key the schema lost is stale)."""
    keys = schema_keys()
    named = {k.split(" ")[0] for k in CASES}
    missing = sorted(k for k in keys if k not in named and not any(n.startswith(k + sep) for n in named for sep in ".[*"))
    assert not missing, f"schema keys without a case in {__file__}: {missing}"
    assert not sorted(named - keys), f"cases for keys the schema does not have: {sorted(named - keys)}"


@pytest.mark.parametrize("key", list(CASES))
def test_the_key_changes_the_plan_or_the_run_or_is_refused(proj, key):
    case = CASES[key]
    if case.recipe in (P, K) and not PREFERENCE_DATA.is_dir():
        pytest.skip(f"real preference data {PREFERENCE_DATA} is absent")
    edited = outcome(proj, case, case.base + case.sets)
    before = outcome(proj, case, case.base)
    if case.error:
        assert isinstance(edited, tuple) and edited[0] == "error" and edited[1].startswith(case.error), edited
        assert before != edited, "the recipe without the edit is refused the same way"
        return
    assert not (isinstance(edited, tuple) and edited[:1] == ("error",)), edited
    if case.same:
        assert edited == before
        return
    assert edited != before, f"{key}: {case.sets} changed nothing that was looked at"
    if case.want is not None:
        assert edited == case.want


def test_an_optimizer_transformers_does_not_have_is_refused_at_compile(cli, proj):
    """Before: accepted, and `ftc run` failed in TrainingArguments with a traceback after loading the model."""
    code, _, err = cli("validate", proj / "base.json", "--set", "train.optim=adamw_8bits")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error[FTC195]: --set train.optim=adamw_8bits: at train.optim: train.optim 'adamw_8bits' is not an optimizer "
                          "of the installed transformers; did you mean 'adamw_8bit'?")
    assert "one of: adamw_torch, " in err


def test_an_optimizer_that_needs_bitsandbytes_is_said_at_compile_when_it_is_absent(cli, proj):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    code, _, err = cli("validate", proj / "base.json", "--set", "train.optim=adamw_8bit")
    assert code == 0 and "train.optim 'adamw_8bit' needs the bitsandbytes package, which is not installed here" in err
    code, _, err = cli("validate", proj / "base.json", "--set", "train.optim=adamw_torch")
    assert code == 0 and "bitsandbytes" not in err


def test_a_dpo_label_smoothing_the_loss_does_not_read_is_refused_at_compile(cli, proj):
    """Before: accepted, and TRL 1.16's sigmoid loss (the default) trained without it; exo_pair without
    one raised a ValueError in DPOTrainer after the model had loaded."""
    if not PREFERENCE_DATA.is_dir():
        pytest.skip(f"real preference data {PREFERENCE_DATA} is absent")
    code, _, err = cli("validate", proj / P, "--set", "train.dpo.label_smoothing=0.2")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error[FTC184]: --set train.dpo.label_smoothing=0.2: at train.dpo.label_smoothing: train.dpo.label_smoothing "
                          "0.2 is read by DPO's losses robust, exo_pair, aot, aot_unpaired, and train.dpo.loss_type is 'sigmoid'"), err
    code, _, err = cli("validate", proj / P, "--set", "train.dpo.loss_type=robust", "--set", "train.dpo.label_smoothing=0.5")
    assert code == 2 and "error[FTC185]" in err and "needs a label_smoothing below 0.5, and it is 0.5" in err, err
    code, _, err = cli("validate", proj / P, "--set", "train.dpo.loss_type=exo_pair", "--set", "train.dpo.label_smoothing=0.001")
    assert code == 0, err
