"""Ctrl-C and --resume: a run interrupted at step 2 and resumed to step 4 must end exactly
where a straight 4-step run ends (same data order, optimizer, scheduler and RNG states).

The ten rows are compiled and packed by the real compiler (padding-free batches) and LoRA dropout is on, so the data order and
the restored RNG both matter. The interrupt is a real SIGINT, raised from inside the
training loop the way a terminal's Ctrl-C arrives.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from fixtures import compile_plan, train, write_jsonl, write_tiny_model_dir  # noqa: E402

from conftest import TOKENIZER  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (TOKENIZER / "tokenizer.json").exists(), reason=f"needs the Qwen2.5 tokenizer at {TOKENIZER} (shared/ is absent)"
)

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "glass", "ocean", "maple"]
MAX_LEN = 48
RECIPE = {
    "name": "resume",
    "sources": {"say": {"path": "say.jsonl"}},
    "template": {"format": "prompt_completion", "prompt": "Say {{ word }} twice:", "completion": " {{ word }} {{ word }}."},
    "model": {"name": "tiny", "init": "random", "tokenizer": str(TOKENIZER), "max_seq_length": MAX_LEN, "dtype": "float32"},
    "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "train": {"learning_rate": 5e-3, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 4,
              "warmup_steps": 1, "lr_scheduler_type": "cosine", "seed": 11, "logging_steps": 1, "save_steps": 100,
              "gradient_checkpointing": True, "packing": True},
}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """The ten rows compiled and packed (into sequences of at most 48 tokens) by the real compiler."""
    folder = tmp_path_factory.mktemp("resume")
    write_jsonl(folder / "say.jsonl", [{"word": w} for w in WORDS])
    write_tiny_model_dir(folder / "tiny")
    return compile_plan(folder, RECIPE)


def interrupt_at(step: int):
    from transformers import TrainerCallback

    class SigintAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                signal.raise_signal(signal.SIGINT)

    return SigintAt()


def adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_interrupted_and_resumed_run_ends_where_a_straight_run_ends(plan, tmp_path: Path):
    assert plan.schedule["warmup_steps"] == 1  # the lock's resolved warmup is what the trainer gets

    straight = train(plan, tmp_path / "straight")
    assert straight["train"]["global_step"] == 4 and not straight["train"]["interrupted"]

    stopped = train(plan, tmp_path / "resumed", extra_callbacks=[interrupt_at(2)])
    assert stopped["train"]["interrupted"] and stopped["train"]["global_step"] == 2
    assert stopped["checkpoint"] == "checkpoints/checkpoint-2"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    resumed = train(plan, tmp_path / "resumed", resume=True)
    assert resumed["train"]["resumed_from_step"] == 2 and resumed["train"]["global_step"] == 4

    a, b = adapter(tmp_path / "straight"), adapter(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    assert any(float(t.abs().max()) > 0 for k, t in a.items() if "lora_B" in k)  # it did train
    ma, mb = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [m["step"] for m in mb] == [1, 2, 3, 4]  # each step logged once across both sessions
    assert [m["loss"] for m in mb] == pytest.approx([m["loss"] for m in ma], rel=1e-5)
    # the lock's warmup (1 step) reached the scheduler: step 1 trains at rate 0, step 2 at the full
    # rate (without warmup step 1 would train at the full rate), then the cosine decays
    assert [m["learning_rate"] for m in ma[:3]] == pytest.approx([0.0, 5e-3, 3.75e-3])

    # packed, padding-free: every slot the model computed is a real token
    assert resumed["tokens"]["real"] == resumed["tokens"]["slots"] > 0
    assert resumed["data"]["train"]["packed"] and resumed["data"]["train"]["sequences"] < len(WORDS)
    assert resumed["tokens"]["pack_fill"] <= 1


def test_resume_without_a_checkpoint_and_reuse_of_a_folder_are_refused(plan, tmp_path: Path):
    from ftc.errors import FtcError

    with pytest.raises(FtcError, match="--resume: no checkpoint in") as err:
        train(plan, tmp_path / "out", resume=True)
    assert err.value.code == "FTC706" and "without --resume" in err.value.hint
    (tmp_path / "out" / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # complete: the Trainer's last file is there
    (tmp_path / "out" / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    with pytest.raises(FtcError, match="already holds checkpoints of a run") as err:
        train(plan, tmp_path / "out")
    assert err.value.code == "FTC707" and "--resume" in err.value.hint
