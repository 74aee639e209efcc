"""ftc's token artifacts against independent implementations, on real rows of ../shared, by token ids.

- prompt/completion: TRL's own SFT preparation (SFTTrainer with completion_only_loss) of the very
  texts ftc rendered gives the same input_ids and the same labels;
- chat: `apply_chat_template(..., return_assistant_tokens_mask=True)` and TRL's assistant_only_loss
  give ftc's ids and its trained positions;
- packing: every row of the split is in exactly one pack, its ids in one piece, positions restarting;
- GSM8K: `answer_number` is the text after `####` (commas removed), row by row.
(Already elsewhere: labels decoded against the answer text in test_tokenize.py; the packer's
invariants on synthetic lengths in test_pack.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SHARED, TOKENIZER  # noqa: E402

pytest.importorskip("trl")
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
pytestmark = pytest.mark.skipif(not GSM8K.exists() or not (TOKENIZER / "tokenizer.json").exists(),
                                reason=f"needs the shared GSM8K data and Qwen2.5 tokenizer under {SHARED}")
ROWS = 48


def compiled(folder: Path, template: dict, *, train: dict | None = None) -> dict:
    """Compile ROWS real GSM8K rows with the Qwen2.5 tokenizer; {split: [row dicts of data joined with tokens]}."""
    from fixtures import compile_plan

    recipe = {
        "name": "oracle", "sources": {"gsm8k": {"path": str(GSM8K), "transforms": [{"limit": ROWS}]}},
        "transforms": [{"extract": {"from": "answer", "pattern": "####\\s*(-?[0-9][0-9,]*)", "into": "answer_number", "remove": ","}}],
        "split": {"eval": 8}, "template": template,
        "model": {"name": "tiny", "tokenizer": str(TOKENIZER), "max_seq_length": 1024},
        "train": {"packing": False, **(train or {})},
    }
    compile_plan(folder, recipe)
    lock = json.loads((folder / "plan.lock").read_text(encoding="utf-8"))
    out = {}
    for split in ("train", "eval"):
        data = pq.read_table(folder / lock["artifacts"]["data"][split]["path"]).to_pylist()
        tokens = {r["row_id"]: r for r in pq.read_table(folder / lock["artifacts"]["tokens"][split]["path"]).to_pylist()}
        out[split] = [{**r, **tokens[r["row_id"]]} for r in data]
    out["lock"] = lock
    return out


@pytest.fixture(scope="module")
def qwen():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def trl_prepared(tokenizer, rows: list[dict], folder: Path, **config) -> list[dict]:
    """TRL's SFTTrainer preparation (tokenize, eos, masks -> labels) of `rows`, as training would do it."""
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from fixtures import TINY_QWEN2

    values = dict(TINY_QWEN2)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **{**values, "num_hidden_layers": 1}))
    args = SFTConfig(output_dir=str(folder / "trl"), max_length=None, packing=False, report_to="none", use_cpu=True,
                     dataset_num_proc=None, **config)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return list(trainer.train_dataset)


def test_prompt_completion_ids_and_labels_are_trls_own_preparation(tmp_path, qwen):
    out = compiled(tmp_path, {"format": "prompt_completion", "prompt": "Question: {{ question }}\nAnswer:",
                              "completion": " {{ answer }}"})
    rows = out["train"]
    assert len(rows) == ROWS - 8
    theirs = trl_prepared(qwen, [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows], tmp_path,
                          completion_only_loss=True)
    assert len(theirs) == len(rows)
    for ours, trl in zip(rows, theirs):
        assert ours["input_ids"] == trl["input_ids"], ours["row_id"]
        assert ours["labels"] == trl["labels"], ours["row_id"]
    assert all(r["labels"][0] == -100 and r["labels"][-1] == qwen.eos_token_id for r in rows)  # prompt masked, eos trained


CHAT = {"format": "messages", "messages": [
    {"role": "system", "content": "Solve the problem step by step."},
    {"role": "user", "content": "{{ question }}"},
    {"role": "assistant", "content": "{{ answer }}"},
]}


def test_chat_ids_and_masks_are_apply_chat_templates_and_trls(tmp_path, qwen):
    out = compiled(tmp_path, CHAT)
    rows = out["train"]
    for r in rows:
        got = qwen.apply_chat_template(r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert r["input_ids"] == list(got["input_ids"]), r["row_id"]
        trained = [i for i, label in enumerate(r["labels"]) if label != -100]
        assert trained == [i for i, m in enumerate(got["assistant_masks"]) if m], r["row_id"]
        assert all(r["labels"][i] == r["input_ids"][i] for i in trained)
    theirs = trl_prepared(qwen, [{"messages": r["messages"]} for r in rows], tmp_path, assistant_only_loss=True)
    for ours, trl in zip(rows, theirs):
        assert (ours["input_ids"], ours["labels"]) == (trl["input_ids"], trl["labels"]), ours["row_id"]


def test_packs_hold_every_row_once_in_one_piece_with_positions_restarting(tmp_path):
    """The packed artifact against the same rows compiled unpacked; the packs as training items, collated by
    TRL's padding-free collator: each row's ids in one piece, position_ids restarting at 0 for each row."""
    from ftc.runtime.token_data import collator, to_items

    template = {"format": "prompt_completion", "prompt": "Question: {{ question }}\nAnswer:", "completion": " {{ answer }}"}
    alone = {r["row_id"]: r for r in compiled(tmp_path / "alone", template)["train"]}
    out = compiled(tmp_path / "packed", template, train={"packing": True})
    lock = out["lock"]
    table = pq.read_table(tmp_path / "packed" / lock["artifacts"]["tokens"]["train"]["path"])
    packed = table.to_pylist()
    assert sorted(r["row_id"] for r in packed) == sorted(alone)  # every row exactly once
    assert len({r["pack"] for r in packed}) < len(packed)  # and packing did pack
    for r in packed:
        assert (r["input_ids"], r["labels"]) == (alone[r["row_id"]]["input_ids"], alone[r["row_id"]]["labels"])
    items = to_items(table).to_pylist()
    members = {}
    for r in packed:
        members.setdefault(r["pack"], []).append(r)
    collate = collator(pad_token_id=0, packed=True)
    for item, pack in zip(items, (members[k] for k in sorted(members))):
        assert item["input_ids"] == [t for r in pack for t in r["input_ids"]]  # rows in one piece, in order
        assert len(item["input_ids"]) <= lock["settings"]["model"]["max_seq_length"]
        batch = collate([{"input_ids": item["input_ids"], "labels": item["labels"], "seq_lengths": item["seq_lengths"]}])
        assert batch["position_ids"][0].tolist() == [i for r in pack for i in range(len(r["input_ids"]))]


def test_gsm8k_answer_number_is_the_text_after_the_four_hashes(tmp_path):
    out = compiled(tmp_path, {"format": "prompt_completion", "prompt": "{{ question }}", "completion": " {{ answer }}"})
    rows = out["train"] + out["eval"]
    assert len(rows) == ROWS
    source = {}
    with GSM8K.open(encoding="utf-8") as f:
        for i, line in zip(range(ROWS), f):
            source[json.loads(line)["question"]] = json.loads(line)["answer"]
    for r in rows:
        after = source[r["question"]].split("####")[-1].strip().replace(",", "")
        assert r["answer_number"] == after, r["row_id"]
