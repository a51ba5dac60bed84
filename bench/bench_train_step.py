"""Benchmark: one training step of the course's Fashion-MNIST ViT, course_lib's way vs a naive one.

course_lib's way: ``cl.train.make_loader`` (a whole batch indexed and normalised in one tensor
operation) and the attention of ``cl.vit.fmnist_vit_config``: written out as matmul + softmax +
matmul (``attn_implementation="eager"``). Notebook 06 times a forward + backward pass both ways
(best of 10) and found eager 1.22x and 1.28x the speed in two runs on our 2-core CPU; the full
steps timed here (AdamW included, medians of interleaved runs) measured only 1.02-1.03x on the
same machine, whose speed swung by 20% between runs: a modest gain whose size depends on the
machine and how it is measured. Baseline: a per-image ``Dataset`` whose items the default
``DataLoader`` collates one by one, and transformers' default attention, the fused
``scaled_dot_product_attention`` (``"sdpa"``).
Timed separately (loading a batch; forward + backward + AdamW) and together, interleaved, on the
same images and the same initial weights; both must give the same batches and the same loss and
gradients (checked). Writes ``bench/results/train_step.json``.

    python bench/bench_train_step.py            # batch 128, 8 steps per timed run, 3 repeats
    python bench/bench_train_step.py --quick
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from transformers import ViTForImageClassification

import course_lib as cl
from _common import interleaved, parser, write


class PerImage(Dataset):
    """The textbook dataset: one normalised (1, 28, 28) float image and its label per item."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.X[i].astype(np.float32) / 255.0)[None]
        return (x - cl.train.MEAN) / cl.train.STD, int(self.y[i])


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=None, help="default 128, --quick 64")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed run (default 8, --quick 2)")
    args = ap.parse_args(argv)
    steps = args.steps or (2 if args.quick else 8)
    repeats = args.repeats or (2 if args.quick else 3)
    bs = args.batch_size or (64 if args.quick else 128)

    Xtr, ytr = cl.data.load_fashion_mnist("train")
    X, y = np.ascontiguousarray(Xtr[: bs * steps]), ytr[: bs * steps]
    fast_loader = cl.train.make_loader(X, y, batch_size=bs)
    naive_loader = DataLoader(PerImage(X, y), batch_size=bs, shuffle=False, num_workers=0)
    same_batches = all(torch.allclose(a[0], b[0], atol=1e-6) and torch.equal(a[1], b[1])
                       for a, b in zip(fast_loader, naive_loader))

    cl.config.seed_everything(0)
    fast = ViTForImageClassification(cl.vit.fmnist_vit_config()).train()     # eager attention
    naive = copy.deepcopy(fast)
    naive.set_attn_implementation("sdpa")                                      # transformers' default
    xb, yb = next(iter(fast_loader))
    losses, grads = [], []
    for m in (fast, naive):
        loss = F.cross_entropy(m(xb).logits, yb)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        m.zero_grad(set_to_none=True)
    loss_diff = abs(losses[0] - losses[1])
    grad_diff = float((grads[0] - grads[1]).abs().max())
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (fast, naive)}
    batches = list(fast_loader)

    def step(m, batch):
        opt = opts[id(m)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(batch[0]).logits, batch[1]).backward()
        opt.step()

    def steps_on(m, loader):
        for batch in loader:
            step(m, batch)

    t_load = interleaved({"naive_per_image_loader": lambda: list(naive_loader),
                          "course_lib_make_loader": lambda: list(fast_loader)}, repeats=repeats)
    t_step = interleaved({"sdpa_attention": lambda: [step(naive, b) for b in batches],
                          "eager_attention": lambda: [step(fast, b) for b in batches]}, repeats=repeats)
    t_all = interleaved({"naive": lambda: steps_on(naive, naive_loader),
                         "course_lib": lambda: steps_on(fast, fast_loader)}, repeats=repeats)
    report = {"what": f"ViT (cl.vit.fmnist_vit_config) training step, batch {bs}, {steps} steps per timed run",
              "batch_size": bs, "steps_per_run": steps, "repeats": repeats,
              "same_batches": bool(same_batches), "loss_abs_diff": loss_diff, "grad_max_abs_diff": grad_diff,
              "loading": t_load, "step": t_step, "loading_plus_step": t_all,
              "speedup": {"loading": t_load["course_lib_make_loader"]["speedup_vs_naive_per_image_loader"],
                          "step": t_step["eager_attention"]["speedup_vs_sdpa_attention"],
                          "loading_plus_step": t_all["course_lib"]["speedup_vs_naive"]},
              "images_per_s": {k: bs * steps / v["median_s"] for k, v in t_all.items()}}
    for k, v in report["speedup"].items():
        print(f"{k:18s} speed-up {v:.2f}x")
    print(f"training images/s: naive {report['images_per_s']['naive']:.0f}, "
          f"course_lib {report['images_per_s']['course_lib']:.0f}; same batches {same_batches}, "
          f"|loss diff| {loss_diff:.1e}, max |grad diff| {grad_diff:.1e}")
    write("train_step", report, args.out)
    return 0 if same_batches and loss_diff < 1e-4 and grad_diff < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
