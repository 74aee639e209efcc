"""Compile at growing sizes: wall time and peak RSS against rows, and the recompile after a
train setting (issue 15, sections 1 and 2); and, at the first size, the throughput comparisons
of issue 15. Not a pytest file: run it by hand, it takes many minutes.

    .venv/bin/python tests/bench/stream_bench.py --rows 200000 600000 1200000 2400000 \
        [--work /tmp/ftc-stream-bench] [--out tests/bench/results/NAME.json] [--delete]

Each size is the real GB18030 medical CSV repeated into one file (the issue's setup), compiled
by `ftc compile` in a child process under /usr/bin/time -v (peak RSS is the child's
"Maximum resident set size"); the recipe is recipes/medical.json without dedup (the rows are
repeated on purpose) and with the shared Qwen2.5 tokenizer. Then the same recipe is compiled
again with only train.learning_rate changed (the reuse path, target <= 1 s). Prints a table and
the slopes (seconds and MiB per 100k rows) and writes it as JSON (``--out``, else next to the work
folder) after every step, so a run cut short keeps what it measured. ``--delete`` removes each
size's project (the 2.4M-row CSV is about 1 GB) once it is measured.

At the first size (about 199k rows), each in its own child process, timed from its start:
- ``compile_no_tokenize``: ``compile_recipe(..., tokenize=False)``, against ``article_loader``: the
  seed article's pandas ``read_csv`` (UTF-8, then GB18030) + ``iterrows`` loader from
  tests/bench/test_bench_compile.py (issue target: >= 10x);
- the cold ``ftc compile`` with tokenization against ``encode_batch_fast``: the raw Rust encode of
  the very texts compile tokenized (prompt + completion of both splits, read from its artifacts;
  one call, and in 8 chunks as ftc calls it; target: compile <= 1.3x) and against
  ``article_datasets_map``: the article's loader followed by ``datasets.map`` tokenization of its
  prompt + completion (the HF tokenizer call of tests/bench/test_bench_tokenize.py; target >= 1.8x);
- and the same three with the work compile does: ``*_prompt_too`` encode each prompt on its own as
  well as inside its joint text (compile's prompt part is ``encode_prompt`` of the prompt, as TRL's
  preparation of prompt-completion rows encodes the prompt apart).
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


# ``ftc compile`` with each stage's peak resident memory sampled (every 50 ms, /proc/self/statm),
# printed to stderr as "[stage NAME] PEAK_MIB": which stage sets the process's peak.
_STAGES = r"""
import contextlib, sys, threading, time
from ftc.compiler import progress
orig, peak = progress.Clock.stage, [0.0]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
def sample():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
@contextlib.contextmanager
def stage(self, name):
    peak[0] = rss()
    with orig(self, name):
        yield
    print(f"[stage {name}] {max(peak[0], rss()):.0f}", file=sys.stderr, flush=True)
progress.Clock.stage = stage
from ftc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def timed_compile(proj: Path, lock: str, *sets: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", _STAGES, "compile", str(proj / "recipe.json"), "-o", str(proj / lock)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"compile failed ({res.returncode}):\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    times = next((ln for ln in res.stdout.splitlines() if ln.startswith("time: ")), "")
    peaks: dict[str, int] = {}
    for name, mib in re.findall(r"^\[stage (\w+)\] (\d+)$", res.stderr, re.M):
        peaks[name] = max(peaks.get(name, 0), int(mib))
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss_kb / 1024), "stages": times, "stage_peak_rss_mib": peaks}


# -- the throughput comparisons (each one a child process: its imports are part of its time)

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
what, proj = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
out = {}
if what == "compile_no_tokenize":
    from pathlib import Path
    from ftc.compiler.compile import compile_recipe
    from ftc.compiler.recipe import load_recipe
    r = compile_recipe(load_recipe(Path(proj) / "notok.json"), Path(proj) / "notok.lock", tokenize=False)
    out["rows"] = sum(t.num_rows for t in r.splits.values())
