"""Tokenization: the labels say exactly what the model learns, on real data.

Two tokenizers: a tiny byte-level BPE trained here (so the policy tests run
anywhere), and the real Qwen2.5 tokenizer from ../shared (tests on real data skip
with a reason when that folder is absent).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from ftc.compiler import encode as enc
from ftc.compiler.encode import IGNORE, MERGE, encode_prompt, tokenize
from ftc.compiler.tokenizer import TokenizerInfo, fingerprint, load_tokenizer
from ftc.compiler.views import data_report_md, length_histogram_png, show_tokens
from ftc.errors import FtcError

from conftest import SHARED, TOKENIZER as QWEN  # noqa: E402

DATA = SHARED / "data"
EOS = "<|im_end|>"

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}<|im_start|>assistant\n"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)
CHATML_NO_MARKERS = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
MEDICAL = "你是一个专业的医疗助手。请根据患者的问题提供专业、准确的回答。\n\n### 问题:\n{ask}\n\n### 回答:\n"

needs_shared = pytest.mark.skipif(
    not QWEN.is_dir() or not DATA.is_dir(),
    reason=f"real tokenizer/data not found at {SHARED} (the shared folder next to the project)",
)


# --------------------------------------------------------------------------- fixtures


def _save_tiny(folder: Path, *, chat_template: str | None, bos: bool = False) -> Path:
    """A byte-level BPE with ChatML specials, trained in milliseconds, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", EOS, "<s>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 10, trainer)
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, pad_token="<|endoftext|>", bos_token="<s>")
    if chat_template is not None:
        hf.chat_template = chat_template
    hf.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    tok, _ = load_tokenizer(str(_save_tiny(tmp_path_factory.mktemp("tiny"), chat_template=CHATML)))
    return tok


@pytest.fixture(scope="session")
def qwen():
    if not QWEN.is_dir():
        pytest.skip(f"real tokenizer not found at {QWEN}")
    return load_tokenizer(str(QWEN))


def _table(**cols) -> pa.Table:
    n = len(next(iter(cols.values())))
    return pa.table({"row_id": [f"r{i}" for i in range(n)], **cols})


def _rows(result: enc.TokenizeResult) -> list[dict]:
    return result.table.to_pylist()


def _trained(row: dict) -> list[int]:
    return [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE]


def _decode(tok, ids) -> str:
    return tok.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


def _assert_completion_only(tok, prompts: list[str], completions: list[str]) -> None:
    """Every row: input = prompt + completion + eos; trained = completion + eos, a suffix."""
    res = tokenize(_table(prompt=prompts, completion=completions), "prompt_completion", tok, max_seq_length=100_000)
    rows = _rows(res)
    assert len(rows) == len(prompts) and res.dropped == {}
    for row, prompt, completion in zip(rows, prompts, completions):
        assert _decode(tok, row["input_ids"]) == prompt + completion + EOS, row["row_id"]
        assert _decode(tok, _trained(row)) == completion + EOS, row["row_id"]
        first = next(i for i, lab in enumerate(row["labels"]) if lab != IGNORE)
        assert row["labels"][first:] == row["input_ids"][first:], "trained tokens must be one suffix"
        assert set(row["labels"][:first]) == {IGNORE}
        assert row["input_ids"].count(tok.eos_token_id) == 1
    assert res.stats["supervised_tokens"] == sum(len(_trained(r)) for r in rows)


# --------------------------------------------------------------------------- real data


