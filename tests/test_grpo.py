"""GRPO through the run skeleton on the CPU, like `ftc run` calls it for the GSM8K GRPO recipe.

The user's day: the shipped recipe, cut to 16 real GSM8K rows and shrunk with --set-style
overrides (a tiny random-init Qwen2, 2 generations of 16 tokens, 3 steps), compiled by the
real compiler; then one GRPO run (module fixture) whose folder is checked: per-reward means
of the declared rewards in metrics.jsonl, the KL with beta > 0, prompts cut to
max_prompt_length, an adapter PEFT loads and that training moved, run.json and the report.
The refusals (batch vs num_generations, a reward field the data lacks, overlong prompts)
fail before any model is built: at compile time where the compiler can tell, and again in
the runtime for a lock that says otherwise (one written by an ftc that did not check).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from fixtures import compile_plan, one_torch_thread, train, write_tiny_model_dir  # noqa: E402,F401

from ftc.errors import FtcError  # noqa: E402

from conftest import ROOT, SHARED, TOKENIZER  # noqa: E402

GSM8K = SHARED / "data" / "gsm8k" / "train.jsonl"
needs_shared = pytest.mark.skipif(
    not (GSM8K.exists() and (TOKENIZER / "tokenizer.json").exists()),
    reason=f"needs GSM8K at {GSM8K} and the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)",
)

STEPS, BATCH, GENERATIONS, PROMPT_LIMIT, NEW_TOKENS = 3, 4, 2, 48, 16
OVERRIDES = [
    "model.init=random", "model.dtype=auto", "model.max_seq_length=256",
    "split.eval=4",
    f"train.max_steps={STEPS}", f"train.per_device_train_batch_size={BATCH}", "train.gradient_accumulation_steps=1",
    "train.learning_rate=0.001", "train.optim=adamw_torch", "train.warmup_ratio=0", "train.max_grad_norm=1.0",
    "train.gradient_checkpointing=false", f"train.save_steps={STEPS}",
    f"train.grpo.num_generations={GENERATIONS}", f"train.grpo.max_completion_length={NEW_TOKENS}",
    f"train.grpo.max_prompt_length={PROMPT_LIMIT}", "train.grpo.beta=0.04",
    # a third reward that random text scores unevenly, so advantages are not all zero and the adapter learns
    'train.grpo.rewards=' + json.dumps([
        *json.loads((ROOT / "recipes" / "gsm8k_grpo.json").read_text())["train"]["grpo"]["rewards"],
        {"kind": "length", "name": "brevity", "max": 20, "ramp": 200, "weight": 0.5},
    ], ensure_ascii=False),
]


def compile_gsm8k(folder: Path, *extra: str):
    """The shipped GSM8K GRPO recipe with 16 rows, compiled like `ftc compile --set ...`; the verified Plan."""
    recipe = json.loads((ROOT / "recipes" / "gsm8k_grpo.json").read_text())
    recipe.pop("$schema")
    recipe["sources"]["gsm8k"]["path"] = str(GSM8K)
    folder.mkdir(parents=True, exist_ok=True)  # template files come from the recipe's project (FTC156)
    shutil.copy(ROOT / "templates" / "gsm8k_system.jinja", folder / "gsm8k_system.jinja")
    recipe["template"]["prompt"][0]["content"]["file"] = "gsm8k_system.jinja"
    recipe["transforms"].append({"limit": 16})
    tiny = write_tiny_model_dir(folder / "tiny")
    overrides = [f"model.name={tiny}", f"model.tokenizer={TOKENIZER}", *OVERRIDES, *extra]
    return compile_plan(folder, recipe, *overrides)


def changed_lock(plan, name: str, **train):
    """The plan with `train` settings changed and the lock resealed beside it: what a lock from an
    ftc that did not check (or a hand edit, resealed) hands the runtime."""
    from ftc.compiler.lock import Plan, write_lock

    doc = json.loads(json.dumps(plan.lock))
    doc["settings"]["train"].update(train)
    path = plan.lock_path.with_name(name)
    write_lock(doc, path)
    return Plan.load(path)


def run(folder: Path, plan, out: str = "run", **kwargs) -> tuple[dict, Path]:
    return train(plan, folder / out, **kwargs), folder / out


def interrupt_at(step: int):
    """A real SIGINT from inside the training loop, the way a terminal's Ctrl-C arrives."""
    import os
    import signal

    from transformers import TrainerCallback

    class SigintAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGINT)

    return SigintAt()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if not (GSM8K.exists() and (TOKENIZER / "tokenizer.json").exists()):
        pytest.skip(f"needs GSM8K at {GSM8K} and the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)")
    folder = tmp_path_factory.mktemp("grpo")
    return folder, compile_gsm8k(folder)


@pytest.fixture(scope="module")
def trained(compiled):
    folder, plan = compiled
    facts, out = run(folder, plan)
    return facts, out, plan.lock


