"""Compile at growing sizes: wall time and peak RSS against rows, and the recompile after a
train setting (issue 15, sections 1 and 2). Not a pytest file: run it by hand, it takes minutes.

    .venv/bin/python tests/bench/stream_bench.py --rows 200000 600000 1200000 2400000 [--work /tmp/ftc-stream-bench]

Each size is the real GB18030 medical CSV repeated into one file (the issue's setup), compiled
by `ftc compile` in a child process under /usr/bin/time -v (peak RSS is the child's
"Maximum resident set size"); the recipe is recipes/medical.json without dedup (the rows are
repeated on purpose) and with the shared Qwen2.5 tokenizer. Then the same recipe is compiled
again with only train.learning_rate changed (the reuse path, target <= 1 s). Prints a table and
the slopes (seconds and MiB per 100k rows) and writes it as JSON next to the work folder.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SRC = SHARED / "data/medical/IM_内科/内科5000-6000_part1.csv"
TOKENIZER = SHARED / "tokenizers/qwen2.5-bpe"


def build(work: Path, rows: int) -> Path:
    """A project folder with one CSV of about ``rows`` rows and the bench recipe."""
    proj = work / f"rows-{rows}"
    csv = proj / "data" / "IM_内科" / "big.csv"
    raw = SRC.read_bytes()
    header, _, body = raw.partition(b"\n")
    per = body.count(b"\n")
    repeat = max(1, round(rows / per))
    if not csv.exists() or csv.stat().st_size != len(header) + 1 + len(body) * repeat:
        csv.parent.mkdir(parents=True, exist_ok=True)
        with open(csv, "wb") as f:
            f.write(header + b"\n")
            for _ in range(repeat):
                f.write(body)
    recipe = json.loads((ROOT / "recipes" / "medical.json").read_text(encoding="utf-8"))
    recipe.pop("$schema", None)
    recipe["sources"]["medical"]["path"] = "data"
    recipe["transforms"] = [{"strip": True}, {"drop_empty": ["input", "output"]}]
    # a template file must lie inside the project (FTC156): a copy beside the recipe
    (proj / "medical.jinja").write_text((ROOT / "templates" / "medical.jinja").read_text(encoding="utf-8"), encoding="utf-8")
    recipe["template"]["prompt"] = {"file": "medical.jinja"}
    recipe["model"]["tokenizer"] = str(TOKENIZER)
    (proj / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    return proj


def timed_compile(proj: Path, lock: str, *sets: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ftc", "compile", str(proj / "recipe.json"), "-o", str(proj / lock)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"compile failed ({res.returncode}):\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    times = next((ln for ln in res.stdout.splitlines() if ln.startswith("time: ")), "")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss_kb / 1024), "stages": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 600_000, 1_200_000, 2_400_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ftc-stream-bench"))
    ap.add_argument("--keep-cache", action="store_true", help="do not clear the cache before the cold compile")
    args = ap.parse_args()
    results = []
    for rows in args.rows:
        proj = build(args.work, rows)
        if not args.keep_cache:
            subprocess.run(["rm", "-rf", str(proj / ".ftc")], check=True)
        cold = timed_compile(proj, "plan.lock")
        warm = timed_compile(proj, "lr.lock", "train.learning_rate=0.0001")
        lock = json.loads((proj / "plan.lock").read_text(encoding="utf-8"))
        n = lock["sources"]["medical"]["rows"]
        results.append({"rows": n, "csv_mib": round((proj / "data/IM_内科/big.csv").stat().st_size / (1 << 20)),
                        "cold": cold, "recompile_train_setting": warm})
        print(f"{n:>10,} rows  cold {cold['wall_s']:>7.1f} s  {cold['peak_rss_mib']:>6,} MiB   "
              f"recompile {warm['wall_s']:.2f} s  {warm['peak_rss_mib']:,} MiB", flush=True)
        print(f"            {cold['stages']}", flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        per = (b["rows"] - a["rows"]) / 100_000
        print(f"slope: {(b['cold']['wall_s'] - a['cold']['wall_s']) / per:.1f} s and "
              f"{(b['cold']['peak_rss_mib'] - a['cold']['peak_rss_mib']) / per:.0f} MiB per 100k rows")
    out = args.work / "stream_bench.json"
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
