"""GRPO learns, on the CPU: SFT -> GRPO through `model.adapter`, the format reward rising.

The user's day, as the R1 recipes run it, and what `make demo` shows: the shipped demo recipes,
compiled and run as they are. recipes/demo_reasoning.json is a short SFT that warm-starts the
demo's tiny random-init Qwen2 (its small BPE tokenizer: with the 151,936-token Qwen2.5
vocabulary the LM head is most of the work, and 40 SFT steps took 538 s on the shared 2 cores
against 127 s with the 1,024-token one) on 32 real GSM8K rows written in the format the GSM8K
rewards check (`<reasoning>...</reasoning>` then `最终答案: N`); recipes/demo_grpo.json starts
from that run's folder (`model.adapter`, fingerprinted in its lock) and is scored by the GSM8K
recipe's own rewards. From random weights no completion has the format, every group scores
alike and GRPO has nothing to learn from (the loss is 0); after the SFT some samples have it
(measured: about 1 in 10 at temperature 1.0, 8 in 10 at 0.7), and GRPO should raise the share.
The test asserts the rise of the format reward and of the weighted total between the first and
the last quarter of the steps, from run.json. The GRPO stage revisits the same 2 prompts every
step: with 32 prompts seen once each, the reward stayed flat in ftc and in plain TRL GRPOTrainer
alike (same base, rewards, settings: format 0.27 -> 0.17), the per-step reward being mostly which
prompt came up; so the flat reward was the setup's, not an ftc bug.

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

from conftest import ROOT, SHARED  # noqa: E402

DEMO = ROOT / "recipes" / "demo"
GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
needs_shared = pytest.mark.skipif(not GSM8K.exists(), reason=f"needs GSM8K at {GSM8K} (shared/ is absent)")
GRPO_STEPS = 32  # recipes/demo_grpo.json's max_steps


def demo_recipe(recipe_name: str, **model) -> dict:
    """A shipped demo recipe (what `make demo` runs) with its paths made absolute, `model` keys replaced."""
    recipe = json.loads((ROOT / "recipes" / f"{recipe_name}.json").read_text(encoding="utf-8"))
    recipe.pop("$schema")
    recipe["sources"]["gsm8k"]["path"] = str(DEMO / "gsm8k_64.jsonl")
    recipe["model"].update(name=str(DEMO / "model"), tokenizer=str(DEMO / "tokenizer"))
    recipe["model"].update(model)
    return recipe


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
def tiny() -> Path:
    return DEMO / "model"


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft")
    train(compile_plan(folder, demo_recipe("demo_reasoning")), folder / "run")
    return folder / "run"


def grpo_plan(folder: Path, tiny: Path, adapter: Path, **model):
    return compile_plan(folder, demo_recipe("demo_grpo", name=str(tiny), adapter=str(adapter), **model))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny, sft_run) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("grpo")
    facts = train(grpo_plan(folder, tiny, sft_run), folder / "run")
    return facts, folder / "run"


def test_grpo_after_sft_raises_the_format_reward_and_the_total(grpo_run):
    facts, run = grpo_run
    g = json.loads((run / "run.json").read_text())["grpo"]
    fmt = next(r for r in g["rewards"] if r["name"] == "format")
    print(json.dumps(g, indent=1))
    # the first and last quarters of the steps (8 each), the same 2 prompts every step; measured rises: format
    # +0.21..+0.25, total +0.52..+0.62 (32 or 48 steps, 2 or 4 prompts, temperature 0.9 or 1.0)
    assert fmt["last_quarter_mean"] - fmt["first_quarter_mean"] >= 0.15, fmt
    assert g["last_quarter_reward"] - g["first_quarter_reward"] >= 0.3, g


ARTICLE_PROMPT = ("你是一名数学推理专家,请按照以下格式解题:\n<reasoning>\n# 解题步骤:\n1. 分析问题,明确已知条件和目标;\n"
                  "2. 逐步推导,写出每一步计算过程;\n3. 得出最终答案。\n</reasoning>\n\n最终答案:{答案}")


@needs_shared
def test_the_gsm8k_recipe_prompts_with_the_articles_system_prompt_byte_for_byte(tmp_path):
    """`{答案}` stays literal, as the article shows it: rendering it would need the answer."""
    recipe = json.loads((ROOT / "recipes" / "gsm8k_grpo.json").read_text(encoding="utf-8"))
    recipe.pop("$schema")
    recipe["sources"]["gsm8k"]["path"] = str(GSM8K)
    shutil.copy(ROOT / "templates" / "gsm8k_system.jinja", tmp_path / "gsm8k_system.jinja")  # files a recipe reads lie in its project
    recipe["template"]["prompt"][0]["content"]["file"] = "gsm8k_system.jinja"
    recipe["transforms"].append({"limit": 8})
    plan = compile_plan(tmp_path, recipe, "split.eval=0", tokenize=False)
    import pyarrow.parquet as pq

    prompt = pq.read_table(plan.artifact("data", "train")).column("prompt")[0].as_py()
    assert prompt[0] == {"role": "system", "content": ARTICLE_PROMPT}
    assert prompt[0]["content"].encode("utf-8") == ARTICLE_PROMPT.encode("utf-8")


@pytest.mark.parametrize("colon", [":", "："])
def test_the_rewards_accept_what_the_prompt_asks_for_with_either_colon(colon):
    from ftc.compiler.reward_check import check_rewards
    from ftc.compiler.rewards import reward_from_dict

    resolved = check_rewards(rewards(), fields={"answer_number"}, allow_python=False, recipe_dir=ROOT, file="gsm8k_grpo.json")
    correctness, fmt = (reward_from_dict(d) for d in resolved)
    text = f"<reasoning>\n# 解题步骤:\n1. 48/2=24\n2. 48+24=72\n3. 72\n</reasoning>\n\n最终答案{colon}72"
    assert fmt.score(text, {}) == 1.0
    assert correctness.score(text, {"answer_number": "72"}) == 1.0
    assert correctness.score(text.replace("72", "71"), {"answer_number": "72"}) == 0.0
    assert fmt.score(text.replace("最终答案", "答案"), {}) == 0.0


# ---------------------------------------------------------------- model.adapter: refusals, each naming the key

def adapter_copy(sft_run: Path, folder: Path) -> Path:
    """The SFT run folder copied, so a test may change it."""
    return Path(shutil.copytree(sft_run, folder / "sft_copy"))


def test_the_lock_fingerprints_the_adapter_and_ftc_run_refuses_a_changed_one(tmp_path, tiny, sft_run):
    from ftc.runtime.verify import verify

    adapter = adapter_copy(sft_run, tmp_path)
    plan = grpo_plan(tmp_path, tiny, adapter)
    record = plan.lock["adapter"]
    assert record["kind"] == "run" and record["lora"]["r"] == 16
    assert {f["path"] for f in record["files"]} == {"adapter_config.json", "adapter_model.safetensors"}
    assert str(tmp_path) not in json.dumps(plan.lock["adapter"])  # no absolute path in the lock
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(FtcError) as err:
        verify(plan.lock_path)
    assert err.value.code == "FTC520" and "adapter_model.safetensors" in str(err.value)


def test_a_run_whose_adapter_changed_since_is_refused_when_its_base_loads(tmp_path, tiny, sft_run):
    """`ftc infer`/`eval`/`export` of the later run load the base through the same merge: FTC783."""
    from ftc.runtime.model import load_base_model

    adapter = adapter_copy(sft_run, tmp_path)
    plan = grpo_plan(tmp_path, tiny, adapter)
    (adapter / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text() + " ")
    with pytest.raises(FtcError) as err:
        load_base_model(plan.run_model, seed=0, device="cpu")
    assert err.value.code == "FTC783" and "adapter_config.json" in str(err.value)


def test_an_adapter_folder_without_an_adapter_is_refused_at_compile(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtcError) as err:
        grpo_plan(tmp_path, tiny, tmp_path / "empty")
    assert err.value.code == "FTC170" and err.value.path == "model.adapter"
    assert "adapter_config.json" in str(err.value)


def test_an_adapter_of_another_base_model_is_refused_at_compile(tmp_path, sft_run):
    other = write_tiny_model_dir(tmp_path / "other", vocab_size=1024, hidden_size=96)
    with pytest.raises(FtcError) as err:
        grpo_plan(tmp_path, other, sft_run)
    assert err.value.code == "FTC171" and err.value.path == "model.adapter"
    assert str(other) in str(err.value)


def test_an_adapter_with_a_4bit_base_is_refused_at_compile(tmp_path, tiny, sft_run):
    folder = tmp_path / "p"
    with pytest.raises(FtcError) as err:
        grpo_plan(folder, tiny, sft_run, init="pretrained", config={}, load_in_4bit=True)
    assert err.value.code == "FTC172" and err.value.path == "model.load_in_4bit"


def test_a_run_folder_of_another_random_base_is_refused_by_its_weights(tmp_path, tiny, sft_run):
    """Same config folder, another seed: compile cannot tell, the weights' fingerprint can (FTC781)."""
    from ftc.runtime.model import load_base_model

    plan = grpo_plan(tmp_path, tiny, sft_run)
    with pytest.raises(FtcError) as err:
        load_base_model(plan.run_model, seed=1, device="cpu")
    assert err.value.code == "FTC781" and err.value.path == "model.adapter"


