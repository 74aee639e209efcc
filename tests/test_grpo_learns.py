"""GRPO learns, on the CPU: SFT -> GRPO through `model.adapter`, the format reward rising.

The user's day, as the R1 recipes run it: a short SFT warm-starts a tiny random-init Qwen2
(the real Qwen2.5 tokenizer) on real GSM8K rows written in the format the GSM8K rewards check
(`<reasoning>...</reasoning>` then `最终答案: N`); a GRPO plan starts from that run's folder
(`model.adapter`, fingerprinted in its lock) and is scored by the shipped recipe's own rewards.
From random weights no completion has the format, every group scores alike and GRPO has nothing
to learn from (the loss is 0); after the SFT some samples have it, and GRPO raises the share.
The test asserts the rise of the format reward and of the weighted total between the first
and the last steps, from run.json. Both stages are the real compiler and the run skeleton.

Also here: the second run's commands (infer, eval, export) apply both adapters; a changed,
mismatched or missing adapter is refused with the key named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from fixtures import compile_plan, train, write_tiny_model_dir  # noqa: E402

from ftc.errors import FtcError  # noqa: E402

from conftest import ROOT, SHARED, TOKENIZER  # noqa: E402

GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
needs_shared = pytest.mark.skipif(
    not (GSM8K.exists() and (TOKENIZER / "tokenizer.json").exists()),
    reason=f"needs GSM8K at {GSM8K} and the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)",
)
pytestmark = needs_shared

ROWS = 32
PROMPT = "Question: {{ question }}\nAnswer:"
# the solution's last calculation as the reasoning: short enough for a tiny model to close the tag
COMPLETION = " <reasoning>\n{{ step }}\n</reasoning>\n最终答案: {{ answer_number }}"
SFT_STEPS, GRPO_STEPS = 40, 16


def gsm8k_recipe(fmt: str, train_section: dict, model: dict) -> dict:
    template = ({"format": "prompt_completion", "prompt": PROMPT, "completion": COMPLETION} if fmt == "sft"
                else {"format": "prompt", "prompt": PROMPT})
    return {
        "name": f"gsm8k_{fmt}",
        "sources": {"gsm8k": {"path": str(GSM8K), "columns": {"question": "question", "answer": "answer"}}},
        "transforms": [
            {"limit": ROWS},
            {"strip": ["question", "answer"]},
            {"extract": {"from": "answer", "pattern": "####\\s*(-?[0-9][0-9,]*)", "into": "answer_number", "remove": ","}},
            {"extract": {"from": "answer", "pattern": "<<([^>]*)>>[^<]*####", "into": "step"}},
        ],
        "template": template,
        "model": model,
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0, "target_modules": "all-linear"},
        "train": train_section,
    }


def rewards() -> list[dict]:
    """The shipped GSM8K GRPO recipe's own rewards: what they check is what the SFT rows show."""
    return json.loads((ROOT / "recipes" / "gsm8k_grpo.json").read_text(encoding="utf-8"))["train"]["grpo"]["rewards"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny", hidden_size=128, intermediate_size=256)


def model_section(tiny: Path, **extra) -> dict:
    return {"name": str(tiny), "init": "random", "tokenizer": str(TOKENIZER), "max_seq_length": 256, "dtype": "float32",
            **extra}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny) -> Path:
    folder = tmp_path_factory.mktemp("sft")
    plan = compile_plan(folder, gsm8k_recipe("sft", {
        "method": "sft", "learning_rate": 5e-3, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "max_steps": SFT_STEPS, "warmup_steps": 2, "optim": "adamw_torch", "seed": 0, "gradient_checkpointing": False,
        "logging_steps": 5, "save_steps": SFT_STEPS}, model_section(tiny)))
    train(plan, folder / "run")
    return folder / "run"


def grpo_plan(folder: Path, tiny: Path, adapter: Path, **grpo):
    return compile_plan(folder, gsm8k_recipe("grpo", {
        "method": "grpo", "learning_rate": 2e-3, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "max_steps": GRPO_STEPS, "warmup_steps": 0, "optim": "adamw_torch", "seed": 0, "gradient_checkpointing": False,
        "max_grad_norm": 1.0, "save_steps": GRPO_STEPS,
        "grpo": {"num_generations": 8, "max_prompt_length": 128, "max_completion_length": 48, "temperature": 1.0,
                 "rewards": rewards(), **grpo}}, model_section(tiny, adapter=str(adapter))))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny, sft_run) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("grpo")
    plan = grpo_plan(folder, tiny, sft_run)
    facts = train(plan, folder / "run")
    return facts, folder / "run"


def test_grpo_after_sft_raises_the_format_reward_and_the_total(grpo_run):
    facts, run = grpo_run
    g = json.loads((run / "run.json").read_text())["grpo"]
    fmt = next(r for r in g["rewards"] if r["name"] == "format")
    print(json.dumps(g, indent=1))
    assert fmt["last_mean"] - fmt["first_mean"] >= 0.25, fmt
    assert g["last_reward"] - g["first_reward"] >= 0.1, g


ARTICLE_PROMPT = ("你是一名数学推理专家,请按照以下格式解题:\n<reasoning>\n# 解题步骤:\n1. 分析问题,明确已知条件和目标;\n"
                  "2. 逐步推导,写出每一步计算过程;\n3. 得出最终答案。\n</reasoning>\n\n最终答案:{答案}")


def test_the_gsm8k_recipe_prompts_with_the_articles_system_prompt_byte_for_byte(tmp_path):
    """`{答案}` stays literal, as the article shows it: rendering it would need the answer."""
    recipe = json.loads((ROOT / "recipes" / "gsm8k_grpo.json").read_text(encoding="utf-8"))
    recipe.pop("$schema")
    recipe["sources"]["gsm8k"]["path"] = str(GSM8K)
    recipe["template"]["prompt"][0]["content"]["file"] = str(ROOT / "templates" / "gsm8k_system.jinja")
    recipe["transforms"].append({"limit": 8})
    plan = compile_plan(tmp_path, recipe, "split.eval=0", tokenize=False)
    import pyarrow.parquet as pq

    prompt = pq.read_table(plan.artifact("data", "train")).column("prompt")[0].as_py()
    assert prompt[0] == {"role": "system", "content": ARTICLE_PROMPT}
    assert prompt[0]["content"].encode("utf-8") == ARTICLE_PROMPT.encode("utf-8")


@pytest.mark.parametrize("colon", [":", "："])
def test_the_rewards_accept_what_the_prompt_asks_for_with_either_colon(colon):
    from ftc.compiler.rewards import check_rewards, reward_from_dict

    resolved = check_rewards(rewards(), fields={"answer_number"}, allow_python=False, recipe_dir=ROOT, file="gsm8k_grpo.json")
    correctness, fmt = (reward_from_dict(d) for d in resolved)
    text = f"<reasoning>\n# 解题步骤:\n1. 48/2=24\n2. 48+24=72\n3. 72\n</reasoning>\n\n最终答案{colon}72"
    assert fmt.score(text, {}) == 1.0
    assert correctness.score(text, {"answer_number": "72"}) == 1.0
    assert correctness.score(text.replace("72", "71"), {"answer_number": "72"}) == 0.0
    assert fmt.score(text.replace("最终答案", "答案"), {}) == 0.0
