"""Compile throughput on the real GB18030 medical CSV scaled to ~200k rows, against the
seed article's pandas `iterrows` loader, in the same run.

    make bench   # or: .venv/bin/python -m pytest tests/bench/test_bench_compile.py --benchmark-enable --benchmark-only

ftc's figure covers read (GB18030 decode) + column mapping + clean + dedup + render +
Parquet write; the article's covers read + loop + prompt formatting + write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from article import article_rows
from conftest import SHARED

SRC = SHARED / "data/medical/IM_内科/内科5000-6000_part1.csv"
REPEAT = 52  # 3,822 rows x 52 = 198,744 rows
pytestmark = pytest.mark.skipif(not SRC.exists(), reason=f"{SRC} is absent")

@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    raw = SRC.read_bytes()
    header, _, body = raw.partition(b"\n")
    folder = root / "data" / "IM_内科"
    folder.mkdir(parents=True)
    (folder / "big.csv").write_bytes(header + b"\n" + body * REPEAT)
    tpl = Path(__file__).resolve().parents[2] / "templates" / "medical.jinja"
    (root / "medical.jinja").write_text(tpl.read_text(encoding="utf-8"), encoding="utf-8")
    recipe = {
        "name": "bench", "model": {"name": "none"},
        "sources": {"medical": {"path": "data", "encoding": "auto",
                                "captures": "^(?P<department_en>[A-Za-z]+)_(?P<department>[^/]+)/",
                                "columns": {"input": ["question", "问题", "ask"], "output": ["answer", "回答", "response"]}}},
        # no dedup: the data is repeated on purpose, and the article's loader keeps every row too
        "transforms": [{"strip": True}, {"drop_empty": ["input", "output"]}],
        "template": {"format": "prompt_completion", "prompt": {"file": "medical.jinja"}, "completion": "{{ output }}"},
    }
    (root / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False), encoding="utf-8")
    return root


def ftc_compile(project: Path) -> int:
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe

    out = compile_recipe(load_recipe(project / "recipe.json"), project / "plan.lock", tokenize=False)
    return out.splits["train"].num_rows


def article_loader(project: Path) -> int:
    """The seed article's way: pandas with an encoding fallback, then iterrows (article.py), written to Parquet."""
    import pandas as pd

    rows = article_rows(project)
    pd.DataFrame(rows).to_parquet(project / "article.parquet")
    return len(rows)


def test_ftc_compile(benchmark, project):
    n = benchmark.pedantic(ftc_compile, args=(project,), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["rows"] = n
    assert n == 3822 * REPEAT


def test_article_iterrows_loader(benchmark, project):
    n = benchmark.pedantic(article_loader, args=(project,), rounds=2, iterations=1)
    benchmark.extra_info["rows"] = n
    assert n == 3822 * REPEAT
