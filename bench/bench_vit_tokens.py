"""Benchmark: notebook 06's ViT recipe with plain vs shifted patch tokens, edge channels, float32 vs bf16, over seeds.

Notebook 06 trains one model, with shifted patch tokenisation and edge channels
(``fmnist_vit_config(shifted_patches=True, edge_channels=True)``: the image, four copies moved
half a patch along the diagonals and the image's ``|gx|`` and ``|gy|``, as seven input channels)
and weight decay 0.2. Whether those choices help is a claim, so this script checks it the way
the notebook trains: the same split (54,000 training / 6,000 validation images, split with seed
0), mirror augmentation, AdamW with warm-up + cosine, label smoothing 0.1, batch 128, lr 2e-3,
the same number of epochs, best validation epoch kept. It trains each variant with each seed
and reports the test accuracy of every run, single view and averaged with the mirror image
(flip test-time augmentation), plus the training throughput.

Variants (weight decay 0.05 unless said):

- ``plain``: one channel, plain 7x7 patches;
- ``shifted``: shifted patch tokens (5 channels), notebook 06's recipe before the edge channels;
- ``shifted-bf16``: the same under bf16 autocast (``fit(amp=True)``), to see what the lower
  precision costs at the same number of epochs (notebook 12, section 3, quotes the result:
  on our CPU a bf16 step was 1.2-1.5x faster, but the accuracy did not gain from it, so
  notebook 06 trains in float32);
- ``shifted-edges``: notebook 06's recipe now: shifted patches + the two edge channels, weight decay 0.2.

- ``shifted-edges-wd0.05``: shifted patches + the two edge channels at weight decay 0.05, so that
  each step from one variant to the next changes one factor (plain -> shifted -> + edges -> wd 0.2).

``--variants`` picks which to run; the first two are compared seed by seed. Every run stores its
validation accuracy per epoch and at the kept epoch; the variant is *chosen on validation*
(mean over seeds of the kept epoch's validation accuracy). Test accuracies are printed and stored
beside it, labelled as not used for choosing; the chosen variant's test accuracy is the headline.
``--from`` trains nothing: it combines stored result files and writes the choice to
``bench/results/vit_tokens_selection.json``.

Runs go to ``--jobs`` worker processes with one torch thread each (on a 2-core CPU two such
processes train faster together than one process with two threads). Writes
``bench/results/vit_tokens.json`` (``vit_tokens_12epochs.json`` holds a run with ``--epochs 12``,
``vit_bf16.json`` one with ``--variants shifted shifted-bf16``, ``vit_edges.json`` one with
``--variants shifted shifted-edges --seeds 0 1 2``; ``vit_edge_magnitude.json`` is the same
command run with an earlier version of ``shifted-edges`` that added one channel, the gradient
magnitude ``sqrt(gx**2 + gy**2)``, instead of ``|gx|`` and ``|gy|``).
Not part of ``bench/run.py``: the full run took 13 minutes on 2 cores (15 with 12 epochs).

    python bench/bench_vit_tokens.py                    # plain vs shifted x seeds 0, 1, 10 epochs
    python bench/bench_vit_tokens.py --variants shifted shifted-edges --seeds 0 1 2 --out bench/results/vit_edges.json
    python bench/bench_vit_tokens.py --variants shifted-edges-wd0.05 --seeds 0 1 --out bench/results/vit_edges_wd005.json
    python bench/bench_vit_tokens.py --from             # choose on validation from the stored runs
    python bench/bench_vit_tokens.py --quick            # 2,000 images, 1 epoch: checks the plumbing
"""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from _common import parser, write

VARIANTS = {"plain": {"shifted": False}, "shifted": {"shifted": True},
            "shifted-bf16": {"shifted": True, "amp": True},
            "shifted-edges-wd0.05": {"shifted": True, "edges": True},
            "shifted-edges": {"shifted": True, "edges": True, "weight_decay": 0.2}}
# Stored runs that --from combines by default (one factor changes from one row to the next).
STORED = ["vit_tokens.json", "vit_edges_wd005.json", "vit_edges_wd005_seed2.json", "vit_edges.json"]


def best_val(run: dict) -> float:
    """Validation accuracy of the epoch whose weights were kept (the one used for choosing)."""
    return run.get("best_val_acc", run["val_acc"][run["best_epoch"] - 1])


def choose(runs: list[dict], variants: list[str]) -> dict:
    """Mean validation accuracy per variant and the variant with the highest one.

    Test accuracies are reported for every variant but labelled as not used for choosing:
    the choice reads validation only, and the test score of the chosen variant is the headline.
    """
    table = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        if not mine:
            continue
        vals = [best_val(r) for r in mine]
        table[v] = {"seeds": [r["seed"] for r in mine], "best_val_acc": vals,
                    "val_mean": statistics.mean(vals),
                    "val_std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                    "test_acc_not_used_for_choosing": [r["test_acc"] for r in mine],
                    "test_mean_not_used_for_choosing": statistics.mean(r["test_acc"] for r in mine),
                    "best_epochs": [r["best_epoch"] for r in mine], "epochs_run": [r["epochs_run"] for r in mine]}
    chosen = max(table, key=lambda v: table[v]["val_mean"])
    return {"chosen_on_validation": chosen, "chosen_test_mean": table[chosen]["test_mean_not_used_for_choosing"],
            "by_variant": table}


def print_choice(sel: dict) -> None:
    print(f"{'variant':22s} {'val (kept epoch), mean +- std':>30s} | test, not used for choosing")
    for v, t in sel["by_variant"].items():
        print(f"{v:22s} {t['val_mean']:.4f} +- {t['val_std']:.4f} over seeds {t['seeds']} | "
              f"{t['test_mean_not_used_for_choosing']:.4f}")
    print(f"chosen on validation: {sel['chosen_on_validation']}; its test accuracy (the headline): "
          f"{sel['chosen_test_mean']:.4f}")