def test_a_peft_adapter_of_another_shape_is_refused_naming_the_key(tmp_path, tiny):
    """A PEFT folder (not a run folder) saved from a model of another width: the LoRA does not fit (FTC780)."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftc.runtime.model import load_base_model, lora_config

    other = write_tiny_model_dir(tmp_path / "other", vocab_size=1024, hidden_size=96, intermediate_size=192,
                                 eos_token_id=2, bos_token_id=None, pad_token_id=0)
    peft = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other)),
                          lora_config({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
                                       "bias": "none", "use_rslora": False}))
    peft.peft_config["default"].base_model_name_or_path = str(tiny)  # it claims our base: only its shape gives it away
    peft.save_pretrained(tmp_path / "peft_adapter")
    plan = grpo_plan(tmp_path, tiny, tmp_path / "peft_adapter")
    assert plan.lock["adapter"]["kind"] == "peft"
    with pytest.raises(FtcError) as err:
        load_base_model(plan.run_model, seed=0, device="cpu")
    assert err.value.code == "FTC780" and err.value.path == "model.adapter"
    assert "size mismatch" in str(err.value)


# ---------------------------------------------------------------- the second run's commands apply both adapters

def test_infer_eval_and_export_of_the_grpo_run_apply_both_adapters(grpo_run, sft_run, tmp_path):
    """The oracle is PEFT's own stacking: base + the SFT adapter + the GRPO adapter, both active, unmerged.
    ftc merges the first into the base (model.adapter) and puts the second on top; the logits agree."""
    from peft import PeftModel

    from ftc.runtime.export import export_merged
    from ftc.runtime.infer import load_base_for_run, load_trained, read_run
    from ftc.runtime.model import load_base_model

    _, run = grpo_run
    facts = read_run(run)
    assert facts["settings"]["model"]["adapter"] == str(sft_run)
    ids = torch.tensor([[5, 17, 99, 4, 250, 31, 7, 8]])

    plain = dict(facts["settings"]["model"], adapter=None)
    stacked = PeftModel.from_pretrained(load_base_model(plain, seed=0, device="cpu").model, str(sft_run), adapter_name="sft")
    stacked.load_adapter(str(run), adapter_name="grpo")
    stacked.base_model.set_adapter(["sft", "grpo"])
    stacked.eval()
    base_only = load_base_model(plain, seed=0, device="cpu").model.eval()
    with torch.no_grad():
        want = stacked(input_ids=ids).logits
        bare = base_only(input_ids=ids).logits
        trained = load_trained(run, device="cpu").model  # what `ftc infer` and `ftc eval` load
        got = trained(input_ids=ids).logits
        first_only = load_base_for_run(facts).eval()(input_ids=ids).logits
    assert not torch.allclose(want, bare, atol=1e-3)  # the adapters change the model, so the check can fail
    assert not torch.allclose(want, first_only, atol=1e-4)  # and the second adapter counts
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    from transformers import AutoModelForCausalLM

    out = export_merged(run, tmp_path / "merged")  # `ftc export`: one plain model with both in it
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
    torch.testing.assert_close(exported, want, atol=1e-4, rtol=1e-4)


def test_the_grpo_run_records_what_generated_and_the_merge_cost(grpo_run):
    _, run = grpo_run
    gen = json.loads((run / "run.json").read_text())["grpo"]["generation"]
    assert gen["asked"] == "auto" and gen["path"] == "fast"
    assert gen["merges"] == GRPO_STEPS and gen["merge_seconds_mean"] >= 0  # once per optimizer step
    assert gen["static_compiled_cache"] is False  # on the CPU: dynamic cache, no compile
    assert "Generation: fast" in (run / "report.md").read_text()
