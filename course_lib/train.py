"""The one training loop of the course: loaders, ``fit``, ``evaluate``, ``predict``.

Introduced in notebook 06 (classification); reused for alignment (09), captioning (10),
question answering (11) and efficiency (12). In a notebook::

    train_loader = cl.train.make_loader(X, y, batch_size=256, shuffle=True,
                                        transform=cl.train.augmentation(padding=2, flip=True))
    val_loader = cl.train.make_loader(X_val, y_val, batch_size=512)
    history = cl.train.fit(model, train_loader, val_loader, num_epochs=10, lr=1e-3,
                           label_smoothing=0.1, patience=3, checkpoint_dir=path)
    history.plot()

``fit`` runs AdamW with a linear warm-up then a cosine (or linear / constant) schedule,
gradient clipping, bf16 autocast where the device supports it (CUDA; off on the CPU unless
asked for), a progress bar with the live loss, per-epoch validation, early stopping, the best
weights restored at the end and, optionally, the best model saved atomically. Under
:func:`course_lib.config.seed_everything` two runs give identical histories on the CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from . import config
from .config import CourseError

#: Pixel normalisation used by :func:`make_loader`: ``(x / 255 - MEAN) / STD`` maps [0, 255] to [-1, 1].
MEAN = 0.5
STD = 0.5
SCHEDULES = ("cosine", "linear", "constant")
HISTORY_FILE = "training.json"

StepFn = Callable[[nn.Module, tuple, torch.device], torch.Tensor]
EvalFn = Callable[[nn.Module, Any, torch.device], dict]
Transform = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- data


def _images_to_float(X: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) uint8 [0, 255] / float [0, 1] -> float32 (N, C, H, W) in [0, 1]."""
    t = torch.as_tensor(np.asarray(X)) if not isinstance(X, torch.Tensor) else X
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4 and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    else:
        raise CourseError(f"{where}: expected images (N, H, W) or (N, H, W, 3), got shape {tuple(t.shape)}. "
                          "Fix: pass a stack of grey or RGB images, channels last.")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.is_floating_point():
        return t.float()
    raise CourseError(f"{where}: expected uint8 images in [0, 255] (or float in [0, 1]), got dtype {t.dtype}")


