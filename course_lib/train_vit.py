"""The course's Fashion-MNIST ViT training as a script that runs unchanged on one process or many.

Introduced in notebook 12. The same command line works three ways::

    python -m course_lib.train_vit --n-train 1024 --epochs 2 --out ckpt --summary run.json
    torchrun --nproc-per-node 2 -m course_lib.train_vit --n-train 1024 --epochs 2 --out ckpt ...
    accelerate launch --multi_gpu --num_processes 2 -m course_lib.train_vit ...   # CPU too

Launchers start one process per worker and tell each its place through environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
When they are present the script joins a process group (``gloo`` on the CPU, ``nccl`` on
GPUs), wraps the model in ``DistributedDataParallel`` (which averages gradients across
processes after every backward pass) and gives each process its own share of every
batch. Rank 0 alone writes the checkpoint (``save_pretrained``) and a JSON summary.

Data-parallel training with the *same global batch* is the same computation as on one
process: process ``r`` of ``W`` takes items ``r, r + W, ...`` of each global batch of the
shared shuffled order, computes the mean loss of its ``B / W`` items, and averaging the
gradients gives the gradient of the mean over all ``B``. So a 1-process and a 2-process
run agree up to floating-point summation order (tests/test_train_vit.py checks it).
Training itself is :func:`course_lib.train.fit`, the course's one loop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from . import config
from .config import CourseError

SUMMARY_VERSION = 1


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` in [0, world_size), ``local_rank`` on its machine,
    ``world_size`` processes in all, ``backend`` (``gloo`` / ``nccl``, ``None`` when alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def dist_env(environ: dict[str, str] | None = None) -> DistInfo:
    """Read ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` set by torchrun or accelerate launch.

    Without them (a plain ``python -m ...``) this is rank 0 of 1. Inconsistent values raise
    a CourseError. Introduced in notebook 12.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return DistInfo()
    try:
        rank = int(env.get("RANK", "0"))
        world = int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CourseError("RANK, LOCAL_RANK and WORLD_SIZE must be integers; start the script with "
                          "torchrun or accelerate launch, or unset them") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise CourseError(f"inconsistent launcher variables RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistInfo(rank, local, world, None)


def pick_device(info: DistInfo) -> torch.device:
    """``cuda:<local_rank>`` when GPUs exist, else the CPU (MPS cannot join a process group;
    a single process uses :func:`course_lib.config.device`). Introduced in notebook 12."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    if info.world_size > 1:
        return torch.device("cpu")
    return config.device()


def init_distributed(device: torch.device, info: DistInfo | None = None) -> DistInfo:
    """Join the process group the launcher prepared (``env://``): ``nccl`` for CUDA, ``gloo``
    otherwise. Returns the :class:`DistInfo` with its backend; alone (no launcher variables)
    it does nothing. Introduced in notebook 12.
    """
    import torch.distributed as dist

    info = info or dist_env()
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(dist.get_rank(), info.local_rank, dist.get_world_size(), backend)


class ShardedBatchSampler(Sampler):
    """This process's share of every global batch, as index tensors.

    Each epoch draws one permutation of ``range(n)`` from a generator seeded with ``seed``
    (the same on every process), cuts it into ``n // global_batch`` global batches (the
    incomplete last one is dropped so that every process takes the same number of steps)
    and yields items ``rank, rank + world_size, ...`` of each: ``global_batch // world_size``
    indices (int64). With ``world_size=1`` it is an ordinary shuffled batch sampler.
    Introduced in notebook 12.
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise CourseError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if global_batch < world_size or global_batch % world_size:
            raise CourseError(f"global batch {global_batch} must be a multiple of the {world_size} processes; "
                              f"e.g. use --batch-size {max(1, global_batch // world_size) * world_size}")
        if n < global_batch:
            raise CourseError(f"{n} training items are fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.rank, self.world_size = int(n), int(global_batch), rank, world_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.n // self.global_batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for k in range(len(self)):
            batch = order[k * self.global_batch:(k + 1) * self.global_batch]
            yield batch[self.rank::self.world_size]


def _load_data(n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, ...]:
    """A fixed random subset of Fashion-MNIST train (n_train) and test (n_val)."""
    from .data import load_fashion_mnist

    Xtr, ytr = load_fashion_mnist("train")
    Xte, yte = load_fashion_mnist("test")
    if not 1 <= n_train <= len(Xtr) or not 1 <= n_val <= len(Xte):
        raise CourseError(f"need 1 <= n_train <= {len(Xtr)} and 1 <= n_val <= {len(Xte)}, "
                          f"got {n_train}, {n_val}")
    rng = np.random.default_rng(seed)
    itr = np.sort(rng.permutation(len(Xtr))[:n_train])
    ite = np.sort(rng.permutation(len(Xte))[:n_val])
    return Xtr[itr], ytr[itr], Xte[ite], yte[ite]


def _sharded_eval(info: DistInfo):
    """An ``eval_fn`` for fit: each process scores its share of the validation set, the
    sums are all-reduced, so every process gets the same ``val_loss`` / ``val_acc``."""
    import torch.distributed as dist
    from torch.nn import functional as F

    from .train import logits as model_logits

    @torch.no_grad()
    def eval_fn(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        net = getattr(model, "module", model)  # no DDP collectives inside evaluation
        net.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for X, y in loader:
            X, y = X.to(device), y.to(device)
            logits = model_logits(net(X)).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == y).sum()
            sums[2] += y.shape[0]
        if info.distributed:
            dist.all_reduce(sums)
        return {"val_loss": float(sums[0] / sums[2]), "val_acc": float(sums[1] / sums[2])}

    return eval_fn


def _mean_over_ranks(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.distributed:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m course_lib.train_vit``. Introduced in notebook 12."""
    p = argparse.ArgumentParser(prog="python -m course_lib.train_vit", description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=8192, help="training images (a fixed random subset)")
    p.add_argument("--n-val", type=int, default=2000, help="validation images (from the test split)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch, split over the processes")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--augment", action="store_true",
                   help="random shift + flip (draws differ per process: runs then no longer match 1-process)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: cores / processes on this machine)")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint folder (default: <cache>/checkpoints/vit-fmnist-ddp-<scale>)")
    p.add_argument("--summary", type=Path, default=None, help="write the JSON summary here (rank 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train with ``args`` (see :func:`build_parser`) on this process's share; returns the summary.

    Summary keys: ``world_size``, ``backend``, ``device``, ``global_batch``, ``per_process_batch``,
    ``steps_per_epoch``, ``train_loss`` and ``val_loss`` / ``val_acc`` (per epoch, averaged over
    processes), ``final_val_acc`` (of the kept weights), ``train_seconds``, ``images_per_second``
    (all processes together), ``checkpoint`` (display path). Introduced in notebook 12.
    """
    from transformers import ViTForImageClassification

    from . import train, vit

    for name in ("n_train", "n_val", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CourseError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    info = dist_env()
    device = pick_device(info)
    info = init_distributed(device, info)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, local_world))
    if device.type == "cpu":
        torch.set_num_threads(threads)

    config.seed_everything(args.seed)
    Xtr, ytr, Xva, yva = _load_data(args.n_train, args.n_val, args.seed)
    cfg = vit.fmnist_vit_config(patch_size=args.patch, hidden_size=args.hidden, num_layers=args.layers,
                                  num_heads=args.heads)
    model = ViTForImageClassification(cfg).to(device)  # same seed, same weights on every rank
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    transform = train.augmentation(padding=2, flip=True) if args.augment else None
    ds = train.ArrayDataset(Xtr, ytr, transform=transform)
    sampler = ShardedBatchSampler(len(ds), args.batch_size, info.rank, info.world_size, seed=args.seed)
    train_loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=0)
    val_idx = np.arange(info.rank, len(Xva), info.world_size)
    val_loader = train.make_loader(Xva[val_idx], yva[val_idx], batch_size=512)

    history = train.fit(model, train_loader, val_loader, num_epochs=args.epochs, lr=args.lr,
                        eval_fn=_sharded_eval(info), device=device,
                        progress=info.is_main and not args.quiet)
    train_loss = _mean_over_ranks(history.train_loss, info, device)
    ips = _mean_over_ranks([history.images_per_second], info, device)[0] * info.world_size

    out = args.out or config.cache_dir() / "checkpoints" / f"vit-fmnist-ddp-{config.scale()}"
    summary: dict[str, Any] = {
        "version": SUMMARY_VERSION, "world_size": info.world_size, "backend": info.backend,
        "device": device.type, "threads_per_process": threads if device.type == "cpu" else None,
        "global_batch": args.batch_size, "per_process_batch": args.batch_size // info.world_size,
        "steps_per_epoch": len(sampler), "epochs": history.num_epochs, "n_train": args.n_train,
        "n_val": args.n_val, "seed": args.seed, "train_loss": train_loss,
        "val_loss": history.metrics["val_loss"], "val_acc": history.metrics["val_acc"],
        "best_epoch": history.best_epoch, "final_val_acc": history.best["val_acc"],
        "train_seconds": history.train_seconds, "images_per_second": ips,
        "checkpoint": config.display_path(out),
    }
    if info.is_main:
        net = getattr(model, "module", model)
        history.train_loss = train_loss
        train.save_checkpoint(net, out, history, extra={"train_vit": summary})
        if args.summary is not None:
            args.summary.parent.mkdir(parents=True, exist_ok=True)
            args.summary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if info.distributed:
        model = None  # the DDP wrapper holds the process group: let it go first (see _shutdown)
        _shutdown()
    return summary


def _shutdown() -> None:
    """Leave the process group cleanly.

    The order matters with gloo: gloo's worker thread releases each finished collective
    afterwards, and doing so needs Python's GIL; if the process group is torn down (which
    waits for that thread) while this thread holds the GIL, both wait for ever. So: wait
    for every process, drop the DDP wrapper (it holds the group) while the group is still
    registered (the caller does that), pause briefly *without* the GIL so the worker thread
    can finish, then destroy the group.
    """
    import gc

    import torch.distributed as dist

    dist.barrier()
    gc.collect()  # frees the dropped DDP wrapper (its reducer) while the group is still registered
    time.sleep(0.2)  # releases the GIL: gloo's thread drops its last finished work
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m course_lib.train_vit``; returns the exit code (2 on bad input).

    Introduced in notebook 12.
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the script never needs the hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in logs
    info = dist_env()
    if info.world_size == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        print("note: `accelerate launch --cpu` starts ONE process; for several CPU processes use "
              "`accelerate launch --multi_gpu --num_processes N` (gloo is picked without GPUs)", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        summary = run(args)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info.is_main:
        print(f"world_size={summary['world_size']} backend={summary['backend']} "
              f"train_loss={['%.4f' % v for v in summary['train_loss']]} "
              f"val_acc={summary['final_val_acc']:.4f} wall={time.perf_counter() - t0:.1f}s "
              f"checkpoint={summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