elif what in ("article_loader", "article_datasets_map", "article_datasets_map_prompt_too"):
    from pathlib import Path
    import pandas as pd
    from article import article_rows  # tests/bench/article.py (sys.argv[3] is on the path)
    rows = article_rows(Path(proj))
    out["loaded_s"] = round(time.perf_counter() - t0, 2)
    if what == "article_loader":
        pd.DataFrame(rows).to_parquet(Path(proj) / "article.parquet")
    else:
        import datasets
        from transformers import AutoTokenizer
        datasets.disable_progress_bars()
        tok = AutoTokenizer.from_pretrained(sys.argv[4])
        ds = datasets.Dataset.from_list(rows)
        if what == "article_datasets_map":
            ds = ds.map(lambda b: tok([p + c for p, c in zip(b["prompt"], b["completion"])], add_special_tokens=False),
                        batched=True, remove_columns=ds.column_names, load_from_cache_file=False)
        else:  # the prompt on its own as well, as TRL's SFT preparation of prompt-completion rows encodes it
            def both(b):
                prompt = tok(b["prompt"], add_special_tokens=False)["input_ids"]
                joint = tok([p + c for p, c in zip(b["prompt"], b["completion"])], add_special_tokens=False)["input_ids"]
                return {"prompt_ids": prompt, "input_ids": joint}
            ds = ds.map(both, batched=True, remove_columns=ds.column_names, load_from_cache_file=False)
            out["prompt_tokens"] = sum(len(x) for x in ds["prompt_ids"])
        out["tokens"] = sum(len(x) for x in ds["input_ids"])
    out["rows"] = len(rows)