@needs_shared
def test_metrics_have_each_declared_reward_the_reward_std_and_the_kl(trained):
    from ftc.runtime.metrics import read_metrics

    facts, out, lock = trained
    assert facts["method"] == "grpo" and facts["train"]["global_step"] == STEPS
    rows = [m for m in read_metrics(out / "metrics.jsonl") if "reward" in m]
    assert [m["step"] for m in rows] == list(range(1, STEPS + 1))  # logging_steps 1
    for m in rows:
        for name in ("correctness", "format", "brevity"):
            assert 0.0 <= m[f"rewards/{name}/mean"] <= 1.0, (name, m)
            assert f"rewards/{name}/std" in m
        assert m["reward_std"] >= 0.0
        assert 0 < m["completions/mean_length"] <= NEW_TOKENS
        assert m["kl"] is not None and m["kl"] >= 0.0  # beta 0.04: TRL computes and logs the KL
        assert "loss" in m and "learning_rate" in m and m["tokens"] > 0
        # the total is the weighted sum of the declared rewards' means (weights 2.0, 0.5, 0.5): the weights reached TRL
        weighted = 2.0 * m["rewards/correctness/mean"] + 0.5 * m["rewards/format/mean"] + 0.5 * m["rewards/brevity/mean"]
        assert m["reward"] == pytest.approx(weighted, abs=1e-5) and m["reward"] > 0
    # random text is never a correct GSM8K answer in the declared format
    assert all(m["rewards/correctness/mean"] == 0.0 and m["rewards/format/mean"] == 0.0 for m in rows)
    assert any(m["rewards/brevity/std"] > 0 for m in rows)  # so the advantages were not all zero
    assert [r["name"] for r in facts["grpo"]["rewards"]] == ["correctness", "format", "brevity"]
    # the clipping and scaling TRL used are the plan's, written out (so no backend fills in its own)
    plan = lock["settings"]["train"]["grpo"]
    assert (plan["epsilon"], plan["mask_truncated_completions"], plan["scale_rewards"]) == (0.2, False, "group")
    assert {k: facts["grpo"][k] for k in ("epsilon", "epsilon_high", "mask_truncated_completions", "scale_rewards")} == {
        "epsilon": 0.2, "epsilon_high": 0.2, "mask_truncated_completions": False, "scale_rewards": "group"}


@needs_shared
def test_generation_starts_from_the_compiled_prompt_ids(compiled):
    """TRL generates from the ids the compiler made (encode_prompt: the chat template with its generation
    prompt), the ones the lock's token artifact holds and `ftc infer` feeds, not from a tokenization of its own."""
    import pyarrow.parquet as pq

    from ftc.compiler.encode import encode_prompt
    from ftc.runtime.grpo import METHOD, _trainer_class
    from ftc.runtime.model import load_tokenizer

    _, plan = compiled
    tok = load_tokenizer(plan.tokenizer_location)
    data = METHOD.prepare(plan, plan.settings["train"], tokenizer=tok, world_size=1)
    fed = _trainer_class(PROMPT_LIMIT, data.prompt_ids)._tokenize_prompts
    artifact = {r["row_id"]: r["input_ids"] for r in pq.read_table(plan.artifact("tokens", "train")).to_pylist()}
    rows = data.train_table.to_pylist()
    ids, _, _ = fed(None, [r["prompt"] for r in rows])
    assert len(ids) == len(rows) == 12
    for r, got in zip(rows, ids):
        assert got == artifact[r["row_id"]][-PROMPT_LIMIT:] == encode_prompt(tok, r["prompt"])[-PROMPT_LIMIT:], r["row_id"]


@needs_shared
def test_prompts_are_cut_to_max_prompt_length(trained):
    facts, _, _ = trained
    prompts = facts["data"]["train"]["prompts"]
    assert prompts["limit"] == PROMPT_LIMIT and prompts["over_limit"] == facts["data"]["train"]["rows"] == 12
    assert prompts["max_tokens"] > PROMPT_LIMIT
    # every prompt was longer than the limit, so each completion trained on carries exactly PROMPT_LIMIT prompt tokens
    prompt_tokens = facts["tokens"]["real"] - facts["tokens"]["trained"]
    assert prompt_tokens == STEPS * BATCH * PROMPT_LIMIT
    assert 0 < facts["tokens"]["trained"] <= STEPS * BATCH * NEW_TOKENS


