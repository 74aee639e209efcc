"""Training and inference see the same prompt ids: a row's masked prompt part is exactly
`encode_prompt` of its rendered prompt (what `ftc infer` feeds), BOS included, and a
prompt that ends inside a token is counted and explained, never silent.

Real compiles of tiny recipes; ids compared, never decoded text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftc.compiler.encode import CHAT_PROMPT, IGNORE, MERGE, chat_prompt, encode_prompt, tokenize
from ftc.compiler.request import prompt_of_request
from ftc.compiler.tokenizer import load_tokenizer

from conftest import DEMO_TOKENIZER, ROOT, TOKENIZER as QWEN, write_recipe

DEMO_ROWS = ROOT / "recipes" / "demo" / "gsm8k_64.jsonl"
# The shipped demo ends its prompt at a token boundary ("Answer:" + " {{ answer }}"); the usual
# "Answer: " + "{{ answer }}" is the case a tokenizer merges across the seam.
MERGING = ["--set", "template.prompt=Question: {{ question }}\nAnswer: ", "--set", "template.completion={{ answer }}"]


def prompt_part(input_ids: list[int], labels: list[int]) -> list[int]:
    """The leading ids whose labels are masked: the row's prompt part."""
    n = next((i for i, lab in enumerate(labels) if lab != IGNORE), len(labels))
    return input_ids[:n]


def compiled_rows(lock_path: Path) -> tuple[dict, list[tuple[dict, dict]]]:
    """(lock, [(data row, token row)] of every split), joined on row_id."""
    lock = json.loads(lock_path.read_text(encoding="utf-8"))
    pairs = []
    for split, art in lock["artifacts"]["tokens"].items():
        data = {r["row_id"]: r for r in pq.read_table(lock_path.parent / lock["artifacts"]["data"][split]["path"]).to_pylist()}
        pairs += [(data[t["row_id"]], t) for t in pq.read_table(lock_path.parent / art["path"]).to_pylist()]
    return lock, pairs


def compile_demo(cli, proj: Path, *args: str, name: str = "plan.lock") -> tuple[Path, str]:
    lock = proj / name
    code, out, err = cli("compile", proj / "demo.json", "-o", lock, "--set", "transforms.2.extract.required=false", *args)
    assert code == 0, err
    return lock, out


def test_demo_prompt_part_is_encode_prompt_and_the_merge_is_counted(cli, demo):
    lock_path, summary = compile_demo(cli, demo, *MERGING)
    lock, pairs = compiled_rows(lock_path)
    tok, _ = load_tokenizer(str(demo / "demo" / "tokenizer"))
    assert len(pairs) == 64
    for data, t in pairs:
        ids = encode_prompt(tok, data["prompt"])
        assert prompt_part(t["input_ids"], t["labels"]) == ids, t["row_id"]
        assert prompt_of_request(lock, {"question": data["question"]}, tok) == (data["prompt"], ids)
    # "Answer: " + "Natalia" encode together as ":", " N": every row is counted, with the fix
    warnings = lock["tokens"]["warnings"]
    assert [(w["split"], w["kind"], w["rows"], w["of"]) for w in warnings] == [("train", MERGE, 60, 60), ("eval", MERGE, 4, 4)]
    ex = warnings[0]["example"]
    assert ex["prompt_end"].endswith("Answer: ") and ex["joint"] == [":", " N"] and ex["apart"] == [":", " ", "N"]
    assert "warning: tokens[train]: 60 of 60 rows: the prompt ends inside a token" in summary
    assert "fix: end the prompt at a token boundary: without its trailing space" in summary
    assert "' {{ answer }}'" in summary
    report = lock_path.with_suffix(".report.md").read_text(encoding="utf-8")
    assert "## Warnings" in report and "60 of 60 rows" in report