elif what.startswith("encode_batch_fast"):
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer
    lock = json.load(open(proj + "/plan.lock", encoding="utf-8"))
    texts = []
    for a in lock["artifacts"]["data"].values():
        t = pq.read_table(proj + "/" + a["path"], columns=["prompt", "completion"])
        texts += [p + c for p, c in zip(t.column("prompt").to_pylist(), t.column("completion").to_pylist())]
        if what.endswith("_prompt_too"):  # what compile encodes: each prompt alone too (encode_prompt)
            texts += t.column("prompt").to_pylist()
    tok = Tokenizer.from_file(sys.argv[4] + "/tokenizer.json")
    t1 = time.perf_counter()
    if what in ("encode_batch_fast", "encode_batch_fast_prompt_too"):
        out["tokens"] = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))
    else:
        step = -(-len(texts) // 8)
        out["tokens"] = sum(len(e.ids) for lo in range(0, len(texts), step)
                            for e in tok.encode_batch_fast(texts[lo:lo + step], add_special_tokens=False))
    out["encode_s"] = round(time.perf_counter() - t1, 2)
    out["rows"] = len(texts)
out["wall_s"] = round(time.perf_counter() - t0, 2)
print(json.dumps(out))
"""


def child(what: str, proj: Path) -> dict:
    """One contender in a fresh process under /usr/bin/time -v: its own report plus peak RSS."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", _CHILD, what, str(proj), str(ROOT / "tests/bench"), str(TOKENIZER)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{what} failed ({res.returncode}):\n{res.stderr.split('Command being timed')[0][-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["peak_rss_mib"] = round(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) / 1024)
    return out


def comparisons(proj: Path, cold: dict) -> dict:
    """The issue's throughput comparisons on the project ``cold`` just compiled (with tokenization)."""
    recipe = json.loads((proj / "recipe.json").read_text(encoding="utf-8"))
    recipe["model"] = {"name": "none"}  # no tokenizer: the data path alone, as test_bench_compile measures it
    (proj / "notok.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    subprocess.run(["rm", "-rf", str(proj / ".ftc")], check=True)  # a cold compile, not the cache
    got = {k: child(k, proj) for k in ("compile_no_tokenize", "article_loader", "encode_batch_fast",
                                       "encode_batch_fast_chunked", "article_datasets_map", "encode_batch_fast_prompt_too",
                                       "encode_batch_fast_chunked_prompt_too", "article_datasets_map_prompt_too")}
    got["compile_tokenize"] = {"wall_s": cold["wall_s"], "stages": cold["stages"]}
    w = {k: v["wall_s"] for k, v in got.items()}

    def per_encode(k: str) -> float:  # compile's wall against a contender's encode alone
        return round(w["compile_tokenize"] / got[k]["encode_s"], 2)

    got["ratios"] = {
        "article_loader / compile_no_tokenize (target >= 10)": round(w["article_loader"] / w["compile_no_tokenize"], 2),
        "compile_tokenize / encode_batch_fast, encode alone (target <= 1.3)": per_encode("encode_batch_fast"),
        "compile_tokenize / encode_batch_fast_chunked, encode alone": per_encode("encode_batch_fast_chunked"),
        "compile_tokenize / encode_batch_fast, its process (read the texts, load, encode)":
            round(w["compile_tokenize"] / w["encode_batch_fast"], 2),
        "article_datasets_map / compile_tokenize (target >= 1.8)": round(w["article_datasets_map"] / w["compile_tokenize"], 2),
        # the same work as compile: the prompts encoded on their own as well as inside the joint texts
        "compile_tokenize / encode_batch_fast_prompt_too, encode alone": per_encode("encode_batch_fast_prompt_too"),
        "compile_tokenize / encode_batch_fast_chunked_prompt_too, encode alone": per_encode("encode_batch_fast_chunked_prompt_too"),
        "article_datasets_map_prompt_too / compile_tokenize":
            round(w["article_datasets_map_prompt_too"] / w["compile_tokenize"], 2),
    }
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 600_000, 1_200_000, 2_400_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ftc-stream-bench"))
    ap.add_argument("--out", type=Path, default=None, help="the JSON to write (default: WORK/stream_bench.json)")
    ap.add_argument("--keep-cache", action="store_true", help="do not clear the cache before the cold compile")
    ap.add_argument("--no-compare", action="store_true", help="skip the throughput comparisons at the first size")
    ap.add_argument("--delete", action="store_true", help="delete each size's project once measured")
    args = ap.parse_args()
    out = args.out or args.work / "stream_bench.json"
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_before": _load(),
                    "commit": _commit(), "results": []}
    results = report["results"]
    for i, rows in enumerate(args.rows):
        proj = build(args.work, rows)
        if not args.keep_cache:
            subprocess.run(["rm", "-rf", str(proj / ".ftc")], check=True)
        load = _load()
        cold = timed_compile(proj, "plan.lock")
        warm = timed_compile(proj, "lr.lock", "train.learning_rate=0.0001")
        lock = json.loads((proj / "plan.lock").read_text(encoding="utf-8"))
        n = lock["sources"]["medical"]["rows"]
        results.append({"rows": n, "csv_mib": round((proj / "data/IM_内科/big.csv").stat().st_size / (1 << 20)),
                        "load_before": load, "cold": cold, "recompile_train_setting": warm})
        print(f"{n:>10,} rows  cold {cold['wall_s']:>7.1f} s  {cold['peak_rss_mib']:>6,} MiB   "
              f"recompile {warm['wall_s']:.2f} s  {warm['peak_rss_mib']:,} MiB   (load {load})", flush=True)
        print(f"            {cold['stages']}", flush=True)
        print(f"            peak RSS by stage (MiB): {cold['stage_peak_rss_mib']}", flush=True)
        if i == 0 and not args.no_compare:
            report["comparisons_at_first_size"] = comparisons(proj, cold)
            for k, v in report["comparisons_at_first_size"].items():
                print(f"            {k}: {v}", flush=True)
        if args.delete:
            subprocess.run(["rm", "-rf", str(proj)], check=True)
        _slopes(report)
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    report["load_after"] = _load()
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")


def _slopes(report: dict) -> None:
    """Least-squares time and memory per row over the sizes measured so far."""
    res = report["results"]
    if len(res) < 2:
        return
    xs = [r["rows"] for r in res]
    mx = sum(xs) / len(xs)

    def slope(ys: list[float]) -> float:
        my = sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

    per_row_s = slope([r["cold"]["wall_s"] for r in res])
    per_row_b = slope([r["cold"]["peak_rss_mib"] * (1 << 20) for r in res])
    report["slope"] = {"s_per_100k_rows": round(per_row_s * 1e5, 2), "us_per_row": round(per_row_s * 1e6, 1),
                       "bytes_per_row": round(per_row_b), "mib_per_100k_rows": round(per_row_b * 1e5 / (1 << 20), 1)}
    print(f"slope so far: {report['slope']}", flush=True)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _commit() -> str:
    res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return res.stdout.strip()


if __name__ == "__main__":
    main()
