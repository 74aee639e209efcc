"""The README's example outputs, made by running ftc: `python tests/readme_examples.py` rewrites them.

Each example in README.md sits between `<!-- example:NAME -->` and `<!-- /example:NAME -->` as a
```text block: the command as a person types it from the repository root, then what ftc printed.
The commands run for real (the medical recipe on ../shared, a bad CSV in a scratch folder); only
the scratch folder's path is written back as the name the README uses. tests/test_readme.py runs
the same commands and fails when the README no longer shows what ftc prints.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOKENIZER = "../shared/tokenizers/qwen2.5-bpe"
BLOCK = re.compile(r"<!-- example:(?P<name>[a-z]+) -->\n```text\n(?P<body>.*?)```\n<!-- /example:(?P=name) -->", re.S)


def _ftc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftc", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def generate(scratch: Path) -> dict[str, str]:
    """{example name: the block's text}, from real runs; `scratch` holds the locks and the bad CSV."""
    old, new = scratch / "plan.lock", scratch / "new.lock"
    out: dict[str, str] = {}

    shown = f"ftc compile recipes/medical.json -o plan.lock --set model.tokenizer={TOKENIZER}"
    done = _ftc(["compile", "recipes/medical.json", "-o", str(old), "--set", f"model.tokenizer={TOKENIZER}"], ROOT)
    out["compile"] = _steady(f"$ {shown}\n{done.stdout}".replace(str(old), "plan.lock"))

    _ftc(["compile", "recipes/medical.json", "-o", str(new), "-q", "--set", f"model.tokenizer={TOKENIZER}",
          "--set", "train.learning_rate=0.00015"], ROOT)
    done = _ftc(["diff", str(old), str(new)], ROOT)
    out["diff"] = f"$ ftc diff plan.lock new.lock\n{done.stdout}".replace(str(old), "plan.lock").replace(str(new), "new.lock")

    bad = scratch / "bad"
    (bad / "data").mkdir(parents=True, exist_ok=True)
    (bad / "data" / "d.csv").write_text("questoin,answer\nWhat is 2+2?,4\n", encoding="utf-8")
    recipe = {"name": "bad", "sources": {"s": {"path": "data/d.csv", "columns": {"q": ["question", "问题"], "a": "answer"}}},
              "template": {"format": "prompt_completion", "prompt": "{{ q }}", "completion": "{{ a }}"},
              "model": {"name": "tiny", "tokenizer": str(ROOT / "recipes" / "demo" / "tokenizer")}}
    (bad / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    done = _ftc(["compile", "recipe.json", "-o", "plan.lock"], bad)
    out["error"] = f"$ ftc compile recipe.json -o plan.lock\n{done.stderr}"
    return out


def _steady(text: str) -> str:
    """The summary's stage times vary run to run, and whether the cache gave stages back depends on
    what was compiled before: the README shows the line's shape, not one run's seconds."""
    text = re.sub(r"(?m)^reused from the cache.*\n", "", text)
    return re.sub(r"(?m)^time: .*$", "time: read …s, normalize …s, split …s, render …s, write …s, tokenize …s, pack …s "
                  "(seconds per stage, of this run)", text)


def blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def rewrite(text: str, examples: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        body = examples.get(m["name"], m["body"])
        return f"<!-- example:{m['name']} -->\n```text\n{body.rstrip()}\n```\n<!-- /example:{m['name']} -->"

    return BLOCK.sub(one, text)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        examples = generate(Path(scratch))
    README.write_text(rewrite(README.read_text(encoding="utf-8"), examples), encoding="utf-8")
    print(f"rewrote {', '.join(sorted(examples))} in {README}")


if __name__ == "__main__":
    main()
