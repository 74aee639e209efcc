#!/usr/bin/env python3
"""Whether transformers' Trainer turns FSDP on for `train.fsdp`, in a plain process and in a torchrun rank
(a script for the GPU; issue 16). Builds a tiny random Llama and a Trainer with ftc's own FSDP arguments
(trainer_config.fsdp_arguments) and prints one JSON line: LOCAL_RANK, accelerate's distributed type,
Trainer.is_fsdp_enabled.

    python3 tests/bench/fsdp_probe.py                                   # one plain process
    python3 -m torch.distributed.run --standalone --nproc-per-node=1 tests/bench/fsdp_probe.py   # one rank
"""

import json
import os
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from ftc.runtime.trainer_config import fsdp_arguments

model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2))
with tempfile.TemporaryDirectory() as tmp:
    args = TrainingArguments(output_dir=tmp, report_to=[], bf16=torch.cuda.is_available(), **fsdp_arguments("full_shard auto_wrap"))
    trainer = Trainer(model=model, args=args)
    print(json.dumps({"LOCAL_RANK": os.environ.get("LOCAL_RANK"), "cuda": torch.cuda.is_available(),
                      "distributed_type": str(trainer.accelerator.distributed_type),
                      "is_fsdp_enabled": trainer.is_fsdp_enabled}), flush=True)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
