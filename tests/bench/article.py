"""The seed article's loader, the baseline of the compile benchmarks (test_bench_compile.py,
stream_bench.py): pandas `read_csv` with a UTF-8 -> GB18030 fallback, then `iterrows` and its
prompt. Kept free of pytest, since stream_bench times it in a fresh process, imports included."""

from __future__ import annotations

from pathlib import Path

PROMPT = "你是一个专业的医疗助手。请根据患者的问题提供专业、准确的回答。\n\n### 问题:\n{}\n\n### 回答:\n"


def article_rows(project: Path) -> list[dict]:
    """Every (prompt, completion, department) row of project/data/*/*.csv, as the article builds them."""
    import pandas as pd

    rows = []
    for csv in sorted((project / "data").glob("*/*.csv")):
        department = csv.parent.name.split("_", 1)[1]
        for enc in ("utf-8", "gb18030"):
            try:
                df = pd.read_csv(csv, encoding=enc)
                break
            except UnicodeDecodeError:
                continue
        for _, row in df.iterrows():
            try:
                q = str(row["ask"]).strip()
                a = str(row["answer"]).strip()
                if not q or not a or q == "nan" or a == "nan":
                    continue
                rows.append({"prompt": PROMPT.format(q), "completion": a, "department": department})
            except Exception:
                continue
    return rows
