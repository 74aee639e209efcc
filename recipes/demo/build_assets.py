"""Rebuild the offline demo's assets (data slice, tokenizer, model config).

    .venv/bin/python recipes/demo/build_assets.py ../shared/data/gsm8k/train.jsonl

The demo must run on a fresh machine with no network and no ../shared, so it ships
its own data (the first 64 GSM8K training problems, MIT licence), a small byte-level
BPE tokenizer trained on them (ChatML specials, a chat template with generation
markers), and a Qwen2 config small enough to train on two CPU cores in a minute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROWS = 64
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def main(src: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rows = [json.loads(l) for l in Path(src).read_text(encoding="utf-8").splitlines()[:ROWS]]
    (HERE / "gsm8k_64.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    tok.train_from_iterator(texts, trainer)
    out = HERE / "tokenizer"
    out.mkdir(exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "unk_token": None, "model_max_length": 512, "chat_template": CHAT_TEMPLATE,
    }, indent=2) + "\n", encoding="utf-8")

    model = HERE / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": tok.get_vocab_size(),
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "silu", "bos_token_id": None,
        "eos_token_id": tok.token_to_id("<|im_end|>"), "pad_token_id": tok.token_to_id("<|endoftext|>"),
        "torch_dtype": "float32",
    }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared/data/gsm8k/train.jsonl"))
