"""Backend choice, the unsloth process hand-off, FLOPs/token and the memory plan, on the CPU.

unsloth itself never loads here (it needs CUDA and takes 30-40 s to import); what is tested
is everything around it: which backend `auto` picks and why, that the child's errors reach
the user as the same FtcError, and the numbers run.json reports (MFU, memory plan).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fixtures import compile_plan, resolved, write_jsonl

from ftc.errors import FtcError

from conftest import DEMO_TOKENIZER

torch = pytest.importorskip("torch")


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has (or lacks) CUDA and the unsloth package."""

    def set_(cuda: bool, unsloth: bool) -> None:
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "unsloth" and unsloth else (None if name == "unsloth" else real(name, *a)))

    return set_


@pytest.mark.parametrize(
    ("cuda", "unsloth", "world", "expected"),
    [
        (False, False, 1, ("hf", "auto: no CUDA GPU")),
        (False, True, 1, ("hf", "auto: no CUDA GPU")),
        (True, False, 1, ("hf", "auto: unsloth is not installed")),
        (True, True, 1, ("unsloth", "auto: a CUDA GPU and unsloth are here")),
        (True, True, 2, ("hf", "auto: the unsloth backend runs on one GPU, and this run has several processes")),
    ],
)
def test_auto_picks_unsloth_only_where_it_runs(machine, cuda, unsloth, world, expected):
    from ftc.runtime.run import choose_backend

    machine(cuda, unsloth)
    assert choose_backend("auto", world_size=world) == expected


def test_auto_takes_hf_for_grpo_that_generates_from_the_merged_copy(machine, tmp_path):
    """The copy runs on the hf backend (generation.for_backend keeps TRL's generate under unsloth),
    and generation is most of a GRPO step: 3.0 s a step there against 19.4-24.0 under unsloth.
    Which GRPO plans take the copy: test_grpo; an SFT plan never does."""
    from ftc.runtime.run import choose_backend, grpo_takes_the_copy

    write_jsonl(tmp_path / "s.jsonl", [{"t": f"row {i}"} for i in range(4)])
    sft = compile_plan(tmp_path, {"name": "t", "sources": {"s": {"path": "s.jsonl"}},
                                  "template": {"format": "text", "text": "{{ t }}"},
                                  "model": {"name": "tiny", "tokenizer": str(DEMO_TOKENIZER)}})
    assert sft.method == "sft" and not grpo_takes_the_copy(sft, 1)

    machine(True, True)
    chosen, why = choose_backend("auto", fast_grpo=True)
    assert chosen == "hf" and "merged copy" in why and "--backend unsloth" in why
    assert choose_backend("unsloth", fast_grpo=True) == ("unsloth", "asked for with --backend unsloth")  # by name, as asked
    machine(False, False)
    assert choose_backend("auto", fast_grpo=True) == ("hf", "auto: no CUDA GPU")


def test_fsdp_plans_train_on_hf(machine):
    """unsloth does not shard: `auto` takes hf for a plan with train.fsdp, with the reason, and unsloth by
    name is refused (FSDP plans run as torchrun ranks even on one GPU, so world_size says nothing here)."""
    from ftc.runtime.run import choose_backend

    machine(True, True)
    chosen, why = choose_backend("auto", fsdp="full_shard auto_wrap")
    assert chosen == "hf" and "train.fsdp ('full_shard auto_wrap')" in why and "unsloth backend does not" in why
    with pytest.raises(FtcError) as err:
        choose_backend("unsloth", fsdp="full_shard auto_wrap")
    assert err.value.code == "FTC768" and "--backend hf" in err.value.hint
    assert choose_backend("auto", fsdp="") == ("unsloth", "auto: a CUDA GPU and unsloth are here")


def test_unsloth_by_name_is_refused_with_the_reason(machine):
    from ftc.runtime.run import choose_backend

    machine(False, True)
    with pytest.raises(FtcError, match="--backend unsloth needs a CUDA GPU") as err:
        choose_backend("unsloth")
    assert err.value.code == "FTC701" and "--backend hf" in err.value.hint
    machine(False, False)
    with pytest.raises(FtcError, match="needs a CUDA GPU and the unsloth package") as err:
        choose_backend("unsloth")
    assert err.value.code == "FTC701"
    machine(True, False)
    with pytest.raises(FtcError, match="needs the unsloth package"):
        choose_backend("unsloth")
    machine(True, True)
    with pytest.raises(FtcError, match="runs on one GPU in this build, and this run has 2 processes") as err:
        choose_backend("unsloth", world_size=2)  # `ftc run --gpus 2 --backend unsloth`
    assert err.value.code == "FTC702" and "--backend hf" in err.value.hint
    assert choose_backend("unsloth") == ("unsloth", "asked for with --backend unsloth")
    assert choose_backend("hf") == ("hf", "asked for with --backend hf")


