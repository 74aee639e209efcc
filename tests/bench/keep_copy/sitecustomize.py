"""Benchmark-only, for gpu_grpo.py's `ftc_unsloth_copy`: with FTC_BENCH_KEEP_COPY=1 and this folder first
on PYTHONPATH, every Python process (the unsloth backend trains in a child that `ftc run` starts) keeps the
merged-copy fast path where `generation.for_backend` would hand GRPO to TRL's generate. It must act before
`ftc.runtime.grpo` binds the name, hence at interpreter start; ftc's runtime is unchanged."""
import os

if os.environ.get("FTC_BENCH_KEEP_COPY") == "1":
    from ftc.runtime import generation

    generation.for_backend = lambda choice, backend: choice
