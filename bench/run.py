"""Run every benchmark in bench/, one after another, and collect their JSON in bench/results/.

    python bench/run.py               # all benchmarks, full size (several minutes on 2 cores)
    python bench/run.py --quick       # small sizes, about a minute
    python bench/run.py --only scenes caption
    python bench/run.py --threads 1   # one thread each: steadier on a machine shared with other jobs

Each benchmark runs in its own process (so one cannot warm the caches of another), times
course_lib's hot path against its naive baseline in the same run, checks that both compute the
same thing, and writes ``bench/results/<name>.json``; this script adds
``bench/results/summary.json`` with each one's headline speed-up. Benchmarks are not tests:
a slow machine fails nothing. Timings on a shared machine are noisy: compare medians, and
look at the recorded load average.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (script, extra arguments for --quick, how to read the headline speed-up from its JSON)
BENCHMARKS = {
    "features": ("bench_features.py", ["--n", "500", "--no-full"], lambda r: r["speedup"]["total"]),
    "scenes": ("bench_scenes.py", ["--quick"], lambda r: r["speedup"]),
    "train_step": ("bench_train_step.py", ["--quick"], lambda r: r["speedup"]["loading_plus_step"]),
    "caption": ("bench_caption.py", ["--quick"], lambda r: r["speedup"]),
    # its "speed-up": how many times faster the rules answer than the LoRA reader
    "llm_qa": ("bench_llm_qa.py", ["--quick"],
               lambda r: r["methods"]["lora"]["ms_per_answer_batch1"] / r["methods"]["rules"]["ms_per_answer_batch1"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch / BLAS in every benchmark (OMP_NUM_THREADS); default: all cores")
    args = ap.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "COURSE_HEADLESS": "1"}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   OPENBLAS_NUM_THREADS=str(args.threads))
    summary: dict[str, dict] = {}
    failed = []
    for name in names:
        script, quick_args, headline = BENCHMARKS[name]
        out = RESULTS / f"{name}.json"
        cmd = [sys.executable, str(HERE / script), "--out", str(out)] + (quick_args if args.quick else [])
        print(f"== {name}: {script}{' (quick)' if args.quick else ''}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=HERE)
        secs = time.perf_counter() - t0
        entry: dict = {"exit_code": proc.returncode, "wall_seconds": round(secs, 1), "quick": args.quick,
                       "threads": args.threads or "default"}
        if out.exists() and out.stat().st_mtime >= time.time() - secs - 1:
            entry["speedup"] = headline(json.loads(out.read_text(encoding="utf-8")))
            entry["result_file"] = f"bench/results/{out.name}"
        if proc.returncode != 0:
            failed.append(name)
        summary[name] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print("\nbenchmark      speed-up   wall (s)  exit")
    for name, e in summary.items():
        sp = f"{e['speedup']:.2f}x" if "speedup" in e else "-"
        print(f"{name:12s} {sp:>10s} {e['wall_seconds']:10.1f}  {e['exit_code']}")
    print("wrote bench/results/summary.json")
    if failed:
        print(f"benchmarks whose outputs disagreed or that crashed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
