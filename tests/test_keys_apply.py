"""Issue 12: a key the user wrote that does not apply is refused at `ftc validate`/`ftc compile`.

Each case was accepted and ignored before: a file-reader key on an hf source, packing or
micro_batch "auto" under GRPO, eval_steps without an eval split, a loss-mask key for another
format, model.config on a pretrained model, 4-bit with random weights, train.grpo under SFT.
The resolver fills some of these keys itself; those defaults are not the user's, so the
shipped recipes and the default cases still validate. Every case runs the real CLI."""

from __future__ import annotations

import json

import pytest

from conftest import DEMO_TOKENIZER, ROOT, write_recipe

PC = {"format": "prompt_completion", "prompt": "Q: {{ q }}", "completion": " {{ a }}"}
PROMPT = {"format": "prompt", "prompt": "Q: {{ q }}"}
GRPO = {"method": "grpo", "per_device_train_batch_size": 2, "grpo": {"num_generations": 2, "rewards": [{"kind": "regex", "pattern": "x"}]}}


def recipe(tmp_path, source=None, **extra):
    (tmp_path / "d.jsonl").write_text('{"q": "hello", "a": "world"}\n{"q": "hi", "a": "there"}\n')
    return write_recipe(tmp_path, {"sources": {"s": source or {"path": "d.jsonl"}}, "template": PC, **extra})


def refused(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 2 and "Traceback" not in err, (code, out, err)
    return err


@pytest.mark.parametrize("key, value", [("captures", "(?P<x>.*)"), ("encoding", "gb18030"), ("delimiter", ";"), ("format", "csv")])
def test_a_file_reader_key_on_an_hf_source_is_refused(cli, tmp_path, key, value):
    r = recipe(tmp_path, {"hf": {"name": "some/dataset"}, key: value})
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[FTC212]: {r}: at sources.s.{key}: sources.s.{key} applies to files read from 'path'")
    assert "is a Hugging Face dataset" in err and f"drop sources.s.{key}" in err


def test_an_hf_source_without_file_keys_still_validates(cli, tmp_path):
    """The resolver gives a path source encoding "auto"; an hf source gets none and is accepted."""
    code, _, err = cli("validate", recipe(tmp_path, {"hf": {"name": "some/dataset"}}))
    assert code == 0, err


def test_packing_under_grpo_is_refused_and_false_is_accepted(cli, tmp_path):
    r = recipe(tmp_path, template=PROMPT, train={**GRPO, "packing": True})
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock")
    assert err.startswith(f"error[FTC150]: {r}: at train.packing: train.packing applies to SFT")
    assert "drop train.packing" in err and not (tmp_path / "p.lock").exists()
    assert cli("validate", r, "--set", "train.packing=false")[0] == 0


def test_micro_batch_auto_under_grpo_is_refused_and_plan_is_accepted(cli, tmp_path):
    """memory_plan.plan_memory(can_split=False): GRPO always keeps the plan's split, so "auto" is ignored."""
    r = recipe(tmp_path, template=PROMPT, train={**GRPO, "micro_batch": "auto"})
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[FTC151]: {r}: at train.micro_batch: train.micro_batch \"auto\" applies to SFT")
    assert "GRPO keeps the plan's split" in err and 'set it to "plan"' in err
    assert cli("validate", r, "--set", "train.micro_batch=plan")[0] == 0


def test_eval_steps_without_an_eval_split_is_refused_under_either_method(cli, tmp_path):
    r = recipe(tmp_path, train={"eval_steps": 5})
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[FTC152]: {r}: at train.eval_steps: train.eval_steps evaluates the eval split, and split.eval is 0")
    assert "set split.eval" in err
    assert cli("validate", r, "--set", "split.eval=1")[0] == 0
    g = recipe(tmp_path, template=PROMPT, train={**GRPO, "eval_steps": 5})
    assert "error[FTC152]" in refused(cli, "validate", g)
    # GRPO generates for the eval split every eval_steps (runtime/grpo.py): with a split, it applies
    assert cli("validate", g, "--set", "split.eval=1")[0] == 0


@pytest.mark.parametrize("key, fmt, template", [
    ("completion_only_loss", "text", {"format": "text", "text": "{{ q }}"}),
    ("completion_only_loss", "prompt", PROMPT),
    ("assistant_only_loss", "prompt_completion", PC),
])
def test_a_loss_mask_key_for_another_format_is_refused(cli, tmp_path, key, fmt, template):
    train = {**GRPO, key: True} if fmt == "prompt" else {key: False}
    r = recipe(tmp_path, template=template, train=train)
    err = refused(cli, "validate", r)
    applies = {"completion_only_loss": "prompt_completion", "assistant_only_loss": "messages"}[key]
    assert err.startswith(f"error[FTC153]: {r}: at train.{key}: train.{key} sets the loss mask of format {applies!r}, "
                          f"and template.format is {fmt!r}")
    assert f"drop train.{key}" in err


def test_model_config_without_random_init_is_refused(cli, tmp_path):
    r = recipe(tmp_path, model={"name": "tiny", "tokenizer": str(DEMO_TOKENIZER), "config": {"hidden_size": 64}})
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[FTC154]: {r}: at model.config: model.config overrides the config of a model built with "
                          "random weights, and model.init is 'pretrained'")
    assert 'set model.init to "random"' in err
    assert cli("validate", r, "--set", "model.init=random")[0] == 0
    assert cli("validate", r, "--set", "model.config={}")[0] == 0  # an empty override changes nothing


def test_4bit_with_random_init_is_refused_at_compile(cli, tmp_path):
    r = recipe(tmp_path, model={"name": "tiny", "tokenizer": str(DEMO_TOKENIZER), "init": "random", "load_in_4bit": True})
    err = refused(cli, "compile", r, "-o", tmp_path / "p.lock")
    assert err.startswith(f"error[FTC710]: {r}: at model.load_in_4bit: 4-bit quantization needs trained weights, and model.init is random")
    assert not (tmp_path / "p.lock").exists()


def test_a_grpo_section_under_sft_is_refused(cli, tmp_path):
    r = recipe(tmp_path, train={"grpo": {"num_generations": 4}})
    err = refused(cli, "validate", r)
    assert err.startswith(f"error[FTC155]: {r}: at train.grpo: train.grpo configures GRPO, and train.method is 'sft'")
    assert 'set train.method to "grpo", or drop train.grpo' in err


def test_a_set_that_makes_a_key_not_apply_is_blamed_on_the_set(cli, tmp_path):
    r = recipe(tmp_path, template=PROMPT, train=GRPO)
    err = refused(cli, "validate", r, "--set", "train.packing=true")
    assert err.startswith("error[FTC150]: --set train.packing=true: at train.packing")


@pytest.mark.parametrize("name", ["alpaca", "demo", "gsm8k_grpo", "medical"])
def test_the_shipped_recipes_still_validate(cli, name):
    tok = ROOT.parent / "shared" / "tokenizers" / "qwen2.5-bpe"
    sets = [] if name == "demo" else ["--set", f"model.tokenizer={tok}"]
    code, out, err = cli("validate", ROOT / "recipes" / f"{name}.json", *sets)
    method = json.loads((ROOT / "recipes" / f"{name}.json").read_text(encoding="utf-8"))["train"]["method"]
    assert code == 0 and out.strip().endswith(f"method {method})"), err
