"""Benchmark: FashionScenes generation, vectorised in chunks vs one scene at a time.

``cl.data.make_scenes`` builds scenes in chunks of 2048 with array operations (all items of a
size resized by one einsum, pasted by fancy indexing). The baseline is the same generator run
with ``chunk=1``, i.e. one scene at a time, the way a first version would loop; both must
produce identical images, masks and captions (checked). Writes ``bench/results/scenes.json``.

    python bench/bench_scenes.py            # 4000 scenes, 5 interleaved repeats
    python bench/bench_scenes.py --quick    # 500 scenes, 3 repeats
"""
from __future__ import annotations


import numpy as np

import course_lib as cl
from _common import interleaved, parser, write


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=None, help="scenes per run (default 4000, --quick 500)")
    args = ap.parse_args(argv)
    n = args.n or (500 if args.quick else 4000)
    repeats = args.repeats or (3 if args.quick else 5)

    cl.data.load_fashion_mnist("train")  # file reading is not what we time
    a = cl.data.make_scenes(n, "train", seed=0)
    b = cl.data.make_scenes(n, "train", seed=0, chunk=1)
    same = bool(np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks) and a.captions == b.captions)
    t = interleaved({"one_scene_at_a_time": lambda: cl.data.make_scenes(n, "train", seed=0, chunk=1),
                     "course_lib_chunked": lambda: cl.data.make_scenes(n, "train", seed=0)},
                    repeats=repeats)
    for v in t.values():
        v["scenes_per_s"] = n / v["median_s"]
    speedup = t["course_lib_chunked"]["speedup_vs_one_scene_at_a_time"]
    print(f"{n} scenes: one at a time {t['one_scene_at_a_time']['median_s']:.2f} s, chunked "
          f"{t['course_lib_chunked']['median_s']:.2f} s ({t['course_lib_chunked']['scenes_per_s']:.0f} scenes/s), "
          f"speed-up {speedup:.1f}x; identical outputs: {same}")
    write("scenes", {"what": "cl.data.make_scenes (64x64 RGB, 1-3 items, with captions)", "n_scenes": n,
                     "repeats": repeats, "identical_outputs": same, "timings": t, "speedup": speedup},
          args.out)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
