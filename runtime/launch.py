"""Several processes for one plan, through torch's own launcher (torchrun), not a home-made one.

`ftc run plan.lock --gpus N` verifies the plan once, then re-executes itself under
`torch.distributed.run` with one process per GPU. The plan fixes the global batch:
each rank's gradient accumulation is the lock's divided by the world size, so
per_device_batch x accumulation x world size stays what the reviewer approved.
The Trainer's distributed sampler gives each rank a disjoint shard in the lock's
seeded order; only rank 0 writes checkpoints, metrics, the adapter and run.json.
"""

from __future__ import annotations

import os
import sys

from ftc.errors import FtcError

WORKER_FLAG = "FTC_DISTRIBUTED_WORKER"


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed launch."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def per_rank_accumulation(train: dict, world_size: int) -> dict:
    """The train settings for one rank, keeping the lock's global batch."""
    ga = int(train["gradient_accumulation_steps"])
    if world_size <= 1:
        return train
    if ga % world_size:
        bs = train["per_device_train_batch_size"]
        raise FtcError("FTC760", batch=bs, accumulation=ga, total=bs * ga, world_size=world_size)
    return {**train, "gradient_accumulation_steps": ga // world_size}


def needs_launch(lock_path: str, *, gpus: int, nnodes: int) -> bool:
    """Whether `ftc run` starts torchrun rather than training in its own process: for several
    processes, and for a plan with `train.fsdp` on one GPU too, since the Trainer takes FSDP only in
    distributed training (trainer_config.refuse_unsharded_fsdp). The lock is read
    (its hash checked) only when one process would otherwise do."""
    if gpus > 1 or nnodes > 1:
        return True
    from ftc.compiler.lock import read_lock

    return bool(read_lock(lock_path)["settings"]["train"].get("fsdp"))


def torchrun_command(argv: list[str], *, gpus: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None) -> list[str]:
    """The torchrun command that runs `ftc <argv>` once per GPU (and host)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise FtcError("FTC761", nnodes=nnodes)
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "ftc"] + argv


def launch(argv: list[str], *, gpus: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None) -> int:
    """Run the worker processes and wait; their exit status is ours."""
    import subprocess

    env = {**os.environ, WORKER_FLAG: "1",
           # NVLink multicast stays off: on shared hosts it can take GPUs out of service
           "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0"),
           "TORCH_SYMM_MEM_DISABLE_MULTICAST": os.environ.get("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")}
    cmd = torchrun_command(argv, gpus=gpus, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    print("ftc: launching " + " ".join(cmd[1:]), file=sys.stderr)
    return subprocess.call(cmd, env=env)


def finish_distributed() -> None:
    """Every rank waits for the others, then leaves the process group cleanly.

    Without this a rank that finishes first exits while gloo/NCCL threads still hold the
    connection, and the C++ runtime aborts it (seen as SIGABRT under torchrun on the CPU).
    """
    import sys

    dist_mod = sys.modules.get("torch.distributed")
    if dist_mod is None or not dist_mod.is_available() or not dist_mod.is_initialized():
        return
    dist_mod.barrier()
    dist_mod.destroy_process_group()
