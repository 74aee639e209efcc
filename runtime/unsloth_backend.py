"""The unsloth backend: the hf backend's plan, data, masks and packing, with unsloth's model.

Why a process of its own: `import unsloth` must come before trl, transformers and peft,
patches TRL process-wide and takes 30-40 s. `ftc run` (run.py) therefore starts
`python -m ftc.runtime.unsloth_backend REQUEST.json` and waits; this module imports unsloth
first, then runs the very `train_sft` or `train_grpo` the hf backend runs, with
`unsloth_setup` as its model loader. Only the model and TRL's classes differ (unsloth swaps
SFTTrainer/GRPOTrainer and their configs for its own on import; the trainers refuse to run
when those change a setting of the plan, see `trainer_args.refuse_changes`):

- FastLanguageModel.from_pretrained(use_exact_model_name=True): the model the lock names,
  never a pre-quantized look-alike unsloth would map the name to; load_in_4bit is the plan's
  model.load_in_4bit (QLoRA, bitsandbytes nf4), not unsloth's default of True.
- get_peft_model with the plan's LoRA keys; use_gradient_checkpointing is "unsloth"
  (checkpoints offloaded to the CPU) when train.gradient_checkpointing, else False.
  The trainer's own checkpointing stays off: unsloth does it inside the model.
- model.init=random: the base is built from its config exactly as the hf backend builds it
  (CPU, seeded, fingerprinted), saved once under the run folder (random_base/) and loaded
  from there, because unsloth patches a model while loading it and takes no model object.
- Packing: the collator's padding-free row (one row, restarting position_ids, no
  attention_mask) comes with `packed_seq_lengths` (the rows' lengths, a CPU tensor), which
  unsloth's fast forward uses for its varlen attention, so packed rows do not attend to
  each other here either
  (`tests/bench/gpu_bench.py` checks it on the GPU). Unsloth's own packing and padding-free
  switches stay off: the compiler packed, and our collator is passed to the trainer.

The child is offline by default (HF_HUB_OFFLINE=1), sends no statistics
(UNSLOTH_DISABLE_STATISTICS=1) and writes unsloth's compile cache under the run folder
(UNSLOTH_COMPILE_LOCATION), not the current directory; values already set in the
environment win. An FtcError in the child reaches the parent through `unsloth_error.json`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ftc.errors import FtcError

REQUEST = "unsloth_request.json"
ERROR = "unsloth_error.json"
COMPILE_CACHE = "unsloth_compiled_cache"
RANDOM_BASE = "random_base"


def child_env(output_dir: Path, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    env.setdefault("UNSLOTH_COMPILE_LOCATION", str(Path(output_dir).resolve() / COMPILE_CACHE))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def train_in_subprocess(method: str, **kwargs: Any) -> dict:
    """Run train_sft (method "sft") or train_grpo ("grpo") with **kwargs and the unsloth model in
    a child process; return its run facts."""
    out = Path(kwargs["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    request = out / REQUEST
    body = {"method": method, "kwargs": {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}}
    request.write_text(json.dumps(body, indent=2, default=str))
    (out / ERROR).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ftc.runtime.unsloth_backend", str(request)]
    print("ftc: starting the unsloth process (importing unsloth takes 30-40 s)", file=sys.stderr, flush=True)
    # Ctrl-C reaches both processes; the child saves a checkpoint and stops, the parent waits for it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.run(cmd, env=child_env(out))
    finally:
        signal.signal(signal.SIGINT, previous)
    if (out / ERROR).exists():
        e = json.loads((out / ERROR).read_text())
        raise FtcError(e["code"], file=e.get("file"), path=e.get("path"), **e.get("fields", {}))
    if proc.returncode != 0:
        raise FtcError("FTC700", reason=f"the unsloth training process exited with code {proc.returncode} (its output is above)",
                       hint="fix what it printed, or run the same plan with --backend hf")
    return json.loads((out / "run.json").read_text())


def unsloth_setup(model: dict, lora: dict, train: dict, *, seed: int, output_dir: Path, tokenizer_path: str) -> Any:
    """ModelSetup for train_sft / train_grpo: unsloth's FastLanguageModel with the plan's LoRA on it."""
    import torch
    from unsloth import FastLanguageModel

    from ftc.runtime.model import LoadedModel, ModelSetup, lora_kwargs, resolve_dtype, run_error

    if not torch.cuda.is_available():
        raise run_error("--backend unsloth needs a CUDA GPU", "use --backend hf, which runs on the CPU too")
    dtype_name = resolve_dtype(model.get("dtype", "auto"), "cuda")
    name, random_init, fingerprint, random_base = model["name"], model.get("init", "pretrained") == "random", "", None
    if random_init:
        name, fingerprint = _random_base(model, seed=seed, folder=Path(output_dir) / RANDOM_BASE)
        random_base = RANDOM_BASE
    checkpointing = "unsloth" if bool(train.get("gradient_checkpointing", True)) else False
    kwargs: dict[str, Any] = {}
    if model.get("revision") and not random_init:
        kwargs["revision"] = model["revision"]
    try:
        base, _ = FastLanguageModel.from_pretrained(
            model_name=name,
            tokenizer_name=str(tokenizer_path),
            max_seq_length=int(model.get("max_seq_length", 2048)),
            dtype=getattr(torch, dtype_name),
            load_in_4bit=bool(model.get("load_in_4bit", False)),
            use_exact_model_name=True,
            fix_tokenizer=False,  # the compiler tokenized; the model must not be resized for a tokenizer fix
            trust_remote_code=bool(model.get("trust_remote_code", False)),
            use_gradient_checkpointing=checkpointing,
            random_state=seed,
            **kwargs,
        )
    except (OSError, RuntimeError, ValueError) as err:  # unsloth wraps a missing model in a RuntimeError
        raise run_error(f"cannot load model {name!r} with unsloth: {str(err).strip()}",
                        "offline? point model.name at a local folder; a typo in a hub id looks the same") from err
    peft_model = FastLanguageModel.get_peft_model(
        base,
        **lora_kwargs(lora),
        use_gradient_checkpointing=checkpointing,
        random_state=seed,
        max_seq_length=int(model.get("max_seq_length", 2048)),
    )
    loaded = LoadedModel(peft_model, dtype_name, "cuda", random_init, fingerprint, peft_model.num_parameters())
    return ModelSetup(
        loaded=loaded,
        peft_config=None,  # get_peft_model already put the adapter on
        backend="unsloth",
        attention="unsloth (varlen attention over the packed_seq_lengths the collator hands it)",
        packing_safe=True,
        trainer_overrides={"gradient_checkpointing": False},  # unsloth checkpoints inside the model (above)
        packed_lengths_key="packed_seq_lengths",  # from the collator, on the CPU: no GPU sync to find them
        facts={"versions": _versions(), "gradient_checkpointing": checkpointing or False,
               "compile_cache": os.environ.get("UNSLOTH_COMPILE_LOCATION"), "random_base": random_base,
               "import_unsloth_s": _IMPORT_SECONDS.get("unsloth")},
    )


def _random_base(model: dict, *, seed: int, folder: Path) -> tuple[str, str]:
    """Build the random-init base as the hf backend does; save it once; (folder, fingerprint)."""
    import gc

    from ftc.runtime.model import load_base_model

    loaded = load_base_model(model, seed=seed, device="cuda")  # built on the CPU from the seed
    stamp = folder / "ftc_fingerprint.txt"
    if not (stamp.exists() and stamp.read_text().strip() == loaded.fingerprint):
        loaded.model.save_pretrained(str(folder), safe_serialization=True)
        stamp.write_text(loaded.fingerprint + "\n")
    fingerprint = loaded.fingerprint
    del loaded
    gc.collect()
    return str(folder), fingerprint


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("unsloth", "unsloth_zoo", "bitsandbytes", "triton"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


_IMPORT_SECONDS: dict[str, float] = {}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ftc.runtime.unsloth_backend REQUEST.json (started by `ftc run --backend unsloth`)", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[1]).read_text())
    method, kwargs = request["method"], request["kwargs"]
    out = Path(kwargs["output_dir"])
    os.environ.update({k: v for k, v in child_env(out).items() if k not in os.environ})
    t0 = time.perf_counter()
    import unsloth  # noqa: F401  (first: it patches trl, transformers and peft as they import)

    seconds = round(time.perf_counter() - t0, 1)
    print(f"ftc: unsloth imported in {seconds} s", file=sys.stderr, flush=True)
    # this file runs as __main__; unsloth_setup is reached through the module's import name
    from ftc.runtime import unsloth_backend

    unsloth_backend._IMPORT_SECONDS["unsloth"] = seconds
    if method == "grpo":
        from ftc.runtime.grpo import train_grpo as trainer
    else:
        from ftc.runtime.sft import train_sft as trainer

    try:
        trainer(**{**kwargs, "output_dir": out}, backend="unsloth")
    except FtcError as e:
        fields = {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in e.fields.items()}
        (out / ERROR).write_text(json.dumps({"code": e.code, "file": e.file, "path": e.path, "fields": fields}))
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
