"""The README shows what ftc prints: its compile summary, diff and error examples are rerun and compared.

When this fails because the output changed on purpose, regenerate them: `python tests/readme_examples.py`.
"""

from __future__ import annotations

import pytest

from conftest import SHARED
from readme_examples import README, blocks, generate, rewrite


@pytest.mark.skipif(not (SHARED / "data" / "medical").is_dir(), reason=f"needs the medical data under {SHARED}")
def test_the_readme_examples_are_what_ftc_prints(tmp_path):
    text = README.read_text(encoding="utf-8")
    shown = blocks(text)
    assert set(shown) == {"compile", "diff", "error"}
    examples = generate(tmp_path)
    assert "splits: train 3,554 rows, eval 69 rows" in examples["compile"]  # the runs did run
    assert "train.learning_rate: 0.0002 → 0.00015" in examples["diff"] and "error[FTC203]" in examples["error"]
    assert rewrite(text, examples) == text, "README examples differ from ftc's output: run python tests/readme_examples.py"
