"""Benchmark: course_lib's batched feature extractors vs the naive per-image skimage loop.

HOG, a uniform-LBP histogram and an intensity histogram of 28x28 Fashion-MNIST images, computed
two ways in the same process: ``course_lib.features`` on the whole stack, and the loop a
learner writes first (``skimage.feature.hog``, ``local_binary_pattern`` + ``np.bincount``,
``np.histogram``, one image at a time). Both must give the same numbers (checked). Each
extractor is timed interleaved (naive, batched, naive, ...; medians after a warm-up, see
``_common.interleaved``). Then the batched HOG + LBP + colour extraction runs once on all
70,000 images (target: at most 60 s on a 2-core CPU). Writes ``bench/results/features.json``.

    python bench/bench_features.py                     # about a minute on a 2-core laptop
    python bench/bench_features.py --n 500 --no-full   # a quick look
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

import course_lib as cl
from course_lib import features as ft
from _common import interleaved, write

HOG = {"orientations": 9, "pixels_per_cell": (4, 4), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}
LBP = {"P": 8, "R": 1.0, "method": "uniform"}
BINS = 16


def naive(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """The per-image version of one extractor: (N, 28, 28) uint8 -> (N, D) float32."""
    from skimage.feature import hog, local_binary_pattern

    if kind == "hog":
        return lambda X: np.stack([hog(x, orientations=HOG["orientations"], pixels_per_cell=HOG["pixels_per_cell"],
                                       cells_per_block=HOG["cells_per_block"], block_norm=HOG["block_norm"])
                                   for x in X]).astype(np.float32)
    if kind == "lbp":
        def lbp(X: np.ndarray) -> np.ndarray:
            out = []
            for x in X:
                codes = local_binary_pattern(x, LBP["P"], LBP["R"], LBP["method"]).astype(np.int64)
                out.append(np.bincount(codes.ravel(), minlength=LBP["P"] + 2) / codes.size)
            return np.stack(out).astype(np.float32)
        return lbp
    return lambda X: np.stack([np.histogram(x, bins=BINS, range=(0, 256))[0] / x.size for x in X]).astype(np.float32)


def batched(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """course_lib's batched version of one extractor: (N, 28, 28) uint8 -> (N, D) float32."""
    fn, params = {"hog": (ft.hog_features, HOG), "lbp": (ft.lbp_histograms, LBP),
                  "colour": (ft.colour_histograms, {"bins": BINS})}[kind]
    return lambda X: fn(X, progress=False, **params).values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images for the side-by-side timing (default 2000)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per extractor (default 3)")
    ap.add_argument("--no-full", action="store_true", help="skip the run on all 70,000 images")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    Xtr, _ = cl.data.load_fashion_mnist("train")
    Xte, _ = cl.data.load_fashion_mnist("test")
    X_all = np.concatenate([Xtr, Xte])
    X = X_all[np.random.default_rng(0).permutation(len(X_all))[:args.n]]
    kinds = ("hog", "lbp", "colour")

    diff, dims, per = {}, {}, {}
    for k in kinds:
        a, b = naive(k)(X), batched(k)(X)
        diff[k], dims[k] = float(np.abs(a - b).max()), int(b.shape[1])
        per[k] = interleaved({"naive_skimage_loop": lambda k=k: naive(k)(X),
                              "course_lib_batched": lambda k=k: batched(k)(X)}, repeats=args.repeats)
    med = {side: {k: per[k][side]["median_s"] for k in kinds} for side in ("naive_skimage_loop", "course_lib_batched")}
    total_naive, total_batched = sum(med["naive_skimage_loop"].values()), sum(med["course_lib_batched"].values())
    report: dict[str, object] = {
        "what": "HOG (9 orientations, 4x4-pixel cells, 2x2-cell blocks, L2-Hys) + uniform LBP (P=8, R=1) "
                "histogram + 16-bin intensity histogram of 28x28 Fashion-MNIST images",
        "n_images_side_by_side": int(args.n),
        "timing": f"median of {args.repeats} interleaved repeats after one warm-up, per extractor",
        "naive_seconds": {k: round(v, 4) for k, v in med["naive_skimage_loop"].items()} | {"total": round(total_naive, 4)},
        "batched_seconds": {k: round(v, 4) for k, v in med["course_lib_batched"].items()} | {"total": round(total_batched, 4)},
        "speedup": {k: round(per[k]["course_lib_batched"]["speedup_vs_naive_skimage_loop"], 2) for k in kinds}
                   | {"total": round(total_naive / total_batched, 2)},
        "max_abs_difference": diff,
        "dims": dims,
        "per_extractor": per,
    }
    print(f"{args.n} images: batched {total_batched:.2f} s, naive skimage loop {total_naive:.2f} s, "
          f"speed-up {total_naive / total_batched:.1f}x; max |difference| {max(diff.values()):.2e}")
    for k in kinds:
        print(f"  {k:7s} batched {med['course_lib_batched'][k]:7.3f} s   naive {med['naive_skimage_loop'][k]:7.3f} s   "
              f"{report['speedup'][k]:6.1f}x")
    if not args.no_full:
        t = time.perf_counter()
        F, _ = ft.extract(X_all, kinds, hog=HOG, lbp=LBP, colour={"bins": BINS}, progress=False)
        secs = time.perf_counter() - t  # one run: the time a learner waits for
        report["all_70k"] = {"seconds": round(secs, 2), "images_per_second": round(len(X_all) / secs),
                             "shape": list(F.shape), "target_seconds": 60, "met": secs <= 60}
        print(f"all {len(X_all)} images: {secs:.1f} s ({len(X_all) / secs:.0f} images/s), "
              f"features {F.shape}, target 60 s: {'met' if secs <= 60 else 'MISSED'}")
    write("features", report, args.out)
    if max(diff.values()) >= 1e-5:
        print("ERROR: batched and per-image features disagree")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
