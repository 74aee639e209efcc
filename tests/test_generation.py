"""GRPO's fast generation path (runtime/generation.py) against the plain one, on the CPU.

The plain path is what TRL does without vLLM: `generate` through the unmerged PEFT adapter.
The fast path must give the same greedy completions and the same per-token log-probs (fp32:
tight tolerance), and after an optimizer step the copy must follow the updated adapter (and
must not before it is synced: else the test could not tell). Also: `train.grpo.generation`
decides as documented, and "vllm" without vllm is FTC782 at `ftc run`, before any model loads.
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from fixtures import write_tiny_model_dir  # noqa: E402

from ftc.errors import FtcError  # noqa: E402
from ftc.runtime.generation import FAST, GENERATE, MergedGenerator, cut_after_eos, for_backend, plan_generation  # noqa: E402

EOS, PAD = 2, 0
PROMPTS = [[5, 17, 99, 4, 250], [7, 8, 9], [300, 301, 302, 303, 304, 305, 306]]
GREEDY = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": PAD, "eos_token_id": [EOS],
          "temperature": None, "top_p": None, "top_k": None}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny random Qwen2 with a LoRA whose B is not zero (a fresh LoRA would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    folder = write_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny", vocab_size=1024, eos_token_id=EOS,
                                  pad_token_id=PAD, bos_token_id=None, initializer_range=0.2)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def plain_generate(model, prompts: list[list[int]]) -> list[list[int]]:
    """TRL's path: left-padded batch through the PEFT model."""
    from transformers import GenerationConfig

    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(**GREEDY))
    return cut_after_eos(out[:, width:].tolist(), [EOS])


def token_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_fast_path_gives_the_plain_paths_greedy_completions_and_log_probs(policy):
    policy.eval()
    fast = MergedGenerator(policy, compile_cache=False)
    fast.sync(policy, step=0)
    want = plain_generate(policy, PROMPTS)
    got = fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    assert got == want
    assert any(len(c) > 3 for c in got)  # something was generated to compare
    for prompt, completion in zip(PROMPTS, got):
        torch.testing.assert_close(token_logprobs(fast.copy, prompt, completion), token_logprobs(policy, prompt, completion),
                                   atol=1e-4, rtol=1e-4)


def test_after_an_optimizer_step_the_copy_follows_the_adapter(policy):
    fast = MergedGenerator(policy, compile_cache=False)
    fast.sync(policy, step=0)
    before = plain_generate(policy, PROMPTS)
    policy.train()
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=5.0)
    # one step that pushes up a token the policy does not pick now: its greedy completions change
    target = 777
    for _ in range(3):
        opt.zero_grad()
        loss = -torch.log_softmax(policy(input_ids=torch.tensor([PROMPTS[0]])).logits[0, -1], -1)[target]
        loss.backward()
        opt.step()
    policy.eval()
    after = plain_generate(policy, PROMPTS)
    assert after != before  # the step changed the policy's greedy completions
    stale = fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    assert stale == before  # not synced yet: still the old weights (so the next assert can fail)
    assert fast.sync(policy, step=0) is None  # the same optimizer step: nothing to merge again
    assert fast.sync(policy, step=1) is not None
    got = fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    assert got == after
    assert len(fast.merge_seconds) == 2 and all(s >= 0 for s in fast.merge_seconds)


def test_the_copy_generates_even_after_trl_patched_the_training_models_forward(tmp_path):
    """TRL's GRPOTrainer replaces the policy's forward on the instance (`add_fused_lm_head`), by a closure
    over the original bound forward. A deepcopy kept that closure, so the "merged copy" generated through
    the training model, LoRA unmerged: the fast path was only the compiled cache. Here the training
    model's LoRA layers must not run at all while the copy generates, and the copy must still be stale
    until synced (it is its own weights, not the policy's)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(1)
    folder = write_tiny_model_dir(tmp_path / "tiny", vocab_size=1024, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None,
                                  initializer_range=0.2)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    add_fused_lm_head(model.get_base_model())  # what GRPOTrainer.__init__ does to the policy
    assert "forward" in vars(model.get_base_model())
    fast = MergedGenerator(model, compile_cache=False)
    assert fast.patches_dropped == ["<root>"]
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules() if isinstance(m, LoraLayer)]
    try:
        before = fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    finally:
        for h in hooks:
            h.remove()
    assert calls == []  # no LoRA layer of the training model ran
    with torch.no_grad():  # change the policy: the unsynced copy must not see it
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    changed = plain_generate(model, PROMPTS)
    assert changed != before
    assert fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu") == before
    fast.sync(model, step=1)
    assert fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu") == changed


def test_one_static_cache_serves_every_call_that_fits_it(policy):
    """The CUDA path's cache (without compiling: transformers compiles only on an accelerator): one
    StaticCache sized for the plan's longest prompt, reset and reused by calls of other prompt widths,
    with the same greedy completions as the plain path; another batch size builds a second one."""
    policy.eval()
    fast = MergedGenerator(policy, compile_cache=True, max_prompt_length=70)
    fast.sync(policy, step=0)
    first = fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    cache = fast.cache
    assert fast.cache_shape == (3, 128 + GREEDY["max_new_tokens"])  # 70 in steps of 64, then the completion
    longer = [p * 9 for p in PROMPTS]  # 27-63 tokens: another width, the same cache
    second = fast.generate(longer, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    assert fast.cache is cache and fast.caches_built == 1
    assert first == plain_generate(policy, PROMPTS) and second == plain_generate(policy, longer)
    assert any(len(c) > 3 for c in first + second)
    again = fast.generate(PROMPTS, generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    assert again == first  # reset: nothing of the longer call's keys and values is left
    fast.generate(PROMPTS[:2], generation_kwargs=GREEDY, eos_token_ids=[EOS], pad_token_id=PAD, device="cpu")
    assert fast.caches_built == 2 and fast.cache_shape[0] == 2


def test_generation_choice():
    assert plan_generation("auto", load_in_4bit=False, world_size=1).path == FAST
    assert plan_generation("auto", load_in_4bit=True, world_size=1).path == GENERATE
    ddp = plan_generation("auto", load_in_4bit=False, world_size=2)  # DDP: each rank its own copy
    assert ddp.path == FAST and "each of the 2 processes" in ddp.reason
    fsdp = plan_generation("auto", load_in_4bit=False, world_size=2, fsdp="full_shard auto_wrap")
    assert fsdp.path == GENERATE and "train.fsdp" in fsdp.reason
    assert plan_generation("generate", load_in_4bit=False, world_size=1).path == GENERATE
    auto = plan_generation("auto", load_in_4bit=False, world_size=1)
    assert for_backend(auto, "hf") == auto
    assert for_backend(auto, "unsloth").path == GENERATE and "unsloth" in for_backend(auto, "unsloth").reason
    asked = plan_generation("generate", load_in_4bit=False, world_size=1)
    assert for_backend(asked, "unsloth") == asked


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_without_vllm_is_refused_naming_the_key():
    with pytest.raises(FtcError) as err:
        plan_generation("vllm", load_in_4bit=False, world_size=1)
    assert err.value.code == "FTC782" and err.value.path == "train.grpo.generation"
    assert "vllm does not import" in str(err.value)