def test_a_prompt_ending_at_a_token_boundary_has_no_warning(cli, demo):
    lock_path, summary = compile_demo(cli, demo)  # the shipped demo
    lock, pairs = compiled_rows(lock_path)
    assert "warnings" not in lock["tokens"] and "warning" not in summary
    tok, _ = load_tokenizer(str(demo / "demo" / "tokenizer"))
    backend = tok.backend_tokenizer
    for data, t in pairs:  # the row is the text's own encoding, and its prompt part is encode_prompt
        assert t["input_ids"][:-1] == backend.encode(data["prompt"] + data["completion"], add_special_tokens=False).ids
        assert prompt_part(t["input_ids"], t["labels"]) == encode_prompt(tok, data["prompt"])


def save_bos_tokenizer(folder: Path) -> Path:
    """The demo tokenizer with a Llama-style post-processor that puts a BOS before every text."""
    from tokenizers import Tokenizer, processors

    folder.mkdir(parents=True)
    tk = Tokenizer.from_file(str(DEMO_TOKENIZER / "tokenizer.json"))
    tk.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
                                                      special_tokens=[("<|endoftext|>", 0)])
    tk.save(str(folder / "tokenizer.json"))
    config = json.loads((DEMO_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": "<|endoftext|>"}), encoding="utf-8")
    return folder


def bos_recipe(folder: Path, rows: int = 8) -> Path:
    shutil.copytree(ROOT / "recipes" / "demo" / "model", folder / "model")
    lines = DEMO_ROWS.read_text(encoding="utf-8").splitlines()[:rows]
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return write_recipe(folder, {
        "sources": {"q": {"path": "rows.jsonl", "columns": {"question": "question", "answer": "answer"}}},
        "template": {"format": "prompt_completion", "prompt": "Question: {{ question }}\nAnswer: ",
                     "completion": "{{ answer }}"},
        "model": {"name": "model", "init": "random", "tokenizer": str(save_bos_tokenizer(folder / "bos")),
                  "max_seq_length": 512, "dtype": "float32"},
        "train": {"method": "sft", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "packing": False},
    })


def test_a_bos_tokenizer_puts_the_bos_in_the_prompt_part_as_inference_does(cli, tmp_path):
    recipe = bos_recipe(tmp_path)
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock", "-q")
    assert code == 0, err
    _, pairs = compiled_rows(tmp_path / "plan.lock")
    tok, _ = load_tokenizer(str(tmp_path / "bos"))
    assert tok.bos_token_id == 0 and tok("x")["input_ids"][0] == 0
    assert len(pairs) == 8
    for data, t in pairs:
        assert t["input_ids"][0] == 0 and t["input_ids"].count(0) == 1
        assert prompt_part(t["input_ids"], t["labels"]) == encode_prompt(tok, data["prompt"]) == tok(data["prompt"])["input_ids"]


def chats(n: int) -> list[list[dict]]:
    records = [json.loads(line) for line in DEMO_ROWS.read_text(encoding="utf-8").splitlines()[:n]]
    return [[{"role": "system", "content": "Solve it."}, {"role": "user", "content": r["question"]},
             {"role": "assistant", "content": r["answer"]}] for r in records]


@pytest.mark.skipif(not QWEN.is_dir(), reason=f"real tokenizer not found at {QWEN}")
def test_chat_rows_start_with_encode_prompt_of_the_turns_before_the_reply():
    tok, _ = load_tokenizer(str(QWEN))
    single = chats(16)
    multi = [c + [{"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": "Twice that."}]
             for c in chats(4)]
    table = pa.table({"row_id": [f"r{i}" for i in range(20)], "messages": single + multi})
    res = tokenize(table, "messages", tok, max_seq_length=4096)
    assert res.warnings == []
    for row, chat in zip(res.table.to_pylist(), single + multi):
        ids = encode_prompt(tok, chat_prompt(chat))  # the generation prompt: "<|im_start|>assistant\n"
        assert row["input_ids"][: len(ids)] == ids
        if len(chat) == 3:  # one reply: the whole masked start is that prompt
            assert prompt_part(row["input_ids"], row["labels"]) == ids
    prompts = pa.table({"row_id": ["p0"], "prompt": [single[0][:2]], "completion": [single[0][2]["content"]]})
    row = tokenize(prompts, "prompt_completion", tok, max_seq_length=4096).table.to_pylist()[0]
    assert prompt_part(row["input_ids"], row["labels"]) == encode_prompt(tok, single[0][:2])


def test_a_chat_template_whose_generation_prompt_differs_is_counted(tmp_path):
    """A template that opens the reply with an empty think block only at inference feeds
    ids that training never saw before a reply: counted, with the ids at the seam."""
    shutil.copytree(DEMO_TOKENIZER, tmp_path / "think")
    config = json.loads((tmp_path / "think" / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = config["chat_template"].replace(
        "{% if add_generation_prompt %}<|im_start|>assistant\n", "{% if add_generation_prompt %}<|im_start|>assistant\n<think></think>\n")
    (tmp_path / "think" / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok, _ = load_tokenizer(str(tmp_path / "think"))
    table = pa.table({"row_id": ["r0", "r1", "r2"], "messages": chats(2) + [[{"role": "user", "content": "hi"}]]})
    res = tokenize(table, "messages", tok, max_seq_length=4096)
    (w,) = res.warnings
    assert (w["kind"], w["rows"], w["of"], w["example"]["row_id"]) == (CHAT_PROMPT, 2, 2, "r0")
    assert w["example"]["training"] != w["example"]["inference"]


@pytest.mark.skipif(not QWEN.is_dir(), reason=f"real tokenizer not found at {QWEN}")
def test_a_messages_recipe_feeds_inference_the_training_prefix(cli, tmp_path, shared):
    """Chat templates (the recipe's turns, or a field of turns): the request's prompt ids are
    the start of the training row, exactly, row by row; Qwen's template ends the prompt at its
    own boundary ("<|im_start|>assistant\\n"), so nothing is counted."""
    lines = DEMO_ROWS.read_text(encoding="utf-8").splitlines()[:12]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    turns = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "{{ question }}"},
             {"role": "assistant", "content": "{{ answer }}"}]
    recipe = write_recipe(tmp_path, {
        "sources": {"q": {"path": "rows.jsonl", "columns": {"question": "question", "answer": "answer"}}},
        "template": {"format": "messages", "messages": turns}, "model": {"name": "m", "tokenizer": str(QWEN)}})
    code, _, err = cli("compile", recipe, "-o", tmp_path / "plan.lock", "-q")
    assert code == 0, err
    lock, pairs = compiled_rows(tmp_path / "plan.lock")
    tok, _ = load_tokenizer(str(QWEN))
    assert "warnings" not in lock["tokens"] and len(pairs) == 12
    for data, t in pairs:
        prompt, ids = prompt_of_request(lock, {"question": data["question"]}, tok)
        assert prompt == data["messages"][:2] and ids == prompt_part(t["input_ids"], t["labels"])

    src = tmp_path / "chats.json"  # 40 real tool-call conversations
    src.write_text(json.dumps(json.loads((shared / "data/sharegpt/glaive_toolcall_en_demo.json").read_text())[:40]))
    recipe = write_recipe(tmp_path, {
        "sources": {"g": {"path": str(src), "columns": {"messages": {"from": "conversations", "roles": {
            "human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}}}}},
        "template": {"format": "messages", "messages": {"field": "messages"}}, "model": {"name": "m", "tokenizer": str(QWEN)}},
        name="chat.json")
    code, _, err = cli("compile", recipe, "-o", tmp_path / "chat.lock", "-q")
    assert code == 0, err
    lock, pairs = compiled_rows(tmp_path / "chat.lock")
    assert "warnings" not in lock["tokens"] and pairs
    for data, t in pairs:  # a request gives the conversation; its final assistant turn is the reference reply
        prompt, ids = prompt_of_request(lock, {"messages": data["messages"]}, tok)
        assert prompt == chat_prompt(data["messages"]) and t["input_ids"][: len(ids)] == ids, t["row_id"]
