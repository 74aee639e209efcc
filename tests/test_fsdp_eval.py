"""The final eval of an FSDP run (train.fsdp), on the CPU: torch's own FSDP2 on a one-process gloo group.

accelerate does not shard on the CPU (FTC765), so the model is wrapped here as accelerate's
`fsdp2_prepare_model` wraps a PEFT model for training: each decoder layer, the input embedding and
the LM head in units of their own, the PEFT model as the root, whose group keeps what no unit holds
(the final norm: accelerate looks for it on the PEFT wrapper's children and does not find it).
`token_logprobs` runs the base model and the LM head apart, never the root's forward; on the H200 that
failed after training with "mixed torch.Tensor and DTensor" in the final norm
(tests/bench/results/gpu-fsdp-2026-12-01).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def test_token_logprobs_of_an_fsdp2_model_equal_the_unsharded_ones(tmp_path):
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ftc.runtime.evaluate import _token_logprobs, token_logprobs

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    labels = torch.randint(0, 64, (2, 10))
    labels[:, :3] = -100  # a prompt part: not scored
    batch = {"input_ids": torch.randint(0, 64, (2, 10)), "labels": labels}
    with torch.no_grad():
        plain, plain_mask = token_logprobs(model, batch)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        for layer in base.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(base.model.embed_tokens, mesh=mesh)
        fully_shard([base.lm_head], mesh=mesh, reshard_after_forward=False)
        fully_shard(model, mesh=mesh)
        assert isinstance(model, FSDPModule)
        with torch.no_grad():
            with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
                _token_logprobs(model, batch)  # the call without the root group gathered: what failed on the GPU
            sharded, mask = token_logprobs(model, batch)
            again, _ = token_logprobs(model, batch)  # the root group was resharded after the first call, and gathers again
    finally:
        dist.destroy_process_group()
    assert torch.equal(mask, plain_mask) and int(mask.sum()) == 2 * 7  # labels 3-9 of each row: the next-token shift drops one of the 3 unscored
    assert torch.equal(sharded, plain) and torch.equal(again, plain)
