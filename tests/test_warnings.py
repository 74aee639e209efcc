"""No warnings of ftc's own making on `ftc run` (issue 15, section 4).

A tiny SFT, GRPO and DPO plan, compiled by the real compiler from the shipped demo's rows and
tokenizer, each runs one step through `ftc run` with gradient checkpointing on (the path where
TRL switches checkpointing around generation), in a fresh process that collects from before ftc
is imported. Every Python warning and every WARNING line of the libraries' loggers is
collected; each Python warning is attributed to its caller, the first
frame outside the package that issued it (a transformers deprecation called by ftc is ftc's; one
called by PEFT is PEFT's). A warning passes only when it is in ALLOWED, which names the
library that calls it and why ftc cannot avoid it; anything else fails the test, so a new
deprecation ftc walks into (or an old one that comes back) shows up here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures import compile_plan, write_jsonl, write_tiny_model_dir

from conftest import DEMO_TOKENIZER, ROOT

# The commands run in a fresh process (a warning a module gives when first imported would be
# missed in a test process where another test imported it already). It starts with the
# collector on, then imports ftc and runs each command: argv is the commands (JSON), the report file.
RUNNER = """
import json, sys
sys.path[:0] = [{tests!r}]
from test_warnings import Collector
from dataclasses import asdict
report = []
with Collector() as seen:
    import torch
    torch.set_num_threads(1)
    from ftc.cli import main
    for args in json.loads(sys.argv[1]):
        code = main(args)
        report.append({{"code": code, "warnings": [asdict(w) for w in seen.warnings], "logged": seen.logged}})
        seen.warnings, seen.logged = [], []
open(sys.argv[2], "w").write(json.dumps(report))
"""

# (category, message pattern, the package whose code calls the deprecated API): warnings from
# inside a library, whatever ftc passes it (transformers 5 renamed gradient checkpointing to
# activation checkpointing and kept the old names as warning aliases; PEFT and TRL still call them)
ALLOWED = [
    # peft.PeftModel.__init__ reads model.is_gradient_checkpointing on every base model it wraps
    # (get_peft_model in TRL's trainers, PeftModel.from_pretrained in ftc infer/eval/export)
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", "peft"),
    # trl.models.utils.disable_gradient_checkpointing (around GRPO's generation and DPO/KTO's
    # reference log-probs, when checkpointing is on) calls the old disable/enable names
    (FutureWarning, r"`gradient_checkpointing_disable` is deprecated", "trl"),
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated", "trl"),
]
LOGGERS = ("transformers", "peft", "trl", "accelerate", "torch")
REPO = str(ROOT)


@dataclass(frozen=True)
class Seen:
    category: str
    message: str
    site: str  # where warnings.warn ran
    caller: str  # the package of the first frame outside the warning's own package ("ftc" for ours)


def package_of(filename: str) -> str:
    """'ftc' for this repository's code, else the top-level package a site-packages file belongs to."""
    if filename.startswith(REPO) and "site-packages" not in filename:
        return "ftc"
    match = re.search(r"site-packages/([^/]+)/", filename)
    return match.group(1) if match else Path(filename).stem


class Collector:
    """Python warnings (with their caller) and library log records at WARNING or above, while active."""

    def __init__(self) -> None:
        self.warnings: list[Seen] = []
        self.logged: list[str] = []

    def __enter__(self) -> "Collector":
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        self._handler = logging.Handler(logging.WARNING)
        self._handler.emit = lambda record: self.logged.append(f"{record.name}: {record.getMessage()}")
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        self._catch.__exit__(*exc)

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        stack = traceback.extract_stack()
        at = next((i for i in range(len(stack) - 1, -1, -1)
                   if stack[i].filename == filename and stack[i].lineno == lineno), None)
        own = package_of(filename)
        caller = own
        if at is not None:  # walk outward from the warn site to the first frame of another package
            caller = next((package_of(f.filename) for f in reversed(stack[:at]) if package_of(f.filename) != own), own)
        self.warnings.append(Seen(category.__name__, str(message).splitlines()[0], f"{filename}:{lineno}", caller))


def not_allowed(seen: list[Seen]) -> list[Seen]:
    return [w for w in dict.fromkeys(seen) if w.caller == "ftc" or not any(
        w.category == cat.__name__ and re.search(pattern, w.message) and w.caller == who for cat, pattern, who in ALLOWED)]