def test_child_environment_is_offline_and_caches_under_the_run(tmp_path):
    from ftc.runtime.unsloth_process import child_env

    env = child_env(tmp_path / "run", base={"PATH": "/bin"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["UNSLOTH_DISABLE_STATISTICS"] == "1"
    assert env["UNSLOTH_COMPILE_LOCATION"] == str((tmp_path / "run").resolve() / "unsloth_compiled_cache")
    # a value the user set wins
    assert child_env(tmp_path, base={"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"


def test_an_error_in_the_unsloth_process_is_the_users_error(tmp_path, monkeypatch):
    """The request names the verified lock (the child reads the same Plan); the child writes its
    FtcError to unsloth_error.json and the parent raises the same one: same rule, same text."""
    from ftc.compiler.lock import Plan
    from ftc.runtime import unsloth_process

    write_jsonl(tmp_path / "s.jsonl", [{"t": f"row {i}"} for i in range(4)])
    plan = compile_plan(tmp_path, {"name": "t", "sources": {"s": {"path": "s.jsonl"}},
                                   "template": {"format": "text", "text": "{{ t }}"},
                                   "model": {"name": "tiny", "tokenizer": str(DEMO_TOKENIZER)}})
    seen = {}
    # what the child raises when unsloth cannot load the model (backend_unsloth.unsloth_setup)
    raised = FtcError("FTC713", path="model.name", name="x/y", loader="unsloth", reason="x/y is not a local folder")

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        request = json.loads(Path(cmd[-1]).read_text())
        assert Plan.load(request["lock"]).plan_hash == plan.plan_hash and request["max_steps_override"] == 3
        assert request["backend_reason"] == "asked for" and request["resume"] is False
        unsloth_process.write_error(tmp_path / "run", raised)  # as the child's main does
        return subprocess.CompletedProcess(cmd, 2)

    kwargs = dict(output_dir=tmp_path / "run", resume=False, max_steps_override=3, backend_reason="asked for")
    monkeypatch.setattr(unsloth_process.subprocess, "run", fake_run)
    with pytest.raises(FtcError) as err:
        unsloth_process.train_in_child(plan, **kwargs)
    assert err.value.code == "FTC713" and err.value.path == "model.name" and str(err.value) == str(raised)
    assert "cannot load model 'x/y' with unsloth: x/y is not a local folder" in str(err.value)
    assert seen["cmd"][:3] == [sys.executable, "-m", "ftc.runtime.unsloth_process"]
    assert seen["env"]["UNSLOTH_COMPILE_LOCATION"].endswith("run/unsloth_compiled_cache")

    monkeypatch.setattr(unsloth_process.subprocess, "run", lambda cmd, env: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(FtcError, match="exited with code 1") as err:
        unsloth_process.train_in_child(plan, **kwargs)
    assert err.value.code == "FTC703" and "--backend hf" in err.value.hint


def test_the_unsloth_child_runs_the_same_skeleton_from_the_lock(tmp_path, monkeypatch, capfd):
    """The real hand-off, end to end on the CPU: the child process reads the request, loads the
    verified lock, runs the run skeleton (folder, data, memory plan) up to unsloth's model setup,
    which refuses without CUDA; that FtcError reaches the parent as the user's error. The
    `unsloth` package cannot run here, so a stand-in module of that name is put on the child's
    path (its import must only come first)."""
    if torch.cuda.is_available():
        pytest.skip("with CUDA the setup would go on to load the model with the stand-in")
    from ftc.runtime import unsloth_process

    write_jsonl(tmp_path / "s.jsonl", [{"t": f"row {i}"} for i in range(4)])
    plan = compile_plan(tmp_path, {"name": "t", "sources": {"s": {"path": "s.jsonl"}},
                                   "template": {"format": "text", "text": "{{ t }}"},
                                   "model": {"name": "tiny", "tokenizer": str(DEMO_TOKENIZER)}})
    (tmp_path / "stand_in").mkdir()
    (tmp_path / "stand_in" / "unsloth.py").write_text("FastLanguageModel = None  # stand-in: the real package needs CUDA\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "stand_in"))
    with pytest.raises(FtcError, match="--backend unsloth needs a CUDA GPU"):
        unsloth_process.train_in_child(plan, output_dir=tmp_path / "run", resume=False, max_steps_override=1,
                                       backend_reason="asked for")
    said = capfd.readouterr().err
    assert "ftc: unsloth imported in" in said  # the stand-in was imported first, in the child
    assert "ftc: gradient checkpointing" in said  # the skeleton's memory plan ran there, before the model setup
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training
    assert json.loads((tmp_path / "run" / unsloth_process.ERROR).read_text())["code"] == "FTC701"


def test_a_config_class_that_changes_the_plan_is_refused(tmp_path):
    """unsloth's GRPOConfig may reset per_device_train_batch_size to num_generations; a config
    class that rewrites a plan setting must stop the run, not train another batch."""
    from trl import GRPOConfig

    from ftc.runtime.trainer_config import checked_config, config_changes, refuse_changes, training_arguments

    train = resolved({"name": "m"}, train={"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                            "lr_scheduler_type": "cosine"})["train"]
    kwargs = training_arguments(train, warmup_steps=1, checkpoints=tmp_path, max_steps=3, dtype="float32", device="cpu",
                                eval_steps=None)
    kwargs.update(num_generations=8, max_completion_length=16, use_vllm=False)
    config = checked_config(GRPOConfig, kwargs)  # TRL's own class keeps every value (enums compared by value)
    assert config_changes(config, kwargs) == []

    class Rewriting(GRPOConfig):  # what unsloth's config does for a batch it does not like
        def __post_init__(self):
            self.per_device_train_batch_size = self.num_generations
            super().__post_init__()

    with pytest.raises(FtcError, match=r"per_device_train_batch_size: 4 -> 8") as err:
        checked_config(Rewriting, kwargs)
    assert err.value.code == "FTC730" and "--backend hf" in str(err.value)
    config.gradient_accumulation_steps = 1  # a trainer's __init__ rewriting its args
    with pytest.raises(FtcError, match=r"gradient_accumulation_steps: 2 -> 1"):
        refuse_changes(config, kwargs, who="SomeTrainer")


def test_the_unsloth_module_imports_nothing_heavy_at_import():
    code = "import sys, ftc.runtime.unsloth_process, ftc.runtime.backend_unsloth, ftc.runtime.flops, ftc.runtime.memory_plan\n" \
           "print([m for m in ('torch', 'transformers', 'trl', 'peft', 'unsloth') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def bf16_weights_gib(config) -> float:
    from ftc.runtime.memory_plan import estimate

    return estimate(config, tokens_per_micro_batch=1)["weights_gib"]


QWEN7B = SimpleNamespace(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False)


def test_flops_per_token_counts_linear_lora_and_attention():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from peft import LoraConfig, get_peft_model

    from ftc.runtime.flops import mean_causal_context, model_flops

    assert mean_causal_context([1, 3]) == (1 + 6) / 4
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)
    model = get_peft_model(Qwen2ForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    f = model_flops(model, context=10.0)
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128
    assert f["n_linear"] == 2 * per_layer + 100 * 64  # the tied LM head is still a matmul
    assert f["n_lora"] == 2 * (4 * (64 + 64) + 4 * (128 + 64))
    assert f["flops_per_token"] == 4 * f["n_linear"] + 6 * f["n_lora"] + 12 * 2 * 64 * 10.0


def test_memory_plan_turns_checkpointing_off_only_where_it_fits():
    from ftc.runtime.memory_plan import advise, lora_params

    assert lora_params(QWEN7B, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) == 40_370_176
    used = lambda m: (m["used"]["gradient_checkpointing"], m["used"]["per_device_train_batch_size"],  # noqa: E731
                      m["used"]["gradient_accumulation_steps"])
    # the plan's split: checkpointing "auto" decides from the GPU
    h200 = advise(QWEN7B, gpu_gib=139.8, tokens_per_item=2048, micro_batch=2, accumulation=4)
    assert used(h200) == (False, 2, 4) and "without checkpointing at 2 x 4, within 85%" in h200["reason"] and "hint" not in h200
    small = advise(QWEN7B, gpu_gib=40, tokens_per_item=2048, micro_batch=2, accumulation=4)
    assert used(small) == (True, 2, 4) and "with checkpointing" in small["reason"]
    cpu = advise(QWEN7B, gpu_gib=None, tokens_per_item=2048, micro_batch=2, accumulation=4, split="auto")
    assert used(cpu) == (False, 2, 4) and "no GPU and no RAM size" in cpu["reason"]
    # without a GPU the machine's RAM is the budget (float32 there: twice the bytes); the split stays the plan's
    big = advise(QWEN7B, gpu_gib=None, ram_gib=512, tokens_per_item=2048, micro_batch=2, accumulation=4, split="auto", dtype_bytes=4)
    assert used(big) == (False, 2, 4) and "of the machine's 512 GiB of RAM (no GPU)" in big["reason"]
    laptop = advise(QWEN7B, gpu_gib=None, ram_gib=64, tokens_per_item=2048, micro_batch=2, accumulation=4, split="auto", dtype_bytes=4)
    assert used(laptop) == (True, 2, 4) and laptop["setting"]["micro_batch"] == "auto"
    assert laptop["estimate"]["weights_gib"] > 2 * bf16_weights_gib(QWEN7B) - 1
    # a value in the plan is used as written, with a hint where the estimate disagrees
    kept = advise(QWEN7B, gpu_gib=139.8, tokens_per_item=2048, micro_batch=2, accumulation=4, checkpointing=True)
    assert used(kept) == (True, 2, 4) and "fits without" in kept["hint"]
    risky = advise(QWEN7B, gpu_gib=24, tokens_per_item=2048, micro_batch=2, accumulation=4, checkpointing=False)
    assert used(risky) == (False, 2, 4) and "out of memory" in risky["hint"]
    est = h200["estimate"]
    assert est["checkpointing_gib"] < est["no_checkpointing_gib"]


def test_memory_plan_cuts_the_same_batch_into_the_largest_micro_batch_that_fits():
    """micro_batch "auto": the items per optimizer step stay micro x accumulation; only the cut moves."""
    from ftc.runtime.memory_plan import advise

    def split(gpu, **kw):
        m = advise(QWEN7B, gpu_gib=gpu, tokens_per_item=2048, micro_batch=2, accumulation=4, split="auto", backend="unsloth", **kw)
        u = m["used"]
        assert u["per_device_train_batch_size"] * u["gradient_accumulation_steps"] == 8
        return u["gradient_checkpointing"], u["per_device_train_batch_size"], m
    ckpt, micro, m = split(139.8)  # the H200: 8 packs fit without checkpointing (measured 80.7 GiB)
    assert (ckpt, micro) == (False, 8) and 70 < m["estimate"]["no_checkpointing_gib"] < 0.85 * 139.8
    assert split(80)[:2] == (False, 4)  # an 80 GB card: half of it
    assert split(40)[:2] == (False, 2)
    assert split(24)[:2] == (True, 4)  # nothing fits without: checkpointing, then the largest that fits with it
    ckpt, micro, tiny = split(8)  # not even one pack by the estimate: the smallest cut, and a warning
    assert (ckpt, micro) == (True, 1) and "may run out of memory" in tiny["hint"]
    assert split(139.8, checkpointing=True)[:2] == (True, 8)


def test_plan_memory_reads_the_shape_from_the_models_config(tmp_path):
    """Before any weight loads: the config.json (plus init=random overrides) gives the shape;
    an unreadable config keeps checkpointing on and the plan's split under auto, and says why."""
    from transformers import Qwen2Config

    from ftc.runtime.memory_plan import plan_memory

    Qwen2Config(**{k: v for k, v in vars(QWEN7B).items()}).save_pretrained(tmp_path / "m")
    def sections(**model):
        s = resolved(model, lora={"r": 16, "target_modules": "all-linear"},
                     train={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4})
        return s["model"], s["lora"], s["train"]

    plan = plan_memory(*sections(name=str(tmp_path / "m")), tokens_per_item=2048, backend="hf")
    assert plan["setting"] == {"gradient_checkpointing": "auto", "micro_batch": "auto"}
    assert plan["estimate"]["weights_gib"] > 13  # 7B in bf16
    smaller = plan_memory(*sections(name=str(tmp_path / "m"), init="random", config={"num_hidden_layers": 2}),
                          tokens_per_item=2048, backend="hf")
    assert smaller["estimate"]["weights_gib"] < plan["estimate"]["weights_gib"]
    missing = plan_memory(*sections(name=str(tmp_path / "nothing")), tokens_per_item=2048, backend="hf")
    assert missing["used"] == {"gradient_checkpointing": True, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    assert "could not be read" in missing["reason"]
    grpo = plan_memory(*sections(name=str(tmp_path / "m")), tokens_per_item=768, backend="hf", can_split=False)
    assert grpo["setting"]["micro_batch"] == "plan" and "GRPO keeps the plan's split" in grpo["reason"]