@needs_shared
def test_adapter_loads_with_peft_and_training_moved_it(trained):
    from peft import PeftModel
    from safetensors.torch import load_file

    from ftc.runtime.model import load_base_model

    facts, out, lock = trained
    saved = load_file(str(out / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora_b and any(v.abs().max() > 0 for v in lora_b.values())  # B starts at zero: only training moves it
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(lock["settings"]["lora"]["target_modules"])

    base = load_base_model(facts["settings"]["model"], seed=facts["settings"]["train"]["seed"])
    assert base.fingerprint == facts["model"]["fingerprint"]  # the base rebuilt from config + seed is the trained one
    model = PeftModel.from_pretrained(base.model, str(out))
    key, value = next(iter(lora_b.items()))
    loaded = dict(model.named_parameters())
    name = next(n for n in loaded if n.replace(".default", "").endswith(key.split("base_model.model.", 1)[-1]))
    assert torch.equal(loaded[name].detach(), value)


@needs_shared
def test_run_folder_matches_an_sft_run(trained):
    facts, out, lock = trained
    for name in ("run.json", "metrics.jsonl", "report.md", "rewards.png", "adapter_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / f"checkpoint-{STEPS}").is_dir()
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk["plan_hash"] == lock["plan_hash"] and on_disk["checkpoint"] == f"checkpoints/checkpoint-{STEPS}"
    assert on_disk["grpo"]["generation_batch_size"] == BATCH and on_disk["grpo"]["prompts_per_generation"] == BATCH // GENERATIONS
    report = (out / "report.md").read_text()
    assert "## Rewards" in report and "| correctness | answer | 2 |" in report and "![rewards](rewards.png)" in report
    assert report.index("## Rewards") < report.index("## Settings")  # the section before the long settings dump
    assert (out / "rewards.png").read_bytes()[:4] == b"\x89PNG"


@needs_shared
def test_batch_that_splits_a_prompt_group_is_refused_before_loading(compiled, tmp_path):
    folder, plan = compiled
    with pytest.raises(FtcError) as at_compile:
        compile_gsm8k(tmp_path, "train.per_device_train_batch_size=3")
    with pytest.raises(FtcError) as at_run:
        run(folder, changed_lock(plan, "bad-batch.lock", per_device_train_batch_size=3), out="bad-batch")
    for err in (at_compile, at_run):
        assert err.value.code == "FTC111" and err.value.path == "train.per_device_train_batch_size"
        assert "not a multiple of train.grpo.num_generations (2)" in str(err.value)
        assert "set per_device_train_batch_size to 4" in err.value.hint
    assert not (folder / "bad-batch" / "checkpoints").exists()


def test_batch_arithmetic_counts_accumulation_and_processes():
    from ftc.compiler.schedule import check_grpo_batch

    grpo = {"num_generations": 8}
    check_grpo_batch({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "grpo": grpo})
    check_grpo_batch({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "grpo": grpo})
    check_grpo_batch({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "grpo": grpo}, world_size=4)
    with pytest.raises(FtcError, match=r"6 x gradient_accumulation_steps 1 = 6 completions"):
        check_grpo_batch({"per_device_train_batch_size": 6, "gradient_accumulation_steps": 1, "grpo": grpo})


@needs_shared
def test_reward_field_missing_from_the_data_is_refused(compiled, tmp_path):
    folder, plan = compiled
    grpo = dict(plan.settings["train"]["grpo"])
    grpo["rewards"] = [*grpo["rewards"][:1], {**grpo["rewards"][0], "name": "gold", "field": "gold_answer"}]
    with pytest.raises(FtcError) as at_compile:
        compile_gsm8k(tmp_path, "train.grpo.rewards=" + json.dumps(grpo["rewards"]))
    with pytest.raises(FtcError) as at_run:
        run(folder, changed_lock(plan, "bad-field.lock", grpo=grpo), out="bad-field")
    for err in (at_compile, at_run):
        assert err.value.path.startswith("train.grpo.rewards[1]") and "gold_answer" in str(err.value)
        assert "answer_number" in str(err.value)  # the fields it does have
    assert at_run.value.code == "FTC751" and "reward 'gold' reads field(s) gold_answer, which" in str(at_run.value)
    assert not (folder / "bad-field" / "checkpoints").exists()


@needs_shared
def test_a_lock_without_rewards_is_refused_before_loading(compiled):
    folder, plan = compiled
    grpo = {**plan.settings["train"]["grpo"], "rewards": []}
    with pytest.raises(FtcError) as err:
        run(folder, changed_lock(plan, "no-rewards.lock", grpo=grpo), out="no-rewards")
    assert err.value.code == "FTC750" and err.value.path == "train.grpo.rewards"
    assert "GRPO needs at least one reward, and the plan declares none" in str(err.value) and '"kind": "regex"' in err.value.hint


@needs_shared
def test_a_prompt_artifact_without_prompts_is_refused(compiled, tmp_path):
    import pyarrow.parquet as pq

    from ftc.runtime.grpo import _read_prompts

    folder, plan = compiled
    path = tmp_path / "prompts.parquet"
    pq.write_table(pq.read_table(plan.artifact("data", "train")).drop_columns(["prompt"]), path)
    from types import SimpleNamespace

    # the plan's view with its train data artifact swapped for the broken one
    broken = SimpleNamespace(lock_path=plan.lock_path,
                             artifact=lambda kind, split: path if kind == "data" else plan.artifact(kind, split))
    with pytest.raises(FtcError) as err:
        _read_prompts(broken, "train", list(plan.settings["train"]["grpo"]["rewards"]), PROMPT_LIMIT, "error", {})
    assert err.value.code == "FTC720" and "the prompt artifact lacks the column(s) prompt; it has row_id" in str(err.value)


def test_a_grpo_trainer_without_prompt_tokenizing_is_refused():
    """A TRL whose GRPOTrainer has no `_tokenize_prompts` cannot apply max_prompt_length: the
    trainer class is refused (shown here with TRL's own base Trainer, which has none)."""
    from transformers import Trainer

    from ftc.runtime.grpo import _trainer_class

    assert _trainer_class(PROMPT_LIMIT, {}).__mro__[1].__name__ == "GRPOTrainer"  # this TRL has it
    with pytest.raises(FtcError) as err:
        _trainer_class(PROMPT_LIMIT, {}, base=Trainer)
    assert err.value.code == "FTC756" and "has no _tokenize_prompts" in str(err.value) and "trl 1.1" in err.value.hint


@needs_shared
def test_overlong_prompts_can_be_an_error(tmp_path):
    plan = compile_gsm8k(tmp_path, "train.overlong=error")
    with pytest.raises(FtcError, match=r"12 of 12 prompts .* longer than train.grpo.max_prompt_length \(48 tokens\)") as err:
        run(tmp_path, plan, out="overlong")
    assert err.value.code == "FTC754" and "the longest, row " in str(err.value) and "train.overlong" in err.value.hint
    assert not (tmp_path / "overlong" / "checkpoints").exists()


@needs_shared
def test_overlong_drop_that_leaves_no_prompt_is_refused(tmp_path):
    plan = compile_gsm8k(tmp_path, "train.overlong=drop")
    with pytest.raises(FtcError) as err:
        run(tmp_path, plan, out="dropped")
    assert err.value.code == "FTC755" and "all 12 prompts" in str(err.value) and "train.overlong=drop leaves none" in str(err.value)
    assert not (tmp_path / "dropped" / "checkpoints").exists()


@needs_shared
@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_where_a_straight_run_ends(compiled):
    from safetensors.torch import load_file

    from ftc.runtime.metrics import read_metrics

    folder, plan = compiled
    straight, _ = run(folder, plan, out="straight", max_steps_override=2)
    cut, _ = run(folder, plan, out="cut", max_steps_override=2, extra_callbacks=[interrupt_at(1)])
    assert cut["train"]["interrupted"] and cut["train"]["global_step"] == 1
    resumed, _ = run(folder, plan, out="cut", max_steps_override=2, resume=True)
    assert resumed["train"]["resumed_from_step"] == 1 and resumed["train"]["global_step"] == 2

    def per_step(out: str) -> list[float]:
        keys = ("step", "loss", "reward", "rewards/brevity/mean", "kl")
        return [m[k] for m in read_metrics(folder / out / "metrics.jsonl") if "reward" in m for k in keys]

    # the same prompts, the same sampled completions, the same update: RNG, sampler and optimizer restored
    assert per_step("cut")[::5] == [1, 2]  # each step logged once: the interrupted run's lines were not repeated
    assert per_step("cut") == pytest.approx(per_step("straight"), rel=1e-5, abs=1e-7)
    a, b = (load_file(str(folder / out / "adapter_model.safetensors")) for out in ("straight", "cut"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@needs_shared
def test_the_backend_choice_asks_the_plan_whether_the_copy_generates(tmp_path, monkeypatch):
    """run.grpo_takes_the_copy reads the same fact GRPO's preparation reads (generation.for_plan):
    `auto` generation on a 16-bit base takes the copy, `generate` does not (SFT: test_runtime_backends)."""
    from ftc.runtime import run
    from ftc.runtime.run import grpo_takes_the_copy

    auto = compile_gsm8k(tmp_path / "auto")
    assert grpo_takes_the_copy(auto, 1)
    assert not grpo_takes_the_copy(compile_gsm8k(tmp_path / "generate", "train.grpo.generation=generate"), 1)
    asked = {}

    def spy(backend, **kw):  # what `ftc run` hands the backend choice; stops the run there
        asked.update(kw, backend=backend)
        raise FtcError("FTC701", missing="a CUDA GPU")

    monkeypatch.setattr(run, "choose_backend", spy)
    with pytest.raises(FtcError):
        run.run_plan(str(auto.lock_path), output=str(tmp_path / "run"))
    assert asked == {"backend": "auto", "world_size": 1, "fast_grpo": True, "fsdp": ""}