@needs_shared
def test_alpaca_labels_are_exactly_the_output_plus_eos(qwen):
    tok, _ = qwen
    records = json.loads((DATA / "alpaca" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    prompts = [(ALPACA_INPUT if r["input"] else ALPACA).format(**r) for r in records]
    assert any(r["input"] for r in records) and any(not r["input"] for r in records)
    _assert_completion_only(tok, prompts, [r["output"] for r in records])


def _medical_rows() -> list[dict]:
    raw = next((DATA / "medical").rglob("*.csv")).read_bytes().decode("gb18030")
    return list(csv.DictReader(io.StringIO(raw)))


@needs_shared
def test_medical_gb18030_labels_are_exactly_the_answer_plus_eos(qwen):
    tok, _ = qwen
    rows = _medical_rows()
    assert len(rows) > 3000
    _assert_completion_only(tok, [MEDICAL.format(ask=r["ask"]) for r in rows], [r["answer"] for r in rows])


def _prompt_part(row: dict) -> list[int]:
    """The leading ids whose labels are masked: what the row holds of its prompt."""
    n = next((i for i, lab in enumerate(row["labels"]) if lab != IGNORE), len(row["labels"]))
    return row["input_ids"][:n]


@needs_shared
def test_prompt_part_is_encode_prompt_on_real_data(qwen):
    """Every row's masked prompt part is exactly encode_prompt of its prompt (what inference
    feeds), merged rows included; the warning counts exactly the rows whose joint encoding
    does not start with the prompt's own ids (the oracle: the tokenizer's own encode)."""
    tok, _ = qwen
    backend = tok.backend_tokenizer
    rows = _medical_rows()[:300]
    records = json.loads((DATA / "alpaca" / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:300]
    prompts = [MEDICAL.format(ask=r["ask"]) for r in rows] + [ALPACA.format(**r) for r in records] + ["我", "ab ", "回答:\n"]
    completions = [r["answer"] for r in rows] + [r["output"] for r in records] + ["们是朋友", "c", "\n好"]
    res = tokenize(_table(prompt=prompts, completion=completions), "prompt_completion", tok, max_seq_length=4096)
    out = _rows(res)
    assert len(out) == len(prompts)
    for row, prompt, completion in zip(out, prompts, completions):
        assert _prompt_part(row) == encode_prompt(tok, prompt), row["row_id"]
        assert _decode(tok, _trained(row)) == completion + EOS, row["row_id"]
    own = [backend.encode(p, add_special_tokens=False).ids for p in prompts]
    joint = [backend.encode(p + c, add_special_tokens=False).ids for p, c in zip(prompts, completions)]
    merging = [f"r{i}" for i, (o, j) in enumerate(zip(own, joint)) if j[: len(o)] != o]
    assert merging[-3:] == [f"r{len(prompts) - 3}", f"r{len(prompts) - 2}", f"r{len(prompts) - 1}"]
    (warning,) = res.warnings
    assert warning["kind"] == MERGE and warning["rows"] == len(merging) and warning["of"] == len(prompts)
    assert warning["example"]["row_id"] == merging[0]
    natural = [r for r in out if r["row_id"] not in merging]  # the tokens the text has in one piece
    assert all(r["input_ids"][:-1] == joint[int(r["row_id"][1:])] for r in natural)


@needs_shared
def test_bpe_merge_across_the_boundary_encodes_the_parts_apart_and_is_counted(qwen):
    tok, _ = qwen
    backend = tok.backend_tokenizer
    prompt, completion = "今天天气很好，我", "们去公园散步吧"
    whole = backend.encode(prompt + completion, add_special_tokens=False).ids
    own = backend.encode(prompt, add_special_tokens=False).ids
    alone = backend.encode(completion, add_special_tokens=False).ids
    assert whole[: len(own)] != own, "the test needs a merge across the boundary (我们 is one token)"
    res = tokenize(_table(prompt=[prompt], completion=[completion]), "prompt_completion", tok, max_seq_length=64)
    row = _rows(res)[0]
    assert row["input_ids"] == own + alone + [tok.eos_token_id]  # what inference feeds, then the completion
    assert row["labels"] == [IGNORE] * len(own) + alone + [tok.eos_token_id]
    assert res.warnings == [{
        "kind": MERGE, "rows": 1, "of": 1,
        "example": {"row_id": "r0", "prompt_end": prompt, "completion_start": completion,
                    "joint": ["，", "我们"], "apart": ["，", "我", "们"]},
    }]


def test_prompt_ending_at_a_token_boundary_keeps_the_joint_tokens_and_warns_nothing(tiny):
    backend = tiny.backend_tokenizer
    res = tokenize(_table(prompt=["hello", "the quick"], completion=[" world", " brown fox"]), "prompt_completion",
                   tiny, max_seq_length=64)
    assert res.warnings == []
    for row, text in zip(_rows(res), ["hello world", "the quick brown fox"]):
        assert row["input_ids"] == backend.encode(text, add_special_tokens=False).ids + [tiny.eos_token_id]


def test_a_tokenizer_that_garbles_parts_encoded_apart_is_refused(tmp_path):
    """Metaspace puts a "▁" before every text it encodes: a completion encoded on its own
    would gain a space, so a prompt that ends inside a token is an error, not a silent change."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(["hello world, hello there"] * 10, trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", EOS], show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, unk_token="<unk>").save_pretrained(str(tmp_path))
    tok, _ = load_tokenizer(str(tmp_path))
    ok = tokenize(_table(prompt=["hello"], completion=[" world"]), "prompt_completion", tok, max_seq_length=64)
    assert ok.warnings == []
    with pytest.raises(FtcError) as err:
        tokenize(_table(prompt=["hello", "hello "], completion=[" world", "world"]), "prompt_completion", tok,
                 max_seq_length=64)
    assert err.value.code == "FTC605" and "token boundary" in err.value.hint
    assert err.value.message.startswith("row r1: the tokenizer merges the prompt's end ('hello ') with the completion's start ('world')")


@needs_shared
def test_gsm8k_chat_trains_only_the_assistant_turn(qwen):
    tok, info = qwen
    assert info.has_generation_markers
    lines = (DATA / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    records = [json.loads(line) for line in lines]
    system = "Solve the problem step by step. End with #### and the answer."
    chats = [
        [
            {"role": "system", "content": system},
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": r["answer"]},
        ]
        for r in records
    ]
    res = tokenize(_table(messages=chats), "messages", tok, max_seq_length=4096)
    for row, r in zip(_rows(res), records):
        assert _decode(tok, _trained(row)) == r["answer"] + EOS
        rendered = f"<|im_start|>system\n{system}{EOS}\n<|im_start|>user\n{r['question']}{EOS}\n<|im_start|>assistant\n"
        assert _decode(tok, row["input_ids"]) == rendered + r["answer"] + EOS + "\n"
        assert row["labels"][-1] == IGNORE  # the newline after <|im_end|> is template, not answer
    everything = tokenize(_table(messages=chats[:5]), "messages", tok, max_seq_length=4096, assistant_only_loss=False)
    for row in _rows(everything):
        assert row["labels"] == row["input_ids"]


@needs_shared
def test_fingerprint_follows_the_tokenizer_bytes(qwen, tmp_path):
    _, info = qwen
    assert set(info.fingerprint) == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template"}
    assert (info.eos_token, info.eos_token_id, info.pad_token_id, info.vocab_size) == (EOS, 151645, 151643, 151665)
    copy = tmp_path / "qwen"
    shutil.copytree(QWEN, copy)
    _, same = load_tokenizer(str(copy))
    assert same.fingerprint == info.fingerprint
    data = json.loads((copy / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["vocab"]["zzzzfingerprint"] = 151642 + 1000  # an extra, unused entry
    (copy / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    _, changed = load_tokenizer(str(copy))
    assert changed.fingerprint["tokenizer.json"] != info.fingerprint["tokenizer.json"]
    assert changed.fingerprint["tokenizer_config.json"] == info.fingerprint["tokenizer_config.json"]
    assert fingerprint(str(copy)) == changed.fingerprint  # the cheap check ftc run makes: the same value
    (copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    _, templated = load_tokenizer(str(copy))  # transformers prefers the .jinja file: so does the fingerprint
    assert templated.fingerprint["chat_template"] != changed.fingerprint["chat_template"]
    assert fingerprint(str(copy)) == templated.fingerprint and "chat_template.jinja" in templated.fingerprint


# --------------------------------------------------------------------------- formats and policies


def test_output_schema_order_and_stats(tiny):
    texts = ["hello world", "the quick brown fox", "", "hello"]
    res = tokenize(_table(text=texts), "text", tiny, max_seq_length=512)
    t = res.table
    assert t.schema == pa.schema(
        [("row_id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
         ("length", pa.int32())]
    )
    assert t.column("row_id").to_pylist() == ["r0", "r1", "r2", "r3"]
    rows = _rows(res)
    assert [r["length"] for r in rows] == [len(r["input_ids"]) for r in rows]
    assert all(r["labels"] == r["input_ids"] for r in rows)  # text: every token trained
    assert rows[2]["input_ids"] == [tiny.eos_token_id]  # an empty text still ends with eos
    lens = sorted(r["length"] for r in rows)
    assert res.stats == {
        "rows": 4, "tokens": sum(lens), "supervised_tokens": sum(lens), "length_p50": lens[1],
        "length_p90": lens[3], "length_p99": lens[3], "length_max": lens[3], "truncated": 0, "dropped": 0,
    }
    assert json.loads(json.dumps(res.stats)) == res.stats
    again = tokenize(_table(text=texts), "text", tiny, max_seq_length=512)
    assert again.table.equals(t) and again.stats == res.stats


def test_eos_is_appended_exactly_once(tiny):
    eos = tiny.eos_token_id
    res = tokenize(_table(text=["hello world", f"hello world{EOS}"]), "text", tiny, max_seq_length=64)
    a, b = _rows(res)
    assert a["input_ids"] == b["input_ids"] and a["input_ids"].count(eos) == 1 and a["input_ids"][-1] == eos
    res = tokenize(_table(prompt=["hello ", "hello "], completion=["world", f"world{EOS}"]), "prompt_completion",
                   tiny, max_seq_length=64)
    a, b = _rows(res)
    assert a == {**b, "row_id": "r0"} and a["input_ids"].count(eos) == 1 and a["labels"][-1] == eos


def test_completion_only_loss_off_trains_the_prompt_too(tiny):
    res = tokenize(_table(prompt=["hello "], completion=["world"]), "prompt_completion", tiny,
                   max_seq_length=64, completion_only_loss=False)
    row = _rows(res)[0]
    assert row["labels"] == row["input_ids"]


def test_bos_from_the_post_processor_is_kept_and_masked(tmp_path):
    tok, _ = load_tokenizer(str(_save_tiny(tmp_path / "bos", chat_template=None, bos=True)))
    bos = tok.convert_tokens_to_ids("<s>")
    res = tokenize(_table(prompt=["hello "], completion=["world"]), "prompt_completion", tok, max_seq_length=64)
    row = _rows(res)[0]
    assert row["input_ids"][0] == bos and row["input_ids"].count(bos) == 1 and row["labels"][0] == IGNORE
    assert _prompt_part(row) == encode_prompt(tok, "hello ") == tok("hello ")["input_ids"]  # the BOS, as inference
    assert _decode(tok, row["input_ids"][1:]) == f"hello world{EOS}"
    assert _decode(tok, _trained(row)) == f"world{EOS}"  # "hello " + "world" merge: the parts are encoded apart
    assert [w["rows"] for w in res.warnings] == [1]


def test_overlong_truncate_keeps_the_first_tokens(tiny):
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "hello"]
    full = _rows(tokenize(_table(text=texts), "text", tiny, max_seq_length=10_000))
    res = tokenize(_table(text=texts), "text", tiny, max_seq_length=8)
    rows = _rows(res)
    assert rows[0]["input_ids"] == full[0]["input_ids"][:8] and rows[0]["length"] == 8
    assert rows[1] == full[1]
    assert res.stats["truncated"] == 1 and res.stats["length_max"] == 8 and res.dropped == {}


def test_overlong_drop_counts_a_reason(tiny):
    res = tokenize(_table(text=["the quick brown fox jumps over the lazy dog " * 3, "hello"]), "text", tiny,
                   max_seq_length=8, overlong="drop")
    assert res.table.column("row_id").to_pylist() == ["r1"]
    assert res.dropped == {"longer than max_seq_length (8)": 1}
    assert res.stats["dropped"] == 1 and res.stats["rows"] == 1 and res.stats["truncated"] == 0


def test_overlong_error_names_the_row_and_its_length(tiny):
    long = "the quick brown fox jumps over the lazy dog " * 3
    n = len(_rows(tokenize(_table(text=[long]), "text", tiny, max_seq_length=10_000))[0]["input_ids"])
    with pytest.raises(FtcError) as err:
        tokenize(_table(text=["hello", long]), "text", tiny, max_seq_length=8, overlong="error")
    assert err.value.code == "FTC602"
    assert f"row r1 is {n} tokens, longer than max_seq_length 8 (1 rows are)" in str(err.value)
    assert "train.overlong" in err.value.hint


def test_truncation_that_leaves_no_completion_drops_the_row(tiny):
    res = tokenize(_table(prompt=["the quick brown fox jumps over the lazy dog", "hello "], completion=["ok", "world"]),
                   "prompt_completion", tiny, max_seq_length=6)
    assert res.table.column("row_id").to_pylist() == ["r1"]
    assert res.dropped == {"no trained tokens left after truncation to 6": 1}


def test_chat_without_generation_markers_and_assistant_only_is_ftc606(tmp_path):
    tok, info = load_tokenizer(str(_save_tiny(tmp_path / "plain", chat_template=CHATML_NO_MARKERS)))
    assert not info.has_generation_markers
    chats = [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]]
    with pytest.raises(FtcError) as err:
        tokenize(_table(messages=chats), "messages", tok, max_seq_length=64)
    assert err.value.code == "FTC606"
    assert "train.assistant_only_loss needs a chat template with {% generation %} markers" in err.value.message
    assert "--set train.assistant_only_loss=false" in err.value.hint
    row = _rows(tokenize(_table(messages=chats), "messages", tok, max_seq_length=64, assistant_only_loss=False))[0]
    assert row["labels"] == row["input_ids"] and _decode(tok, row["input_ids"]).startswith("<|im_start|>user\nhello")


def test_messages_without_an_assistant_turn_are_dropped_with_a_reason(tiny):
    chats = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]
    res = tokenize(_table(messages=chats), "messages", tiny, max_seq_length=64)
    assert res.table.column("row_id").to_pylist() == ["r1"]
    assert res.dropped == {"no trained tokens (e.g. no assistant turn)": 1}


def test_conversational_prompt_with_a_string_completion(tiny):
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]]
    row = _rows(tokenize(_table(prompt=prompts, completion=["world"]), "prompt_completion", tiny, max_seq_length=64))[0]
    assert _decode(tiny, _trained(row)) == f"world{EOS}"
    assert _decode(tiny, row["input_ids"]).endswith(f"<|im_start|>assistant\nworld{EOS}\n")


def test_prompt_format_trains_nothing_and_keeps_the_generation_prompt(tiny):
    chats = [[{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]]
    res = tokenize(_table(prompt=chats), "prompt", tiny, max_seq_length=4096)
    row = _rows(res)[0]
    assert set(row["labels"]) == {IGNORE} and res.stats["supervised_tokens"] == 0 and res.stats["rows"] == 1
    assert _decode(tiny, row["input_ids"]).endswith("<|im_start|>assistant\n")
    cut = _rows(tokenize(_table(prompt=chats), "prompt", tiny, max_seq_length=5))[0]
    assert cut["input_ids"] == row["input_ids"][-5:]  # prompts lose their start, never the generation prompt
    plain, empty = _rows(tokenize(_table(prompt=["hello world", ""]), "prompt", tiny, max_seq_length=64))
    assert _decode(tiny, plain["input_ids"]) == "hello world" and set(plain["labels"]) == {IGNORE}
    assert empty["input_ids"] == [] and empty["length"] == 0  # no eos on prompts: generation continues them


def test_null_text_is_ftc604_naming_the_row(tiny):
    with pytest.raises(FtcError) as err:
        tokenize(_table(text=["hello", None]), "text", tiny, max_seq_length=64)
    assert err.value.code == "FTC604" and "row r1: text is null (1 rows are)" in err.value.message
    assert "filter empty rows" in err.value.hint


def test_a_chat_template_that_fails_names_the_row(tmp_path):
    """A template that refuses a row (here: a tool turn) is the row's error, not a traceback."""
    loop = "{%- for message in messages -%}"
    refuse = "{%- if message['role'] == 'tool' -%}{{ raise_exception('no tool turns') }}{%- endif -%}"
    template = CHATML.replace(loop, loop + refuse, 1)
    tok, _ = load_tokenizer(str(_save_tiny(tmp_path / "strict", chat_template=template)))
    chats = [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
             [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "b"}]]
    with pytest.raises(FtcError) as err:
        tokenize(_table(messages=chats), "messages", tok, max_seq_length=64)
    assert err.value.code == "FTC607" and err.value.message == "row r1: the chat template failed: no tool turns"
    assert "roles and contents" in err.value.hint


def test_empty_table(tiny):
    empty = pa.table({"row_id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    res = tokenize(empty, "text", tiny, max_seq_length=64)
    assert res.table.num_rows == 0 and res.stats["rows"] == 0 and res.stats["length_p50"] == 0


def test_unloadable_tokenizer_is_ftc600_with_the_local_folder_hint(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FtcError) as err:
        load_tokenizer("ftc-test/no-such-tokenizer")
    assert err.value.code == "FTC600" and "'ftc-test/no-such-tokenizer'" in err.value.message
    assert "--set model.tokenizer=PATH" in err.value.hint
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(FtcError) as err:
        load_tokenizer(str(tmp_path))
    assert err.value.code == "FTC600"


# --------------------------------------------------------------------------- views


def test_show_tokens_tells_masked_from_trained(tiny):
    row = _rows(tokenize(_table(prompt=["hello"], completion=[" world"]), "prompt_completion", tiny, max_seq_length=64))[0]
    assert show_tokens(tiny, row["input_ids"], row["labels"], color=False) == f"«hello»[[ world{EOS}]]"
    colored = show_tokens(tiny, row["input_ids"], row["labels"], color=True)
    assert colored == f"\x1b[2mhello\x1b[0m\x1b[1;32m world{EOS}\x1b[0m"


def test_histogram_and_report(tmp_path, tiny):
    res = tokenize(_table(text=["hello world", "the quick brown fox"]), "text", tiny, max_seq_length=64)
    png = tmp_path / "lengths.png"
    length_histogram_png({"train": res.table.column("length").to_pylist(), "eval": [3]}, png, 64)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = TokenizerInfo("tiny", None, {"tokenizer.json": "ab" * 32}, EOS, 2, 0, 302, True)
    md = data_report_md({"train": res.stats}, info, {"capacity": 64, "efficiency": 0.5},
                        dropped_by_split={"train": {"longer than max_seq_length (64)": 3}}, histogram="lengths.png")
    tokens = res.stats["tokens"]
    assert f"| train | 2 | {tokens} | {tokens} |" in md
    assert "- train: 3 rows longer than max_seq_length (64)" in md
    assert "sha256 tokenizer.json: `abababababababab`" in md and "- efficiency: 0.500" in md
    assert "![token lengths](lengths.png)" in md
