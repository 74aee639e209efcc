"""Preference data: the compiler's ids against TRL 1.16's own preparation, the data rules, bad input.

The oracle is TRL's `DPOTrainer._prepare_dataset` / `KTOTrainer._prepare_dataset`, run on the real
rows of ../shared/data/preference turned into TRL's conversational format here (independently of
ftc's mapping): every row's prompt, chosen and rejected (completion) ids must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from conftest import NEEDS_SHARED, SHARED, TOKENIZER, write_recipe
from fixtures import write_jsonl

DPO_DATA = SHARED / "data" / "preference" / "dpo_en_demo.json"
KTO_DATA = SHARED / "data" / "preference" / "kto_en_demo.json"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _compile(folder: Path, recipe: dict, *overrides: str):
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe

    folder.mkdir(parents=True, exist_ok=True)
    path = write_recipe(folder, recipe)
    return compile_recipe(load_recipe(path, list(overrides)), folder / "plan.lock")


def dpo_recipe(path: Path = DPO_DATA, **train) -> dict:
    return {
        "sources": {"pairs": {"path": str(path), "columns": {
            "prompt": {"from": "conversations", "roles": ROLES}, "chosen": "chosen", "rejected": "rejected"}}},
        "template": {"format": "preference", "prompt": {"field": "prompt"}, "chosen": {"field": "chosen"},
                     "rejected": {"field": "rejected"}},
        "model": {"name": "tiny", "tokenizer": str(TOKENIZER), "max_seq_length": 4096},
        "train": {"method": "dpo", **train},
    }


def kto_recipe(path: Path = KTO_DATA) -> dict:
    return {
        "sources": {"kto": {"path": str(path)}},
        "template": {"format": "unpaired_preference", "completion": {"field": "messages"}, "label": {"field": "label"}},
        "model": {"name": "tiny", "tokenizer": str(TOKENIZER), "max_seq_length": 4096},
        "train": {"method": "kto"},
    }


def _tokens(compiled, split: str = "train") -> dict[str, dict]:
    return {r["row_id"]: r for r in compiled.tokens[split].to_pylist()}


def _trl_dpo(rows: list[dict], tok) -> list[dict]:
    import datasets
    from trl import DPOConfig, DPOTrainer

    ds = datasets.Dataset.from_list([{
        "prompt": [{"role": ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]],
        "chosen": [{"role": "assistant", "content": r["chosen"]["value"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]["value"]}],
    } for r in rows])
    args = DPOConfig(output_dir="/tmp/unused", max_length=None, report_to=[], bf16=False)
    return DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), ds, tok, args, "train").to_list()


@NEEDS_SHARED
def test_dpo_ids_equal_trl_dpo_preparation_on_every_real_row(tmp_path):
    from transformers import AutoTokenizer

    compiled = _compile(tmp_path, dpo_recipe())
    ours = _tokens(compiled)
    rows = json.loads(DPO_DATA.read_text())
    assert len(ours) == len(rows) == 300 and compiled.lock["tokens"]["stats"]["train"]["pairs"] == 300
    theirs = _trl_dpo(rows, AutoTokenizer.from_pretrained(TOKENIZER))
    by_order = [ours[rid] for rid in compiled.splits["train"].column("row_id").to_pylist()]
    for mine, trl in zip(by_order, theirs):
        assert mine["prompt_ids"] == trl["prompt_ids"]
        assert mine["chosen_ids"] == trl["chosen_ids"]
        assert mine["rejected_ids"] == trl["rejected_ids"]
        assert mine["chosen_length"] == len(trl["chosen_ids"]) and mine["prompt_length"] == len(trl["prompt_ids"])
    # eos where TRL puts it: each completion ends <|im_end|> + the template's newline
    im_end = AutoTokenizer.from_pretrained(TOKENIZER).eos_token_id
    assert all(r["chosen_ids"][-2] == im_end and r["rejected_ids"][-2] == im_end for r in by_order)
    assert "warnings" not in compiled.lock["tokens"]  # ChatML: no prompt was cut


@NEEDS_SHARED
def test_kto_ids_equal_trl_kto_preparation_on_every_real_row(tmp_path):
    import datasets
    from transformers import AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    compiled = _compile(tmp_path, kto_recipe())
    rows = json.loads(KTO_DATA.read_text())
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    ds = datasets.Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "label": r["label"]}
                                     for r in rows])
    stub = SimpleNamespace(_tokenizer=tok, calculate_KL=False, desirable_weight=1.0, undesirable_weight=1.0)
    theirs = KTOTrainer._prepare_dataset(stub, ds, tok, KTOConfig(output_dir="/tmp/unused", max_length=None, report_to=[], bf16=False),
                                         "train").to_list()
    ours = _tokens(compiled)
    mine = [ours[rid] for rid in compiled.splits["train"].column("row_id").to_pylist()]
    assert len(mine) == len(theirs) == 300
    for a, b in zip(mine, theirs):
        assert (a["prompt_ids"], a["completion_ids"], a["label"]) == (b["prompt_ids"], b["completion_ids"], b["label"])
    stats = compiled.lock["tokens"]["stats"]["train"]
    assert (stats["desirable"], stats["undesirable"]) == (150, 150)


def _pairs(tmp_path: Path, rows: list[dict]) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_text_pairs_match_trl_and_drops_are_counted_by_reason(tmp_path):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    import datasets

    rows = [{"q": "Q: 2+2?\nA:", "good": " 4", "bad": " 5"},
            {"q": "Say hi.", "good": " hi", "bad": " hi"},  # identical: nothing to learn
            {"q": "Name a colour.", "good": "", "bad": " blue"},  # empty chosen
            {"q": "Capital of France?", "good": " Paris", "bad": " Lyon"}]
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, rows))}},
              "template": {"format": "preference", "prompt": "{{ q }}", "chosen": {"field": "good"}, "rejected": {"field": "bad"}},
              "model": {"name": "tiny", "tokenizer": str(TOKENIZER)}, "train": {"method": "orpo"}}
    compiled = _compile(tmp_path, recipe)
    stage = next(s for s in compiled.lock["stages"] if s["stage"] == "tokenize (train)")
    assert stage["dropped"] == {"chosen identical to rejected": 1, "empty chosen": 1} and stage["rows_out"] == 2
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    kept = [rows[0], rows[3]]
    ds = datasets.Dataset.from_list([{"prompt": r["q"], "chosen": r["good"], "rejected": r["bad"]} for r in kept])
    theirs = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), ds, tok,
                                         DPOConfig(output_dir="/tmp/unused", max_length=None, report_to=[], bf16=False), "train").to_list()
    ours = list(_tokens(compiled).values())
    assert [(o["prompt_ids"], o["chosen_ids"], o["rejected_ids"]) for o in ours] == \
           [(t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]) for t in theirs]
    assert ours[0]["chosen_ids"][-1] == tok.eos_token_id  # text: eos appended, as TRL's add_eos does
    assert len(compiled.lock["samples"]["train"]) == 2 and compiled.lock["settings"]["train"]["orpo"] == {"beta": 0.1}


def test_ultrafeedback_lists_take_the_shared_prompt_once_and_differing_prompts_name_the_row(tmp_path, cli):
    user = {"role": "user", "content": "Pick a number."}
    rows = [{"chosen": [user, {"role": "assistant", "content": "7"}], "rejected": [user, {"role": "assistant", "content": "seven?"}]}]
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, rows))}},
              "template": {"format": "preference", "chosen": {"field": "chosen"}, "rejected": {"field": "rejected"}},
              "model": {"name": "tiny", "tokenizer": str(TOKENIZER)}, "train": {"method": "simpo"}}
    compiled = _compile(tmp_path, recipe)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    row = next(iter(_tokens(compiled).values()))
    assert row["prompt_ids"] == tok.apply_chat_template([user], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert compiled.lock["settings"]["train"]["simpo"] == {"beta": 2.0, "cpo_alpha": 0.0, "label_smoothing": 0.0, "simpo_gamma": 0.5}

    other = {"role": "user", "content": "Pick a letter."}
    _pairs(tmp_path, rows + [{"chosen": [user, {"role": "assistant", "content": "3"}],
                              "rejected": [other, {"role": "assistant", "content": "b"}]}])
    code, _, err = cli("compile", write_recipe(tmp_path, recipe), "-o", tmp_path / "p.lock")
    assert code == 2 and "FTC242" in err and "row s:pairs.jsonl:2" in err and "chosen and rejected give different prompts" in err


def test_overlong_pairs_truncate_the_prompt_first_drop_or_stop(tmp_path, cli):
    long_prompt = " ".join(f"word{i}" for i in range(60))
    rows = [{"q": long_prompt, "good": " yes indeed", "bad": " no way"}, {"q": "hi", "good": " a", "bad": " b"}]
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, rows))}},
              "template": {"format": "preference", "prompt": "{{ q }}", "chosen": {"field": "good"}, "rejected": {"field": "bad"}},
              "model": {"name": "tiny", "tokenizer": str(TOKENIZER), "max_seq_length": 32}, "train": {"method": "dpo"}}
    compiled = _compile(tmp_path, recipe)
    first = _tokens(compiled)["s:pairs.jsonl:1"]
    assert first["prompt_length"] + max(first["chosen_length"], first["rejected_length"]) == 32
    full = _compile(tmp_path / "full", recipe, "model.max_seq_length=4096")
    untouched = _tokens(full)["s:pairs.jsonl:1"]
    assert first["chosen_ids"] == untouched["chosen_ids"]  # the completions kept whole: the prompt gave way
    assert first["prompt_ids"] == untouched["prompt_ids"][-first["prompt_length"]:]  # cut from the left
    assert compiled.lock["tokens"]["stats"]["train"]["truncated"] == 1
    dropped = _compile(tmp_path / "drop", recipe, "train.overlong=drop")
    assert next(s for s in dropped.lock["stages"] if s["stage"] == "tokenize (train)")["dropped"] == {
        "longer than max_seq_length (32)": 1}
    code, _, err = cli("compile", write_recipe(tmp_path, recipe), "--set", "train.overlong=error", "-o", tmp_path / "e.lock")
    assert code == 2 and "FTC610" in err and "row s:pairs.jsonl:1" in err


def test_missing_chosen_names_the_file_and_the_closest_columns(tmp_path, cli):
    rows = [{"prompt": "p", "chosen_answer": "a", "rejected": "b"}]
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, rows))}},
              "template": {"format": "preference", "prompt": {"field": "prompt"}, "chosen": {"field": "chosen"},
                           "rejected": {"field": "rejected"}},
              "model": {"name": "tiny", "tokenizer": str(TOKENIZER)}, "train": {"method": "dpo"}}
    code, _, err = cli("compile", write_recipe(tmp_path, recipe), "-o", tmp_path / "p.lock")
    assert code == 2 and "FTC240" in err and "pairs.jsonl" in err and "template.chosen.field" in err
    assert "chosen_answer" in err


def test_kto_label_must_be_boolean(tmp_path, cli):
    rows = [{"prompt": "p", "completion": "a", "label": "yes"}]
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, rows))}},
              "template": {"format": "unpaired_preference", "prompt": {"field": "prompt"}, "completion": {"field": "completion"},
                           "label": {"field": "label"}},
              "model": {"name": "tiny", "tokenizer": str(TOKENIZER)}, "train": {"method": "kto"}}
    code, _, err = cli("compile", write_recipe(tmp_path, recipe), "-o", tmp_path / "p.lock")
    assert code == 2 and "FTC241" in err and "template.label" in err and "'yes'" in err
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "completion": "a", "label": True},
                                           {"prompt": "q", "completion": "b", "label": None}])
    code, _, err = cli("compile", write_recipe(tmp_path, recipe), "-o", tmp_path / "p.lock")
    assert code == 2 and "FTC604" in err and "label is null" in err


@pytest.mark.parametrize("method,fmt,code,where", [
    ("dpo", "prompt_completion", "FTC180", "template.format"),
    ("kto", "preference", "FTC180", "template.format"),
    ("sft", "preference", "FTC180", "train.method"),
])
def test_a_method_whose_template_format_does_not_fit_is_refused(tmp_path, cli, method, fmt, code, where):
    template = ({"format": fmt, "prompt": "{{ q }}", "completion": "{{ a }}"} if fmt == "prompt_completion" else
                {"format": fmt, "prompt": "{{ q }}", "chosen": "{{ a }}", "rejected": "{{ b }}"})
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, [{"q": "x", "a": "y", "b": "z"}]))}}, "template": template,
              "train": {"method": method}}
    rc, _, err = cli("validate", write_recipe(tmp_path, recipe))
    assert rc == 2 and code in err and f"at {where}" in err and "hint:" in err


def test_keys_of_another_method_and_packing_are_refused(tmp_path, cli):
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, [{"q": "x", "a": "y", "b": "z"}]))}},
              "template": {"format": "preference", "prompt": "{{ q }}", "chosen": "{{ a }}", "rejected": "{{ b }}"},
              "train": {"method": "dpo", "kto": {"beta": 0.2}}}
    rc, _, err = cli("validate", write_recipe(tmp_path, recipe))
    assert rc == 2 and "FTC181" in err and "train.kto" in err
    recipe["train"] = {"method": "dpo", "packing": True}
    rc, _, err = cli("validate", write_recipe(tmp_path, recipe))
    assert rc == 2 and "FTC182" in err


def test_a_completion_that_is_not_one_and_a_pair_without_prompt_are_refused(tmp_path, cli):
    user = {"role": "user", "content": "u"}
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, [{"c": [user], "r": "x"}]))}},
              "template": {"format": "preference", "chosen": {"field": "c"}, "rejected": {"field": "r"}},
              "model": {"name": "tiny", "tokenizer": str(TOKENIZER)}, "train": {"method": "dpo"}}
    rc, _, err = cli("compile", write_recipe(tmp_path, recipe), "-o", tmp_path / "p.lock")
    assert rc == 2 and "FTC243" in err and "ending with a 'user' turn" in err
    _pairs(tmp_path, [{"c": "a", "r": "b"}])
    rc, _, err = cli("compile", write_recipe(tmp_path, recipe), "-o", tmp_path / "p.lock")
    assert rc == 2 and "FTC244" in err


def test_kto_needs_two_completions_per_batch(tmp_path, cli):
    recipe = {"sources": {"s": {"path": str(_pairs(tmp_path, [{"q": "x", "a": "y", "label": True}]))}},
              "template": {"format": "unpaired_preference", "prompt": "{{ q }}", "completion": "{{ a }}", "label": {"field": "label"}},
              "train": {"method": "kto", "per_device_train_batch_size": 1}}
    rc, _, err = cli("validate", write_recipe(tmp_path, recipe))
    assert rc == 2 and "FTC183" in err and "at train.per_device_train_batch_size" in err
    recipe["train"]["kto"] = {"loss_type": "apo_zero_unpaired"}  # no KL term: one completion a batch is fine
    rc, _, err = cli("validate", write_recipe(tmp_path, recipe))
    assert rc == 0, err


def test_a_model_that_carries_its_adapter_keeps_no_reference_copy(tmp_path):
    """unsloth hands TRL a PEFT model: the DPO reference is still the base with the adapter disabled."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from fixtures import write_tiny_model_dir
    from ftc.runtime.preference import trainer_class

    model = AutoModelForCausalLM.from_config(__import__("transformers").AutoConfig.from_pretrained(
        write_tiny_model_dir(tmp_path / "tiny", num_hidden_layers=1)))
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    data = datasets.Dataset.from_list([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}])
    args = DPOConfig(output_dir=str(tmp_path / "o"), report_to=[], bf16=False, use_cpu=True, max_length=None)
    trainer = trainer_class("dpo")(model=model, args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(TOKENIZER))
    assert list(trainer.model.peft_config) == ["default"]
    assert trainer.train_dataset.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]  # not re-tokenized
