"""Values of train keys that go straight to TRL/transformers are checked at compile, against the
installed libraries where they say what they accept.

Before: `train.grpo.loss_type` and `train.fsdp` were free strings; a typo compiled and `ftc run`
failed in GRPOConfig/TrainingArguments with a traceback, after the model loaded (or, for two
FSDP sharding strategies, silently trained with the first). Now a bad value is exit 2 at
`ftc validate`, at its JSON path, with the accepted values; and the accepted sets are compared
here with what the installed TRL and transformers accept (their enums, their help text, and
TrainingArguments itself), so the schema's copy cannot drift from the library unnoticed.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import fields

import pytest

from conftest import ROOT

SCHEMA = json.loads((ROOT / "compiler" / "recipe.schema.json").read_text(encoding="utf-8"))
TRAIN = SCHEMA["$defs"]["train"]["properties"]


def grpo_recipe(demo) -> str:
    """The demo's rows as a GRPO recipe (prompt format, one regex reward)."""
    recipe = json.loads((demo / "demo.json").read_text(encoding="utf-8"))
    recipe["template"] = {"format": "prompt", "prompt": "Question: {{ question }}\nAnswer:"}
    recipe["split"] = {"eval": 0}
    recipe["train"] = {"method": "grpo", "per_device_train_batch_size": 4, "max_steps": 2,
                       "grpo": {"num_generations": 2, "rewards": [{"kind": "regex", "name": "f", "pattern": "[0-9]"}]}}
    path = demo / "grpo.json"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    return str(path)


def help_values(config: type, key: str, lead: str) -> set[str]:
    """The quoted values in the sentence of `config`'s `key` help text that starts with `lead`."""
    text = next(f.metadata["help"] for f in fields(config) if f.name == key)
    sentence = text[text.index(lead):].split(".")[0]
    return set(re.findall(r"'([a-z_0-9]+)'", sentence))


# --------------------------------------------------------------------------- train.grpo.loss_type


def test_a_grpo_loss_type_trl_does_not_have_is_refused_at_validate(cli, demo):
    path = grpo_recipe(demo)
    code, _, err = cli("validate", path)
    assert code == 0, err
    code, _, err = cli("validate", path, "--set", "train.grpo.loss_type=dr-grpo")
    assert code == 2 and "Traceback" not in err, err
    assert "at train.grpo.loss_type:" in err and '"dr-grpo" is not one of grpo, dr_grpo, dapo, bnpo, cispo, sapo, vespo' in err


def test_the_grpo_loss_types_are_the_ones_trl_supports():
    """TRL lists them in GRPOConfig.loss_type's help (it has no enum); 'luspo' is left out on purpose:
    TRL wants importance_sampling_level='sequence' for it, and ftc does not set that key."""
    trl = pytest.importorskip("trl")
    supported = help_values(trl.GRPOConfig, "loss_type", "Supported values are")
    assert "dapo" in supported and TRAIN["grpo"]["properties"]["loss_type"]["default"] == "dapo" == next(
        f.default for f in fields(trl.GRPOConfig) if f.name == "loss_type")
    assert set(TRAIN["grpo"]["properties"]["loss_type"]["enum"]) == supported - {"luspo"}


def test_the_preference_loss_types_are_the_ones_trl_supports():
    trl = pytest.importorskip("trl")
    assert set(TRAIN["dpo"]["properties"]["loss_type"]["enum"]) == help_values(trl.DPOConfig, "loss_type", "Possible values are")
    kto = next(f.metadata["choices"] for f in fields(trl.KTOConfig) if f.name == "loss_type")  # KTO has an enum
    assert set(TRAIN["kto"]["properties"]["loss_type"]["enum"]) == set(kto)


def test_the_scheduler_and_tracker_names_are_the_trainers():
    pytest.importorskip("torch")
    from transformers.trainer_utils import SchedulerType

    assert set(TRAIN["lr_scheduler_type"]["enum"]) <= {s.value for s in SchedulerType}
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(TRAIN["report_to"]["oneOf"][0]["enum"]) - {"none"} <= set(INTEGRATION_TO_CALLBACK)


# --------------------------------------------------------------------------- train.fsdp


def test_an_fsdp_word_transformers_does_not_have_is_refused_with_a_suggestion(cli, demo):
    code, _, err = cli("validate", demo / "demo.json", "--set", "train.fsdp=full_shrd auto_wrap")
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error[FTC196]: --set train.fsdp=full_shrd auto_wrap: at train.fsdp: train.fsdp word 'full_shrd' "
                          "is not an FSDP option of the installed transformers; did you mean 'full_shard'?"), err
    assert "full_shard, shard_grad_op, " in err and "auto_wrap" in err


@pytest.mark.parametrize("fsdp, named", [("hybrid_shard auto_wrap", "hybrid_shard"),
                                         ("full_shard shard_grad_op", "full_shard, shard_grad_op")])
def test_an_fsdp_strategy_transformers_would_refuse_or_ignore_is_refused(cli, demo, fsdp, named):
    code, _, err = cli("validate", demo / "demo.json", "--set", f"train.fsdp={fsdp}")
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(f"error[FTC197]: --set train.fsdp={fsdp}: at train.fsdp: train.fsdp {fsdp!r} names the sharding "
                          f"strategy {named}; the installed transformers takes exactly one of full_shard or shard_grad_op"), err


def test_the_fsdp_words_are_the_installed_transformers():
    pytest.importorskip("torch")
    from transformers.trainer_utils import FSDPOption

    from ftc.compiler.trainer_choices import FSDP_STRATEGIES, fsdp_options

    assert fsdp_options() == tuple(o.value for o in FSDPOption)
    assert set(FSDP_STRATEGIES) <= set(fsdp_options())


def test_what_compile_accepts_is_what_training_arguments_accepts_and_it_is_passed_without_the_deprecated_string():
    """Every combination of up to three FSDPOption words: check_fsdp refuses exactly those that
    TrainingArguments refuses (plus two strategies at once, which it would take silently), and
    for the rest ftc's fsdp_config gives the Trainer the same FSDP plugin as the words did."""
    pytest.importorskip("torch")
    import logging

    from transformers import TrainingArguments

    from ftc.compiler.trainer_choices import FSDP_STRATEGIES, check_fsdp, fsdp_options
    from ftc.errors import FtcError
    from ftc.runtime.trainer_config import fsdp_arguments

    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        for n in (1, 2, 3):
            for words in itertools.combinations(fsdp_options(), n):
                fsdp = " ".join(words)
                try:
                    legacy = TrainingArguments(output_dir="unused", use_cpu=True, fsdp=fsdp).fsdp_plugin_args
                except ValueError:
                    legacy = None
                try:
                    check_fsdp(fsdp, None)
                except FtcError as err:
                    two = sum(w in FSDP_STRATEGIES for w in words) > 1
                    assert legacy is None or two, f"{fsdp!r}: refused ({err.code}) but TrainingArguments takes it"
                    continue
                assert legacy is not None, f"{fsdp!r}: accepted but TrainingArguments refuses it"
                logged.clear()
                ours = TrainingArguments(output_dir="unused", use_cpu=True, **fsdp_arguments(fsdp)).fsdp_plugin_args
                assert ours == legacy, fsdp
                assert not [m for m in logged if "deprecated" in m], (fsdp, logged)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert fsdp_arguments("") == {"fsdp": ""}