def project(tmp: Path) -> dict:
    """The demo's rows, a tiny random Qwen2 on the demo tokenizer's vocabulary whose config names
    no pad token (as Qwen2.5's does not), and the settings every method shares."""
    rows = [json.loads(line) for line in (ROOT / "recipes" / "demo" / "gsm8k_64.jsonl").read_text().splitlines()[:8]]
    write_jsonl(tmp / "qa.jsonl", rows)
    write_jsonl(tmp / "pairs.jsonl", [{"prompt": r["question"], "chosen": r["answer"], "rejected": "No idea."} for r in rows])
    tiny = write_tiny_model_dir(tmp / "tiny", vocab_size=1024, bos_token_id=None, eos_token_id=2)
    return {
        "model": {"name": str(tiny), "init": "random", "tokenizer": str(DEMO_TOKENIZER), "max_seq_length": 96,
                  "dtype": "float32"},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0, "target_modules": "all-linear"},
        "train": {"max_steps": 1, "learning_rate": 1e-3, "optim": "adamw_torch", "warmup_steps": 0, "save_steps": 100,
                  "gradient_checkpointing": True, "gradient_accumulation_steps": 1},
    }


def recipe(method: str, common: dict) -> dict:
    train, extra = {**common["train"], "method": method}, {}
    if method == "sft":
        template = {"format": "prompt_completion", "prompt": "Q: {{ question }}\nA:", "completion": " {{ answer }}"}
        sources, train["per_device_train_batch_size"] = {"qa": {"path": "qa.jsonl"}}, 4
        extra = {"split": {"eval": 2, "seed": 0}}  # for `ftc eval` of the run
    elif method == "grpo":
        template = {"format": "prompt", "prompt": "Q: {{ question }}\nA:"}
        sources, train["per_device_train_batch_size"] = {"qa": {"path": "qa.jsonl"}}, 4
        train["grpo"] = {"num_generations": 2, "max_prompt_length": 64, "max_completion_length": 8,
                         "rewards": [{"kind": "length", "name": "brevity", "max": 4, "ramp": 8}]}
    else:
        template = {"format": "preference", "prompt": {"field": "prompt"}, "chosen": {"field": "chosen"},
                    "rejected": {"field": "rejected"}}
        sources, train["per_device_train_batch_size"] = {"pairs": {"path": "pairs.jsonl"}}, 2
    return {"name": f"warn-{method}", "sources": sources, "template": template, **common, "train": train, **extra}


METHODS = ("sft", "grpo", "dpo")
AFTER = ("eval", "export", "infer")  # what a user runs next on the SFT run (each loads base + adapter)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """One step of each method's tiny plan through `ftc run`, then `ftc eval`, `export` and
    `infer` of the SFT run, in one fresh process; per command, its exit code, the Python warnings
    (with their callers) and the library log warnings."""
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    commands, outs = [], {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method)
        plan = compile_plan(folder, recipe(method, project(folder)))
        outs[method] = str(folder / "run")
        commands.append(["run", str(plan.lock_path), "--output", outs[method]])
    sft = outs["sft"]
    commands += [["eval", sft], ["export", sft, "--merged", sft + "-merged"],
                 ["infer", sft, "--input", json.dumps({"question": "What is 2 + 2?"}), "--max-new-tokens", "4"]]
    report = tmp_path_factory.mktemp("report") / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RUNNER.format(tests=str(ROOT / "tests")), json.dumps(commands), str(report)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["code"] for r in json.loads(report.read_text())] == [0] * len(commands), done.stderr[-3000:]
    return dict(zip(METHODS + AFTER, json.loads(report.read_text())))


@pytest.mark.parametrize("method", METHODS + AFTER)
def test_ftc_prints_no_warning_of_its_own_making(runs, method):
    run = runs[method]
    seen = [Seen(**w) for w in run["warnings"]]
    assert not_allowed(seen) == [], "\n".join(map(str, not_allowed(seen)))
    assert run["logged"] == []


def test_the_allow_list_is_what_the_libraries_still_do(runs):
    """An allowed warning that no run gives any more (a PEFT or TRL upgrade fixed it) is dropped here."""
    seen = [Seen(**w) for run in runs.values() for w in run["warnings"]]
    for category, pattern, who in ALLOWED:
        assert any(w.category == category.__name__ and re.search(pattern, w.message) and w.caller == who for w in seen), pattern


def test_the_collector_attributes_a_deprecated_call_to_its_caller():
    """The check above can fail: a transformers deprecation called from this repository's code
    (this test file is in it) counts as ftc's, even though it is allow-listed for PEFT."""
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, Qwen2Config

    model = AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16,
                                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    with Collector() as seen:
        assert model.is_gradient_checkpointing is False
    assert [(w.message.split()[0], w.caller) for w in not_allowed(seen.warnings)] == [("`is_gradient_checkpointing`", "ftc")]