def train_one(variant: str, seed: int, n_train: int, num_epochs: int) -> dict:
    """Train notebook 06's recipe once; return the test accuracies and timings."""
    import torch

    torch.set_num_threads(1)
    from transformers import ViTForImageClassification

    import course_lib as cl

    X_all, y_all = cl.data.load_fashion_mnist("train")
    X_test, y_test = cl.data.load_fashion_mnist("test")
    perm = np.random.default_rng(0).permutation(len(X_all))
    val_idx, train_idx = perm[:6_000], perm[6_000:6_000 + n_train]
    v = VARIANTS[variant]
    cfg = cl.vit.fmnist_vit_config(shifted_patches=v["shifted"], edge_channels=v.get("edges", False))
    to_tokens = cl.vit.input_transform(cfg)
    augment = cl.train.compose(cl.train.augmentation(padding=0, flip=True), to_tokens)
    train_loader = cl.train.make_loader(X_all[train_idx], y_all[train_idx], batch_size=128, shuffle=True,
                                        transform=augment, seed=seed)
    val_loader = cl.train.make_loader(X_all[val_idx], y_all[val_idx], batch_size=1000, transform=to_tokens)
    cl.config.seed_everything(seed)
    model = ViTForImageClassification(cfg)
    h = cl.train.fit(model, train_loader, val_loader, num_epochs=num_epochs, lr=2e-3,
                     weight_decay=v.get("weight_decay", 0.05), warmup_frac=0.05, label_smoothing=0.1,
                     patience=3, progress=False, amp=v.get("amp", False))
    logits = cl.train.predict(model, cl.train.make_loader(X_test, batch_size=1000, transform=to_tokens))
    mirror = cl.train.predict(model, cl.train.make_loader(X_test[:, :, ::-1], batch_size=1000, transform=to_tokens))
    return {"variant": variant, "seed": seed, "weight_decay": v.get("weight_decay", 0.05),
            "epochs_run": h.num_epochs, "best_epoch": h.best_epoch + 1,
            "val_acc": [round(v, 4) for v in h.val_acc], "best_val_acc": round(h.val_acc[h.best_epoch], 4),
            "test_acc": float((logits.argmax(1) == y_test).mean()),
            "test_acc_mirror_averaged": float(((logits + mirror).argmax(1) == y_test).mean()),
            "train_seconds": round(h.train_seconds, 1), "images_per_second": round(h.images_per_second)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=None, help="default 10 (notebook 06), --quick 1")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes, one torch thread each")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["plain", "shifted"],
                    help="which variants to train; the first two are compared seed by seed")
    ap.add_argument("--from", dest="stored", nargs="*", default=None,
                    help="train nothing: combine the runs of these stored result files (default: "
                         + ", ".join(STORED) + ") and choose a variant on validation")
    args = ap.parse_args(argv)
    if args.stored is not None:
        import json
        from _common import RESULTS

        runs, seen, sources = [], set(), args.stored or STORED
        for name in sources:   # a run stored in two files (same variant and seed) counts once
            for r in json.loads((RESULTS / name).read_text())["runs"]:
                if r["variant"] in ("plain", "shifted", "shifted-edges-wd0.05", "shifted-edges") \
                        and (r["variant"], r["seed"]) not in seen:
                    seen.add((r["variant"], r["seed"]))
                    runs.append(r)
        order = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
        sel = choose(runs, order)
        print_choice(sel)
        write("vit_tokens_selection", {"what": "notebook 06's recipe chosen on validation from stored runs",
                                       "sources": sources, **sel}, args.out)
        return 0
    epochs = args.epochs or (1 if args.quick else 10)
    n_train = 2_000 if args.quick else 54_000
    variants = list(dict.fromkeys(args.variants))
    jobs = [(v, s) for s in args.seeds for v in variants]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(train_one, v, s, n_train, epochs) for v, s in jobs]
        runs = []
        for f in futures:
            runs.append(f.result())
            r = runs[-1]
            print(f"{r['variant']:8s} seed {r['seed']}: val {r['best_val_acc']:.4f} (epoch {r['best_epoch']}); "
                  f"test (not used for choosing) {r['test_acc']:.4f}, mirror-averaged "
                  f"{r['test_acc_mirror_averaged']:.4f} ({r['train_seconds']:.0f} s, {r['images_per_second']} img/s)",
                  flush=True)
    summary = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        summary[v] = {k: statistics.mean(r[k] for r in mine) for k in ("test_acc", "test_acc_mirror_averaged")}
    by_seed = {s: {r["variant"]: best_val(r) for r in runs if r["seed"] == s} for s in args.seeds}
    report = {"what": "notebook 06's ViT recipe: " + " vs ".join(variants),
              "n_train": n_train, "epochs": epochs, "seeds": args.seeds, "jobs": args.jobs,
              "runs": runs, "mean": summary, "wall_seconds": round(time.perf_counter() - t0, 1)}
    for v, m in summary.items():
        print(f"mean {v:8s}: test {m['test_acc']:.4f}, mirror-averaged {m['test_acc_mirror_averaged']:.4f}")
    if len(variants) >= 2:
        a, b = variants[:2]
        wins = sum(d[b] > d[a] for d in by_seed.values())
        report[f"{b}_better_on_validation_on_seeds"] = f"{wins}/{len(by_seed)}"
        print(f"{b} beats {a} on validation on {wins} of {len(by_seed)} seeds")
    report["selection"] = choose(runs, variants)
    print_choice(report["selection"])
    write("vit_tokens", report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
