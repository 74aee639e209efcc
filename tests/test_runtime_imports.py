"""The CLI imports the runtime modules to wire its commands; that must not pull in torch,
transformers, TRL, PEFT, datasets or matplotlib (seconds of start-up for `ftc --help`)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "matplotlib")


def test_runtime_modules_import_without_the_training_stack():
    code = (
        "import sys\n"
        "import ftc.runtime.sft, ftc.runtime.infer, ftc.runtime.export, ftc.runtime.evaluate\n"
        "import ftc.runtime.report, ftc.runtime.metrics, ftc.runtime.model, ftc.runtime.data, ftc.runtime.fixtures\n"
        "import ftc.runtime.grpo, ftc.runtime.run, ftc.runtime.verify, ftc.runtime.launch, ftc.runtime.rewards_trl\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
