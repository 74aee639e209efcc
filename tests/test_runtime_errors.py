"""The runtime's error rules (FTC7xx in ftc/errors.py): each is fed the bad input somewhere in
the tests, and the runtime raises only specific rules, no pass-through code.

Most rules are fed through the CLI or the run skeleton in the test file of the module that
raises them (test_run.py, test_grpo.py, test_score.py, ...); the ones here have no better
home: a method this ftc has no trainer for, an SFT plan without token artifacts, packing
under an attention kernel that would let packed rows see each other.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fixtures import compile_plan, train

from ftc.errors import RULES, FtcError

from conftest import ROOT

TESTS = Path(__file__).resolve().parent
RUNTIME = ROOT / "runtime"


def test_every_runtime_rule_is_fed_by_a_test():
    """A rule without a test that triggers it is a message nobody has seen: each FTC7xx code
    (but the FTC700 pass-through, which the runtime no longer raises) is asserted in a test."""
    asserted = "".join(p.read_text(encoding="utf-8") for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)
    asserted += Path(__file__).read_text(encoding="utf-8").split("# ---- fed here", 1)[1]
    untested = [code for code in RULES if code.startswith("FTC7") and code not in asserted]
    assert untested == []


def test_the_runtime_raises_only_specific_rules():
    """No `FtcError("FTC105"/"FTC601"/"FTC700", reason=..., hint=...)` in runtime/: every call site
    names its own rule and passes values, and a code it raises is a defined rule."""
    for path in sorted(RUNTIME.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "run_error" not in text and "reason=f" not in text, path.name
        for code in re.findall(r'FtcError\(\s*"(FTC\d+)"', text):
            assert code in RULES and code not in ("FTC105", "FTC601", "FTC700"), (path.name, code)


# ---- fed here


def test_a_method_without_a_trainer_is_refused():
    from ftc.runtime.methods import method_for

    assert method_for("sft").name == "sft" and method_for("grpo").name == "grpo"
    with pytest.raises(FtcError) as err:
        method_for("ppo")
    assert err.value.code == "FTC709" and err.value.path == "train.method"
    assert "train.method 'ppo' has no trainer in this ftc" in str(err.value)
    assert "(sft, grpo, dpo, orpo, simpo, kto)" in err.value.hint


@pytest.fixture
def demo(tmp_path) -> Path:
    shutil.copytree(ROOT / "recipes" / "demo", tmp_path / "demo")
    return tmp_path


def demo_plan(folder: Path, *, tokenize: bool = True):
    """The shipped demo recipe (packed SFT, tiny random-init model), compiled by the real compiler."""
    recipe = json.loads((ROOT / "recipes" / "demo.json").read_text())
    recipe.pop("$schema")
    return compile_plan(folder, recipe, "transforms.2.extract.required=false", tokenize=tokenize)


def test_sft_on_a_plan_without_token_artifacts_is_refused(demo):
    pytest.importorskip("trl")
    plan = demo_plan(demo, tokenize=False)
    assert plan.artifact("tokens", "train") is None
    with pytest.raises(FtcError) as err:
        train(plan, demo / "run")
    assert err.value.code == "FTC726" and "the plan has no token artifact for SFT to train on" in str(err.value)
    assert "ftc compile" in err.value.hint and not (demo / "run" / "checkpoints").exists()


def test_packing_under_an_attention_that_mixes_packed_rows_is_refused(demo):
    pytest.importorskip("trl")
    from ftc.runtime.model import ModelSetup, load_base_model
    from ftc.runtime.sft import METHOD

    plan = demo_plan(demo)
    data = METHOD.prepare(plan, plan.settings["train"], tokenizer=None, world_size=1)
    assert data.packed
    loaded = load_base_model({**plan.settings["model"], "name": plan.model_location}, seed=0)
    METHOD.check_model(ModelSetup(loaded, None, "hf", attention="sdpa", packing_safe=True), data)  # the safe kernel passes
    with pytest.raises(FtcError) as err:
        METHOD.check_model(ModelSetup(loaded, None, "hf", attention="my_kernel", packing_safe=False), data)
    assert err.value.code == "FTC731" and err.value.path == "train.packing"
    assert "packing with attention 'my_kernel', which would let packed rows attend to each other" in str(err.value)
    assert "train.packing=false" in err.value.hint
