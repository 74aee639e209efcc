"""The unsloth backend's process hand-off: `ftc run` starts a child that imports unsloth first.

Why a process of its own: `import unsloth` must come before trl, transformers and peft,
patches TRL process-wide and takes 30-40 s. `ftc run` (run.py) therefore writes a request
file into the run folder, starts `python -m ftc.runtime.unsloth_process REQUEST.json` and
waits; the child imports unsloth, then runs the very run skeleton the hf backend runs
(`session.run_method`) with unsloth's model setup (backend_unsloth.py). The child writes
run.json itself, so the parent only reads it.

The request names the lock the parent verified (and the artifacts it rebuilt), not a copy
of its settings: the child reads the same `Plan` the parent read.

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


def child_env(output_dir: Path, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    env.setdefault("UNSLOTH_COMPILE_LOCATION", str(Path(output_dir).resolve() / COMPILE_CACHE))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def train_in_child(plan: Any, *, output_dir: Path, resume: bool, max_steps_override: int | None,
                   backend_reason: str) -> dict:
    """Train `plan` (a verified `ftc.compiler.lock.Plan`) with unsloth in a child process; return
    the run facts it wrote to run.json."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = out / REQUEST
    body = {"lock": str(plan.lock_path), "rebuilt": list(plan.rebuilt), "output_dir": str(out), "resume": resume,
            "max_steps_override": max_steps_override, "backend_reason": backend_reason}
    request.write_text(json.dumps(body, indent=2))
    (out / ERROR).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ftc.runtime.unsloth_process", str(request)]
    print("ftc: starting the unsloth process (importing unsloth takes 30-40 s)", file=sys.stderr, flush=True)
    # Ctrl-C reaches both processes; the child saves a checkpoint and stops, the parent waits for it
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.run(cmd, env=child_env(out))
    finally:
        signal.signal(signal.SIGINT, previous)
    if (out / ERROR).exists():
        e = json.loads((out / ERROR).read_text())
        raise FtcError(e["code"], file=e["file"], path=e["path"], **e["fields"])
    if proc.returncode != 0:
        raise FtcError("FTC703", returncode=proc.returncode)
    return json.loads((out / "run.json").read_text())


def main(argv: list[str]) -> int:
    """The child: import unsloth first, then the run skeleton with the unsloth setup."""
    if len(argv) != 2:
        print("usage: python -m ftc.runtime.unsloth_process REQUEST.json (started by `ftc run --backend unsloth`)", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[1]).read_text())
    out = Path(request["output_dir"])
    os.environ.update({k: v for k, v in child_env(out).items() if k not in os.environ})
    t0 = time.perf_counter()
    import unsloth  # noqa: F401  (first: it patches trl, transformers and peft as they import)

    seconds = round(time.perf_counter() - t0, 1)
    print(f"ftc: unsloth imported in {seconds} s", file=sys.stderr, flush=True)
    import dataclasses

    from ftc.compiler.lock import Plan
    from ftc.runtime import backend_unsloth
    from ftc.runtime.methods import method_for
    from ftc.runtime.session import run_method

    backend_unsloth.IMPORT_SECONDS["unsloth"] = seconds
    try:
        plan = dataclasses.replace(Plan.load(request["lock"]), rebuilt=tuple(request["rebuilt"]))
        run_method(method_for(plan.method), plan, output_dir=out, resume=request["resume"], backend="unsloth",
                   backend_reason=request["backend_reason"], max_steps_override=request["max_steps_override"], world_size=1)
    except FtcError as e:
        write_error(out, e)
        return 2
    return 0


def write_error(output_dir: Path, err: FtcError) -> None:
    """The child's FtcError as the parent re-raises it: the rule's code, where, and its fields
    (a field that is not a JSON scalar travels as its str(), which is what the message shows)."""
    fields = {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in err.fields.items()}
    (Path(output_dir) / ERROR).write_text(json.dumps({"code": err.code, "file": err.file, "path": err.path, "fields": fields}))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