def _writable(a: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable array (a copy only when needed: torch refuses read-only memory)."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


class ArrayDataset(Dataset):
    """Images (and optional targets) held in memory, indexed a whole batch at a time.

    ``X``: (N, H, W) or (N, H, W, 3) uint8 in [0, 255] (or float32 in [0, 1]).
    ``y``: any array with first dimension N (class ids int64, token ids, vectors ...).
    ``dataset[list_of_indices]`` returns ``(X_batch,)`` or ``(X_batch, y_batch)`` with
    ``X_batch`` float32 (B, C, H, W), ``(x - MEAN) / STD`` of the [0, 1] pixels after
    ``transform``. Introduced in notebook 06.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray | None = None, transform: Transform | None = None,
                 mean: float = MEAN, std: float = STD):
        X = np.asarray(X)
        if X.ndim not in (3, 4) or (X.ndim == 4 and X.shape[-1] not in (1, 3)):
            raise CourseError(f"make_loader: expected images X of shape (N, H, W) or (N, H, W, 3), got {X.shape}. "
                              "Fix: channels last; for a single image use X[None].")
        if X.dtype == np.uint8:
            pass
        elif np.issubdtype(X.dtype, np.floating):
            if X.size and (float(X.min()) < 0.0 or float(X.max()) > 1.0):
                raise CourseError("make_loader: float images must lie in [0, 1] "
                                  f"(got [{float(X.min()):.3g}, {float(X.max()):.3g}]). "
                                  "Fix: pass uint8 images in [0, 255] or divide by 255.")
        else:
            raise CourseError(f"make_loader: expected uint8 (or float in [0, 1]) images, got dtype {X.dtype}")
        if y is not None:
            y = np.asarray(y)
            if y.shape[:1] != X.shape[:1]:
                raise CourseError(f"make_loader: X has {X.shape[0]} images but y has {y.shape[:1] or 'no'} rows; "
                                  "they must match one to one.")
            if y.dtype.kind in "iu" and y.ndim == 1:
                y = y.astype(np.int64)
        if transform is not None and not callable(transform):
            raise CourseError(f"make_loader: transform must be a callable on a batch, got {type(transform).__name__}")
        self.X = torch.from_numpy(_writable(X))
        self.y = None if y is None else torch.from_numpy(_writable(y))
        self.transform = transform
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __getitem__(self, idx: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        xb = _images_to_float(self.X[idx], "make_loader")
        if self.transform is not None:
            xb = self.transform(xb)
        xb = (xb - self.mean) / self.std
        return (xb,) if self.y is None else (xb, self.y[idx])


class BatchIndexSampler(Sampler):
    """Yields index tensors of size ``batch_size`` (last one smaller); reshuffled each epoch if ``shuffle``."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        yield from order.split(self.batch_size)


def make_loader(X: np.ndarray, y: np.ndarray | None = None, batch_size: int = 128, shuffle: bool = False,
                transform: Transform | None = None, seed: int = 0, *,
                mean: float = MEAN, std: float = STD) -> DataLoader:
    """A DataLoader over in-memory NumPy images (num_workers=0, whole batches indexed at once).

    ``X``: (N, H, W) grey or (N, H, W, 3) RGB, uint8 in [0, 255] (float32 in [0, 1] also
    accepted). ``y``: optional targets with first dimension N (class ids become int64).
    Each batch is a tuple ``(X_batch,)`` or ``(X_batch, y_batch)``: ``X_batch`` is float32
    (B, C, H, W), the pixels scaled to [0, 1], passed through ``transform`` (a function of
    a float (B, C, H, W) batch in [0, 1], e.g. :func:`augmentation`), then normalised
    ``(x - mean) / std`` (default: to [-1, 1]). ``shuffle`` draws a new order each epoch
    from a generator seeded with ``seed``. Introduced in notebook 06.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CourseError(f"batch_size must be a positive int, got {batch_size!r}")
    if std <= 0:
        raise CourseError(f"std must be positive, got {std}")
    ds = ArrayDataset(X, y, transform=transform, mean=mean, std=std)
    if len(ds) == 0:
        raise CourseError("make_loader: got 0 images; expected at least one")
    sampler = BatchIndexSampler(len(ds), int(batch_size), bool(shuffle), seed)
    return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=0)


# --------------------------------------------------------------------------- augmentation


def check_batch(X: torch.Tensor, where: str) -> None:
    if not isinstance(X, torch.Tensor) or X.ndim != 4:
        shape = tuple(X.shape) if hasattr(X, "shape") else type(X).__name__
        raise CourseError(f"{where}: expected a float tensor batch (B, C, H, W), got {shape}")


def random_crop(X: torch.Tensor, padding: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of a batch by up to ``padding`` pixels (zero padding, then a random crop).

    ``X``: float (B, C, H, W); returns the same shape and dtype. Zero is black for pixels in
    [0, 1], so apply it before normalisation (as :func:`make_loader` does). Uses torch's
    global RNG (seeded by ``seed_everything``) unless a ``generator`` is given.
    Introduced in notebook 06.
    """
    check_batch(X, "random_crop")
    if padding < 0:
        raise CourseError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0:
        return X
    B, C, H, W = X.shape
    padded = F.pad(X, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    rows = (dy[:, None] + torch.arange(H))[:, :, None]          # (B, H, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, :]          # (B, 1, W)
    b = torch.arange(B)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(X: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of a float (B, C, H, W) batch left-right with probability ``p``.

    Returns a new tensor of the same shape. Introduced in notebook 06.
    """
    check_batch(X, "random_flip")
    if not 0.0 <= p <= 1.0:
        raise CourseError(f"random_flip: p must be in [0, 1], got {p}")
    flip = torch.rand(X.shape[0], generator=generator) < p
    out = X.clone()
    out[flip] = X[flip].flip(-1)
    return out


def augmentation(padding: int = 2, flip: bool = True) -> Transform:
    """A light augmentation for :func:`make_loader`: random shift by ``padding`` px, then a
    random horizontal flip (if ``flip``). Works on float (B, C, H, W) batches in [0, 1].

    Introduced in notebook 06.
    """
    if padding < 0:
        raise CourseError(f"augmentation: padding must be >= 0, got {padding}")

    def transform(X: torch.Tensor) -> torch.Tensor:
        X = random_crop(X, padding)
        return random_flip(X) if flip else X

    return transform


def compose(*transforms: Transform | None) -> Transform:
    """One batch transform that applies ``transforms`` in order (``None`` entries are skipped),
    e.g. ``compose(augmentation(padding=0), input_transform(cfg))``. Introduced in notebook 06."""
    steps = [t for t in transforms if t is not None]
    for t in steps:
        if not callable(t):
            raise CourseError(f"compose: expected callables on a batch, got {type(t).__name__}")

    def transform(X: torch.Tensor) -> torch.Tensor:
        for t in steps:
            X = t(X)
        return X

    return transform


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch.

    ``train_loss`` (mean loss over the epoch's batches, weighted by batch size), every
    metric of ``eval_fn`` in ``metrics`` (also reachable as ``history.val_acc`` or
    ``history["val_acc"]``), ``epoch_seconds`` (training + validation wall time), ``lr``
    (learning rate at the end of the epoch); ``best_epoch`` (0-based index of the epoch whose
    weights were kept), ``train_seconds`` (wall time of the whole ``fit`` call),
    ``images_per_second`` (training throughput: images / seconds of the training passes over
    ``train_loader``, data loading and augmentation included, validation excluded),
    ``stopped_early``. Introduced in notebook 06.
    """

    train_loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    monitor: str | None = None
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    stopped_early: bool = False

    def __getattr__(self, name: str) -> list[float]:
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(f"History has no {name!r}; metrics recorded: {sorted(metrics)}")

    def __getitem__(self, name: str) -> list[float]:
        if name in ("train_loss", "epoch_seconds", "lr"):
            return getattr(self, name)
        if name not in self.metrics:
            raise CourseError(f"History has no {name!r}; expected one of "
                              f"{['train_loss', 'epoch_seconds', 'lr', *self.metrics]}")
        return self.metrics[name]

    @property
    def num_epochs(self) -> int:
        """Number of epochs run (fewer than asked when stopped early)."""
        return len(self.train_loss)

    @property
    def best(self) -> dict[str, float]:
        """The metrics of the best epoch (empty when there was no validation)."""
        if self.best_epoch < 0:
            return {}
        return {k: v[self.best_epoch] for k, v in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the per-epoch lists (metrics flattened in) and the scalars."""
        out: dict[str, Any] = {"train_loss": list(self.train_loss)}
        out.update({k: list(v) for k, v in self.metrics.items()})
        out.update(epoch_seconds=list(self.epoch_seconds), lr=list(self.lr), best_epoch=self.best_epoch,
                   monitor=self.monitor, train_seconds=self.train_seconds,
                   images_per_second=self.images_per_second, stopped_early=self.stopped_early)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        """Inverse of :meth:`to_dict` (e.g. to read a checkpoint's ``training.json``)."""
        fixed = {"train_loss", "epoch_seconds", "lr", "best_epoch", "monitor", "train_seconds",
                 "images_per_second", "stopped_early"}
        h = cls(train_loss=list(d.get("train_loss", [])), epoch_seconds=list(d.get("epoch_seconds", [])),
                lr=list(d.get("lr", [])), best_epoch=int(d.get("best_epoch", -1)), monitor=d.get("monitor"),
                train_seconds=float(d.get("train_seconds", 0.0)),
                images_per_second=float(d.get("images_per_second", 0.0)),
                stopped_early=bool(d.get("stopped_early", False)))
        h.metrics = {k: list(v) for k, v in d.items() if k not in fixed and isinstance(v, list)}
        return h

    def plot(self, figsize: tuple[float, float] = (9.0, 3.2)):
        """Loss curves (train and any ``*loss`` metric) on the left, other metrics on the right.

        The best epoch is marked by a dotted line. Returns the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        losses = {k: v for k, v in self.metrics.items() if "loss" in k}
        others = {k: v for k, v in self.metrics.items() if "loss" not in k}
        ncols = 2 if others else 1
        fig, axes = plt.subplots(1, ncols, figsize=figsize if ncols == 2 else (figsize[0] / 2, figsize[1]),
                                 squeeze=False)
        epochs = np.arange(1, self.num_epochs + 1)
        ax = axes[0, 0]
        ax.plot(epochs, self.train_loss, "o-", ms=3, label="train_loss")
        for k, v in losses.items():
            ax.plot(epochs[: len(v)], v, "o-", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        if others:
            ax2 = axes[0, 1]
            for k, v in others.items():
                ax2.plot(epochs[: len(v)], v, "o-", ms=3, label=k)
            ax2.set_xlabel("epoch")
            ax2.set_ylabel("metric")
            ax2.legend(fontsize=8)
        if self.best_epoch >= 0:
            for a in axes.flat:
                a.axvline(self.best_epoch + 1, color="grey", ls=":", lw=1)
        for a in axes.flat:
            a.grid(alpha=0.3)
            if self.num_epochs:
                a.set_xticks(epochs if self.num_epochs <= 12 else np.linspace(1, self.num_epochs, 7).round())
        fig.tight_layout()
        return fig


# --------------------------------------------------------------------------- helpers


def logits(out: Any) -> torch.Tensor:
    """The logits of a model output: ``out.logits`` (transformers), ``out[0]`` (tuple) or ``out``.

    Used by every loop that calls a model it did not build. Introduced in notebook 06.
    """
    if isinstance(out, (torch.Tensor, np.ndarray)):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise CourseError(f"the model returned {type(out).__name__}, expected a tensor of logits or an output "
                      "with .logits. Fix: pass step_fn=... / eval_fn=... that compute the loss yourself.")


def _check_batch_tuple(batch: Any, need: int, where: str) -> None:
    if not isinstance(batch, (tuple, list)) or len(batch) < need:
        got = type(batch).__name__ if not isinstance(batch, (tuple, list)) else f"a tuple of {len(batch)}"
        raise CourseError(f"{where}: expected the loader to yield tuples (X, y), got {got}. "
                          "Fix: build it with cl.train.make_loader(X, y), or pass step_fn=/eval_fn=.")


def _batch_size(batch: Any) -> int:
    items = batch if isinstance(batch, (tuple, list)) else (batch,)
    for t in items:
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            return int(t.shape[0])
        if isinstance(t, dict):
            for v in t.values():
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    return int(v.shape[0])
    return 1


def _default_step(label_smoothing: float) -> StepFn:
    def step(model: nn.Module, batch: tuple, device: torch.device) -> torch.Tensor:
        _check_batch_tuple(batch, 2, "fit")
        X, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        return F.cross_entropy(logits(model(X)).float(), y, label_smoothing=label_smoothing)

    return step


def resolve_device(model: nn.Module, device: Any) -> torch.device:
    if device is None:
        return config.device()
    return torch.device(device) if not isinstance(device, torch.device) else device


def _amp_context(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _resolve_amp(amp: bool | None, device: torch.device) -> bool:
    if amp is None:
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if amp and device.type not in ("cuda", "cpu", "mps"):
        raise CourseError(f"amp=True is not supported on device {device.type!r}; use amp=None")
    return bool(amp)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the peak learning rate at optimiser ``step`` (0-based), in [0, 1].

    Linear warm-up from ``1/(warmup_steps+1)`` to 1 over ``warmup_steps`` steps, then
    ``cosine`` decay to 0, ``linear`` decay to 0 or ``constant``. Introduced in notebook 06.
    """
    if schedule not in SCHEDULES:
        raise CourseError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weight matrices / conv kernels only.

    Biases, normalisation weights, the class token and position embeddings (1-D tensors
    or names containing ``token`` / ``position``) get no decay. Introduced in notebook 06.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "token" in name or "position" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _monitor_key(metrics: dict[str, float]) -> tuple[str | None, bool]:
    for k in metrics:
        if k.startswith("val_acc"):
            return k, True
    if "val_loss" in metrics:
        return "val_loss", False
    return None, True


def _headless() -> bool:
    return bool(os.environ.get("COURSE_NOTEBOOK") or os.environ.get("COURSE_HEADLESS") or os.environ.get("CI"))


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _show_figure(fig: Any, handle: Any = None) -> Any:
    """Display (or update) a figure in a notebook and close it so it is not shown twice."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    if handle is None:
        handle = display(fig, display_id=True)
    else:
        handle.update(fig)
    plt.close(fig)
    return handle


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, history: History | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (and its training history) to ``directory`` atomically.

    Models with ``save_pretrained`` (transformers) are saved that way, so
    ``Class.from_pretrained(directory)`` reloads them; other modules as ``model.safetensors``
    + ``model.json`` (reload with :func:`load_weights`). ``history`` goes to
    ``training.json`` (read it back with :func:`load_history`), with ``extra`` merged in.
    The folder is written under a temporary name and renamed into place, so a crash never
    leaves a half-written checkpoint. Returns the path. Introduced in notebook 06.
    """
    from .cache import write_dir_atomically

    def write(folder: Path) -> None:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder)
        else:
            from safetensors.torch import save_model

            save_model(model, str(folder / "model.safetensors"))
            (folder / "model.json").write_text(json.dumps({"class": type(model).__name__}) + "\n")
        meta = history.to_dict() if history is not None else {}
        meta.update(extra or {})
        if meta:
            (folder / HISTORY_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    return write_dir_atomically(directory, write)


def load_weights(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load weights saved by :func:`save_checkpoint` for a plain ``nn.Module`` into ``model``.

    Introduced in notebook 06.
    """
    path = Path(directory) / "model.safetensors"
    if not path.exists():
        raise CourseError(f"no model.safetensors in {config.display_path(directory)}; "
                          "expected a folder written by cl.train.save_checkpoint or fit(checkpoint_dir=...)")
    from safetensors.torch import load_model

    load_model(model, str(path))
    return model


def load_history(directory: str | os.PathLike) -> History | None:
    """The :class:`History` stored with a checkpoint (``None`` when it has none). Introduced in notebook 06."""
    path = Path(directory) / HISTORY_FILE
    if not path.exists():
        return None
    return History.from_dict(json.loads(path.read_text(encoding="utf-8")))


def checkpoint_dir(name: str) -> Path:
    """Where a lesson keeps the model it trains: ``cache_dir()/"checkpoints"/f"{name}-{scale}"``.

    One folder per profile, so a smoke run never loads a default-sized model. Introduced in
    notebook 06.
    """
    if not name or "/" in name or "\\" in name:
        raise CourseError(f"checkpoint name {name!r}: expected a plain folder name such as 'vit-fmnist'")
    return config.cache_dir() / "checkpoints" / f"{name}-{config.scale()}"


def _canonical(recipe: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(recipe, sort_keys=True))
    except TypeError as err:
        raise CourseError(f"recipe {recipe!r}: expected JSON-serialisable values (numbers, strings, "
                          f"lists, dicts) so it can be saved with the weights ({err})") from None


def saved_recipe(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``recipe`` stored in a checkpoint's ``training.json`` (``None`` when there is no
    readable one). Introduced in notebook 06."""
    try:
        recipe = json.loads((Path(directory) / HISTORY_FILE).read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None
    return recipe if isinstance(recipe, dict) else None


@dataclass
class Trained:
    """What :func:`load_or_train` returns: the model, its history, whether this run trained
    it (``False``: loaded), and the checkpoint folder."""
    model: Any
    history: History | None
    trained: bool
    directory: Path


def load_or_train(name: str, recipe: dict[str, Any], train: Callable[[], tuple[Any, History | None]],
                  load: Callable[[Path], Any], save: Callable[[Any, Path, History | None, dict], Any] | None = None,
                  retrain: bool = False) -> Trained:
    """Load the checkpoint ``name`` if it was trained with this ``recipe``, else train and save it.

    The one "load if saved, else train" of the course (the UvA DL habit). ``recipe``: a
    JSON-serialisable dict of every choice that shapes the weights (sizes, lr, epochs, seed);
    it is saved with the weights and compared on load, so changing any entry retrains instead
    of silently reusing stale weights. ``train()`` returns ``(model, history)``;
    ``load(directory)`` returns the model; ``save(model, directory, history, extra)`` defaults
    to :func:`save_checkpoint`. The folder is :func:`checkpoint_dir` ``(name)``; ``retrain``
    forces training. Introduced in notebook 06.
    """
    directory = checkpoint_dir(name)
    wanted = _canonical(recipe)
    if not retrain and directory.exists() and saved_recipe(directory) == wanted:
        return Trained(load(directory), load_history(directory), False, directory)
    model, history = train()
    (save or (lambda m, d, h, extra: save_checkpoint(m, d, h, extra=extra)))(model, directory, history,
                                                                            {"recipe": wanted})
    return Trained(model, history, True, directory)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, loader: Any, device: Any = None) -> np.ndarray:
    """Logits of every example of ``loader`` in order: float32 array (N, C).

    The loader yields tuples whose first item is the input batch (targets, if any, are
    ignored). The model is put in eval mode. Introduced in notebook 06.
    """
    dev = resolve_device(model, device)
    model.to(dev).eval()
    out = []
    for batch in loader:
        _check_batch_tuple(batch, 1, "predict")
        out.append(logits(model(batch[0].to(dev))).float().cpu())
    if not out:
        raise CourseError("predict: the loader yielded no batches")
    return torch.cat(out).numpy().astype(np.float32, copy=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: Any = None) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` (in [0, 1]) of a classifier over ``loader``.

    The loader yields ``(X, y)`` with y int64 class ids (N,). Introduced in notebook 06.
    """
    dev = resolve_device(model, device)
    model.to(dev).eval()
    total, loss_sum, correct = 0, 0.0, 0
    for batch in loader:
        _check_batch_tuple(batch, 2, "evaluate")
        X, y = batch[0].to(dev), batch[1].to(dev)
        scores = logits(model(X)).float()
        loss_sum += float(F.cross_entropy(scores, y, reduction="sum"))
        correct += int((scores.argmax(-1) == y).sum())
        total += int(y.shape[0])
    if total == 0:
        raise CourseError("evaluate: the loader yielded no examples")
    return {"loss": loss_sum / total, "accuracy": correct / total}


def _default_eval(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    m = evaluate(model, loader, device)
    return {"val_loss": m["loss"], "val_acc": m["accuracy"]}


# --------------------------------------------------------------------------- fit


def fit(model: nn.Module, train_loader: Any, val_loader: Any = None, *, num_epochs: int, lr: float,
        weight_decay: float = 0.05, warmup_frac: float = 0.05, schedule: str = "cosine",
        grad_clip: float | None = 1.0, label_smoothing: float = 0.0, amp: bool | None = None,
        patience: int | None = None, step_fn: StepFn | None = None, eval_fn: EvalFn | None = None,
        checkpoint_dir: str | os.PathLike | None = None, device: Any = None, progress: bool = True,
        live_plot: bool = False, seed: int | None = None) -> History:
    """Train ``model`` with AdamW and return its :class:`History`.

    ``train_loader`` / ``val_loader`` yield tuples. The default step takes ``(X, y)``: X float
    (B, C, H, W), y int64 (B,), computes ``model(X)`` (its ``.logits`` or the tensor itself)
    and the cross-entropy with ``label_smoothing``. ``step_fn(model, batch, device) -> loss``
    (a scalar tensor) replaces it, e.g. for captioning. After each epoch ``eval_fn(model,
    val_loader, device) -> {name: float}`` (default ``{"val_loss", "val_acc"}``) is run on
    ``val_loader``; the monitored metric is the first key starting with ``val_acc`` (higher is
    better) or else ``val_loss`` (lower is better). ``patience``: stop after that many epochs
    without improvement. The best epoch's weights are restored at the end and, with
    ``checkpoint_dir``, saved there with :func:`save_checkpoint` (no validation: the last epoch).

    Learning rate: linear warm-up over ``warmup_frac`` of all steps to ``lr``, then
    ``schedule`` (``cosine`` / ``linear`` decay to 0, or ``constant``), stepped per batch.
    Weight decay as in :func:`param_groups`; gradients clipped to norm ``grad_clip``
    (``None`` or 0: off). ``amp``: bf16 autocast; ``None`` turns it on only on CUDA with
    bf16 support. ``seed``: if given, :func:`course_lib.config.seed_everything` is called
    first. ``device``: default :func:`course_lib.config.device` (cuda > mps > cpu).
    ``live_plot``: redraw the curves after each epoch in an interactive notebook (headless
    runs draw them once at the end). ``progress``: a progress bar with the running loss and
    one line per epoch. The model is returned in eval mode. Introduced in notebook 06.
    """
    if not isinstance(model, nn.Module):
        raise CourseError(f"fit: expected a torch nn.Module, got {type(model).__name__}")
    if not isinstance(num_epochs, (int, np.integer)) or num_epochs < 1:
        raise CourseError(f"fit: num_epochs must be a positive int, got {num_epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise CourseError(f"fit: lr must be a positive number (e.g. 1e-3), got {lr!r}")
    if weight_decay < 0:
        raise CourseError(f"fit: weight_decay must be >= 0, got {weight_decay}")
    if not 0.0 <= warmup_frac < 1.0:
        raise CourseError(f"fit: warmup_frac must be in [0, 1), got {warmup_frac}")
    if schedule not in SCHEDULES:
        raise CourseError(f"fit: schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise CourseError(f"fit: label_smoothing must be in [0, 1), got {label_smoothing}")
    if patience is not None and (not isinstance(patience, (int, np.integer)) or patience < 1):
        raise CourseError(f"fit: patience must be a positive int or None, got {patience!r}")
    if patience is not None and val_loader is None:
        raise CourseError("fit: early stopping (patience=...) needs a val_loader to watch")
    try:
        steps_per_epoch = len(train_loader)
    except TypeError:
        raise CourseError("fit: train_loader must have a length (a DataLoader or a list of batches)") from None
    if steps_per_epoch == 0:
        raise CourseError("fit: train_loader yields no batches; check the data and batch_size")

    if seed is not None:
        config.seed_everything(seed)
    dev = resolve_device(model, device)
    model.to(dev)
    use_amp = _resolve_amp(amp, dev)
    step = step_fn or _default_step(label_smoothing)
    evaluate_fn = eval_fn or _default_eval

    total_steps = int(num_epochs) * steps_per_epoch
    warmup_steps = int(round(warmup_frac * total_steps))
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, schedule))

    history = History()
    best_state: dict[str, torch.Tensor] | None = None
    best_value: float | None = None
    higher_better = True
    bad_epochs = 0
    step_seconds = 0.0
    n_images = 0
    live = live_plot and _in_ipython() and not _headless()
    plot_handle = None

    from .viz import progress as progress_bar

    bar = progress_bar(total=total_steps, desc="training", unit="step", disable=not progress)
    t_start = time.perf_counter()
    try:
        for epoch in range(int(num_epochs)):
            t_epoch = time.perf_counter()
            model.train()
            loss_sum, seen = 0.0, 0
            t_loop = time.perf_counter()
            for batch in train_loader:
                optimizer.zero_grad(set_to_none=True)
                with _amp_context(use_amp, dev):
                    loss = step(model, batch, dev)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise CourseError("fit: the step must return a scalar loss tensor, got "
                                      f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
                if not torch.isfinite(loss):
                    raise CourseError(f"fit: the loss became {float(loss.detach())} at epoch {epoch + 1}. "
                                      "Fix: lower lr, keep grad_clip on, or check the inputs for NaN.")
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                scheduler.step()
                bs = _batch_size(batch)
                loss_sum += float(loss.detach()) * bs
                seen += bs
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.4f}", refresh=False)
            step_seconds += time.perf_counter() - t_loop
            history.train_loss.append(loss_sum / max(seen, 1))
            history.lr.append(float(optimizer.param_groups[0]["lr"]))
            n_images += seen

            metrics: dict[str, float] = {}
            if val_loader is not None:
                metrics = {k: float(v) for k, v in evaluate_fn(model, val_loader, dev).items()}
                model.train()
                for k, v in metrics.items():
                    history.metrics.setdefault(k, []).append(v)
                if history.monitor is None:
                    history.monitor, higher_better = _monitor_key(metrics)
            history.epoch_seconds.append(time.perf_counter() - t_epoch)

            key = history.monitor
            improved = True
            if key is not None:
                value = metrics[key]
                improved = best_value is None or (value > best_value if higher_better else value < best_value)
                if improved:
                    best_value = value
            if improved:
                history.best_epoch = epoch
                bad_epochs = 0
                if key is not None and epoch < num_epochs - 1:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                else:
                    best_state = None  # the current weights are the best
            else:
                bad_epochs += 1

            if progress:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                bar.write(f"epoch {epoch + 1}/{num_epochs}  train_loss {history.train_loss[-1]:.4f}  "
                          f"{shown}  ({history.epoch_seconds[-1]:.1f} s)")
            if live:
                plot_handle = _show_figure(history.plot(), plot_handle)
            if patience is not None and key is not None and bad_epochs >= patience:
                history.stopped_early = epoch < num_epochs - 1
                break
    finally:
        bar.close()

    if best_state is not None and history.best_epoch != history.num_epochs - 1:
        model.load_state_dict(best_state)
    model.eval()
    history.train_seconds = time.perf_counter() - t_start
    history.images_per_second = n_images / step_seconds if step_seconds > 0 else 0.0
    if progress and history.monitor is not None:
        print(f"best epoch {history.best_epoch + 1}: {history.monitor} "
              f"{history.metrics[history.monitor][history.best_epoch]:.4f}; weights restored"
              + ("  (stopped early)" if history.stopped_early else ""))
    if checkpoint_dir is not None:
        save_checkpoint(model, checkpoint_dir, history)
    if live_plot and _in_ipython() and not live:
        _show_figure(history.plot())
    return history


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``. Introduced in notebook 06."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))
