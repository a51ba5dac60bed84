"""Making a model cheaper and measuring it honestly: timing, latency and throughput, autocast,
dynamic int8 quantisation, ONNX export, ``torch.compile``, FLOPs and MFU, memory, pruning.

Introduced in notebook 12 (also used by ``bench/``). The pattern in the notebook::

    predict = cl.efficiency.as_predict_fn(model)               # batch (B, C, H, W) -> logits
    rows = cl.efficiency.throughput_sweep(predict, X, batch_sizes=(1, 16, 128))
    print(cl.efficiency.format_table(rows))
    q = cl.efficiency.quantize_int8(model)                      # a quantised copy (CPU)

Every timing is a *median of repeats* after warm-up, because on a shared laptop or CI
machine single timings are noisy. Timings synchronise CUDA before reading the clock.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import config
from .config import CourseError
from .train import check_batch, logits, resolve_device

PredictFn = Callable[[torch.Tensor], Any]


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall times (seconds) of repeated calls. ``median`` is the number to report; ``spread``
    is the interquartile range relative to the median (large = noisy machine)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def best(self) -> float:
        return float(min(self.times))

    @property
    def spread(self) -> float:
        if len(self.times) < 4:
            return float((max(self.times) - min(self.times)) / self.median) if self.median > 0 else 0.0
        q = np.percentile(self.times, [25, 75])
        return float((q[1] - q[0]) / self.median) if self.median > 0 else 0.0


def _sync(device: torch.device | str | None) -> None:
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev is not None and dev.type == "mps":
        torch.mps.synchronize()


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed; returns a :class:`Timing`.

    ``device``: synchronise this device (cuda / mps) around each call so queued GPU work is
    counted. Introduced in notebook 12.
    """
    if not callable(fn):
        raise CourseError(f"time_call: expected a function of no arguments, got {type(fn).__name__}")
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise CourseError(f"time_call: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(times)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave as is), then restore.

    Yields the thread count in effect. Introduced in notebook 12.
    """
    old = torch.get_num_threads()
    if n is not None:
        if not isinstance(n, int) or n < 1:
            raise CourseError(f"num_threads: expected a positive int, got {n!r}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def as_predict_fn(model: nn.Module, *, device: torch.device | str | None = None,
                  autocast_dtype: torch.dtype | None = None) -> PredictFn:
    """Wrap a classifier as ``predict(X) -> logits``: eval mode, ``torch.inference_mode``,
    optional autocast to ``autocast_dtype`` (e.g. ``torch.bfloat16``).

    ``X``: float32 (B, C, H, W) on any device (moved to ``device``, default: the model's).
    Returns float32 logits (B, num_classes) on that device. Introduced in notebook 12.
    """
    if not isinstance(model, nn.Module):
        raise CourseError(f"as_predict_fn: expected an nn.Module, got {type(model).__name__}")
    model.eval()
    if device is None:
        p = next(iter(model.parameters()), None)
        dev = p.device if p is not None and not p.is_quantized else torch.device("cpu")
    else:
        dev = torch.device(device)

    def predict(X: torch.Tensor) -> torch.Tensor:
        X = torch.as_tensor(X).to(dev)
        with torch.inference_mode():
            ctx = (torch.autocast(device_type=dev.type, dtype=autocast_dtype)
                   if autocast_dtype is not None else contextlib.nullcontext())
            with ctx:
                out = logits(model(X))
        return out.float()

    predict.device = dev  # type: ignore[attr-defined]
    return predict


def batched_outputs(fn: PredictFn, X: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``fn`` applied to ``X`` in batches, concatenated: float32 array (N, ...).

    ``X``: (N, C, H, W) float32 tensor or array. Introduced in notebook 12.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CourseError(f"batch_size must be a positive int, got {batch_size!r}")
    X = torch.as_tensor(X)
    if len(X) == 0:
        raise CourseError("batched_outputs: got 0 inputs")
    outs = []
    for start in range(0, len(X), batch_size):
        out = fn(X[start:start + batch_size])
        outs.append(out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out))
    return np.concatenate(outs).astype(np.float32, copy=False)


def accuracy(fn: PredictFn, X: torch.Tensor | np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of ``argmax(fn(X)) == y``, in [0, 1]. ``y``: (N,) int class ids. Introduced in notebook 12."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise CourseError(f"accuracy: y must be (N,) with N = len(X) = {len(X)}, got shape {y.shape}")
    return float((batched_outputs(fn, X, batch_size).argmax(1) == y).mean())


def _timed_calls(fn: PredictFn, X: Any, min_time: float, device: Any) -> float:
    """Seconds per call of ``fn(X)``: calls it until ``min_time`` seconds have passed (at least once)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn(X)
        n += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n


def throughput_sweep(fn: PredictFn, X: torch.Tensor, batch_sizes: Sequence[int], *,
                     threads: Sequence[int | None] = (None,), repeats: int = 5, warmup: int = 1,
                     min_time: float = 0.0, name: str = "") -> list[dict[str, Any]]:
    """Latency and throughput of ``fn`` on batches ``X[:b]`` for every batch size and thread count.

    ``X``: a pool of inputs (N, ...) with N >= max(batch_sizes). Each timed measurement calls
    ``fn`` until ``min_time`` seconds have passed (at least once) and takes the time per call,
    so that very fast calls are not lost in timer noise, at a bounded cost. Returns one row per
    (threads, batch size): ``name``, ``threads``, ``batch_size``, ``latency_ms`` (median
    time for one batch), ``ms_per_item``, ``items_per_s`` (= batch_size / latency),
    ``spread`` (IQR / median). Introduced in notebook 12.
    """
    X = torch.as_tensor(X)
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise CourseError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    if max(batch_sizes) > len(X):
        raise CourseError(f"the input pool has {len(X)} items but the largest batch size is "
                          f"{max(batch_sizes)}; pass more inputs or smaller batch sizes")
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise CourseError(f"throughput_sweep: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = getattr(fn, "device", None)
    rows = []
    for n in threads:
        with num_threads(n) as used:
            for b in batch_sizes:
                xb = X[:b]
                for _ in range(warmup):
                    fn(xb)
                t = Timing([_timed_calls(fn, xb, min_time, device) for _ in range(repeats)])
                lat = t.median
                rows.append({"name": name, "threads": used, "batch_size": b, "latency_ms": 1e3 * lat,
                             "ms_per_item": 1e3 * lat / b, "items_per_s": b / lat, "spread": t.spread})
    return rows


def compare_speed(fns: dict[str, PredictFn], X: torch.Tensor, *, repeats: int = 5, warmup: int = 1,
                  min_time: float = 0.0, rotate: bool = True) -> list[dict[str, Any]]:
    """Time several predict functions on the same batch ``X``, *interleaved*.

    Each repeat runs every function once in turn (A, B, C, then B, C, A, then C, A, B, ...),
    so a burst of load from other programs hits all of them alike, then the median per
    function is taken. The turn order rotates (``rotate=True``) so that no function always
    runs right after the same neighbour: a runtime that leaves its worker threads busy for a
    moment after returning (onnxruntime's spinning threads, see :func:`onnx_predict_fn`)
    would otherwise slow down whichever function follows it, every time. ``fns``: name ->
    ``fn(X)``; the first entry is the baseline. Each turn calls ``fn(X)`` until ``min_time``
    seconds have passed (at least once). Returns one row per function: ``name``,
    ``batch_size``, ``latency_ms`` (per batch), ``items_per_s``, ``speedup`` (baseline
    latency / this latency, > 1 is faster), ``spread``. Introduced in notebook 12.
    """
    if not fns:
        raise CourseError("compare_speed: give at least one function, e.g. {'fp32': predict}")
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise CourseError(f"compare_speed: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    X = torch.as_tensor(X)
    b = len(X)
    if b == 0:
        raise CourseError("compare_speed: X is an empty batch")
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(warmup + repeats):
        k = i % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            fn = fns[name]
            per_call = _timed_calls(fn, X, min_time if i >= warmup else 0.0, getattr(fn, "device", None))
            if i >= warmup:
                times[name].append(per_call)
    base = statistics.median(next(iter(times.values())))
    rows = []
    for name, ts in times.items():
        t = Timing(ts)
        rows.append({"name": name, "batch_size": b, "latency_ms": 1e3 * t.median, "items_per_s": b / t.median,
                     "speedup": base / t.median, "spread": t.spread})
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                 digits: int = 4) -> str:
    """A plain-text table of a list of dicts (all rows share the keys), numbers to ``digits``
    significant figures. Introduced in notebook 12."""
    if not rows:
        raise CourseError("format_table: no rows")
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.{digits}g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- reduced precision


def autocast_dtypes(device: torch.device | str | None = None) -> list[torch.dtype]:
    """The reduced-precision dtypes (``bfloat16``, ``float16``) that ``torch.autocast`` runs
    on ``device`` here, found by trying a tiny matmul. Support is not speed: a CPU without
    bf16 instructions emulates it (slower than float32). Introduced in notebook 12.
    """
    dev = torch.device(device) if device is not None else config.device()
    found = []
    for dt in (torch.bfloat16, torch.float16):
        try:
            a = torch.randn(8, 8, device=dev)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.autocast(device_type=dev.type, dtype=dt):
                    out = a @ a
            if out.dtype == dt:
                found.append(dt)
        except (RuntimeError, TypeError, AssertionError):
            continue
    return found


# --------------------------------------------------------------------------- int8


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers ``Conv1D`` (GPT-2's projections; weight stored (in, out))
    by an equivalent ``nn.Linear`` (weight (out, in)), in place, so that Linear-based tools
    (dynamic quantisation, pruning) see them. Returns how many were replaced.
    Introduced in notebook 12.
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return 0
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, Conv1D):
            lin = nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(child.weight.t())
                if child.bias is not None:
                    lin.bias.copy_(child.bias)
            lin.to(child.weight.device)
            setattr(model, name, lin)
            count += 1
        else:
            count += conv1d_to_linear(child)
    return count


def quantize_int8(model: nn.Module, *, skip: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (and GPT-2 ``Conv1D``) dynamically
    quantised to int8: weights stored as int8 with one scale per tensor, activations
    quantised on the fly per batch. Runs on the CPU only.

    ``skip``: names of submodules (as in ``named_modules``) to keep in float, e.g. a small
    classifier head. Uses ``torch.ao.quantization.quantize_dynamic``, which torch 2.13
    still ships but marks deprecated in favour of the separate ``torchao`` package; its
    warnings are silenced here. The original model is left unchanged.
    Introduced in notebook 12.
    """
    if not isinstance(model, nn.Module):
        raise CourseError(f"quantize_int8: expected an nn.Module, got {type(model).__name__}")
    from torch.ao.quantization import quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    else:
        raise CourseError(f"no int8 CPU engine in this torch build (supported: {engines})")
    q = copy.deepcopy(model).to("cpu").eval()
    conv1d_to_linear(q)
    names = {n for n, m in q.named_modules() if isinstance(m, nn.Linear) and n not in skip
             and not any(n.startswith(s + ".") for s in skip)}
    if not names:
        raise CourseError("quantize_int8: the model has no nn.Linear layer to quantise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(q, names, dtype=torch.qint8)
    return q


def count_quantized(model: nn.Module) -> int:
    """Number of dynamically quantised linear layers in ``model``. Introduced in notebook 12."""
    return sum("DynamicQuantizedLinear" in type(m).__name__ or type(m).__module__.startswith(
        "torch.ao.nn.quantized.dynamic") for m in model.modules())


def model_bytes(model: nn.Module) -> int:
    """Size in bytes of ``model``'s serialised ``state_dict`` (what a checkpoint costs on disk).

    Introduced in notebook 12.
    """
    if not isinstance(model, nn.Module):
        raise CourseError(f"model_bytes: expected an nn.Module, got {type(model).__name__}")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


# --------------------------------------------------------------------------- ONNX


class _LogitsOnly(nn.Module):
    """Wrap a model so that ``forward(x)`` returns a plain logits tensor (what ONNX needs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.model(x))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = 17) -> Path:
    """Export a classifier to ONNX with a dynamic batch dimension; returns the file's path.

    ``example``: one float32 input batch (B, C, H, W) used to trace the graph. The graph
    has input ``pixel_values`` and output ``logits`` (B, num_classes). Uses torch's
    TorchScript-based exporter (``dynamo=False``): the newer dynamo exporter needs the
    ``onnxscript`` package, which the course does not install. The file is checked with
    ``onnx.checker``. Introduced in notebook 12.
    """
    if not isinstance(model, nn.Module):
        raise CourseError(f"export_onnx: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or not example.is_floating_point():
        raise CourseError("export_onnx: example must be a float tensor batch, e.g. X[:8]")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _LogitsOnly(copy.deepcopy(model).to("cpu").eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example.cpu(),), str(path), input_names=["pixel_values"],
                          output_names=["logits"], opset_version=opset,
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    onnx.checker.check_model(str(path))
    return path


def onnx_predict_fn(path: str | Path, *, threads: int | None = None, spinning: bool = False) -> PredictFn:
    """An onnxruntime CPU session as ``predict(X) -> logits``: X float32 (B, C, H, W) tensor or
    array; returns a float32 torch tensor (B, num_classes). ``threads``: intra-op threads
    (default: onnxruntime's choice, one per core).

    ``spinning=False`` (the default here, not onnxruntime's) sets the session options
    ``session.intra_op.allow_spinning`` and ``session.inter_op.allow_spinning`` to ``"0"``: by
    default onnxruntime's worker threads keep spinning on the cores for a while after each
    call, waiting for the next one, which starves whatever runs next in the same process (a
    PyTorch model timed right after it ran at a third of its speed in notebook 12). With
    spinning off, the threads sleep as soon as a call returns; a server that runs only
    onnxruntime may keep spinning on to save the wake-up time. Introduced in notebook 12.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise CourseError(f"no ONNX file at {config.display_path(path)}; create it with export_onnx")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict(X: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        return torch.from_numpy(sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    predict.device = torch.device("cpu")  # type: ignore[attr-defined]
    predict.session = sess  # type: ignore[attr-defined]
    return predict


def max_abs_diff(a: Any, b: Any) -> float:
    """``max |a - b|`` of two same-shape arrays or tensors, as a float. Introduced in notebook 12."""
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    b = b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise CourseError(f"max_abs_diff: shapes differ, {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


# --------------------------------------------------------------------------- torch.compile


@dataclass
class CompileResult:
    """What :func:`try_compile` got: ``fn`` (the compiled predict function, ``None`` on
    failure), ``seconds`` (wall time of the first call, which compiles), ``error``
    (one line saying why it failed, or ``None``)."""

    fn: PredictFn | None
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.fn is not None


def try_compile(model: nn.Module, example: torch.Tensor, **compile_kwargs: Any) -> CompileResult:
    """``torch.compile`` a classifier and run it once on ``example`` (which compiles it).

    Never raises on a compiler failure (a missing C compiler, an unsupported op, ...): the
    reason comes back in ``error``. ``compile_kwargs`` go to ``torch.compile`` (e.g.
    ``backend="inductor"``, ``dynamic=False``). Introduced in notebook 12.
    """
    if not isinstance(model, nn.Module):
        raise CourseError(f"try_compile: expected an nn.Module, got {type(model).__name__}")
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(model, **compile_kwargs)
        fn = as_predict_fn(compiled, device=example.device)
        fn(example)
        _sync(example.device)
    except Exception as e:  # noqa: BLE001 - any compiler error is reported, not raised
        msg = str(e).strip().splitlines()
        return CompileResult(None, time.perf_counter() - t0,
                             f"{type(e).__name__}: {msg[0] if msg else ''}"[:300])
    return CompileResult(fn, time.perf_counter() - t0)


# --------------------------------------------------------------------------- FLOPs and MFU


def vit_flops(cfg: Any, batch_size: int = 1) -> int:
    """Analytic forward FLOPs of a transformers ViT classifier for ``batch_size`` images.

    Counts matrix multiplications only (2 FLOPs per multiply-add): the patch embedding,
    per layer the q/k/v and output projections, the two attention products (scores and
    weighted values) and the MLP, plus the classifier on the class token. Layer norms,
    softmax, GELU and additions are a few percent more and are left out, as is usual.
    ``cfg``: a ``ViTConfig``. Introduced in notebook 12.
    """
    try:
        img, p, c = int(cfg.image_size), int(cfg.patch_size), int(cfg.num_channels)
        d, L, m = int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.intermediate_size)
        classes = int(cfg.num_labels)
    except AttributeError as e:
        raise CourseError(f"vit_flops: expected a ViTConfig, got {type(cfg).__name__} ({e})") from None
    patches = (img // p) ** 2
    n = patches + 1
    embed = 2 * patches * (c * p * p) * d
    per_layer = 2 * n * d * (3 * d) + 2 * n * n * d * 2 + 2 * n * d * d + 2 * n * d * m * 2
    return int(batch_size) * (embed + L * per_layer + 2 * d * classes)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products and convolutions that ``fn()`` runs, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add). Introduced in notebook 12."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(n: int = 1024, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                repeats: int = 5) -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matrix product (2 n^3 FLOPs): a practical
    peak for this device, thread setting and dtype (median of ``repeats``).

    Introduced in notebook 12.
    """
    if not isinstance(n, int) or n < 16:
        raise CourseError(f"matmul_peak: n must be an int >= 16, got {n!r}")
    dev = torch.device(device) if device is not None else config.device()
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    t = time_call(lambda: torch.mm(a, b), repeats=repeats, warmup=1, device=dev)
    return 2.0 * n ** 3 / t.median


def measure_mfu(fn: PredictFn, X: torch.Tensor, flops_per_item: float, *, n: int = 1024,
                repeats: int = 5) -> dict[str, float]:
    """Model FLOPs utilisation of ``fn`` on the batch ``X``, measured fairly.

    The model (``fn(X)``) and an ``n x n`` float32 matrix product (the practical peak, on the
    same device as ``fn``) are timed *interleaved*, so both see the same machine load; a peak
    measured at a quiet moment and a throughput measured at a busy one (or the reverse)
    would give a meaningless ratio. Returns ``items_per_s``, ``achieved_flops`` (FLOP/s),
    ``peak_flops`` (FLOP/s) and ``mfu`` (their ratio). Introduced in notebook 12.
    """
    if not isinstance(n, int) or n < 16:
        raise CourseError(f"measure_mfu: n must be an int >= 16, got {n!r}")
    X = torch.as_tensor(X)
    dev = getattr(fn, "device", None) or torch.device("cpu")
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    rows = compare_speed({"model": fn, "matmul": lambda _: torch.mm(a, b)}, X, repeats=repeats)
    items_per_s = rows[0]["items_per_s"]
    peak = 2.0 * n ** 3 / (rows[1]["latency_ms"] / 1e3)
    achieved = float(flops_per_item) * items_per_s
    return {"items_per_s": items_per_s, "achieved_flops": achieved, "peak_flops": peak,
            "mfu": mfu(flops_per_item, items_per_s, peak)}


def mfu(flops_per_item: float, items_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (``flops_per_item * items_per_s``) over the
    peak, a fraction in [0, ~1]. Introduced in notebook 12."""
    if min(flops_per_item, items_per_s, peak_flops_per_s) <= 0:
        raise CourseError("mfu: FLOPs, throughput and peak must all be positive")
    return float(flops_per_item * items_per_s / peak_flops_per_s)


# --------------------------------------------------------------------------- memory


class _LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts bytes of tensor storages created inside the mode while they are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._seen:
            return
        nbytes = int(st.nbytes())
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, key, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_quantized and t.layout == torch.strided:
                try:
                    self._track(t)
                except (RuntimeError, TypeError, NotImplementedError):
                    pass
        return out


def peak_activation_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes held by tensors *created* while ``fn()`` runs (activations, gradients,
    temporaries; not the weights that already existed). Works the same on every device:
    it watches tensor allocations through a dispatch mode, so it needs no allocator
    statistics. Introduced in notebook 12.
    """
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return int(tracker.peak)


# --------------------------------------------------------------------------- pruning


def _prunable(model: nn.Module, exclude: Sequence[str]) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(n == e or n.startswith(e + ".") for e in exclude)]


def prune_linear(model: nn.Module, amount: float, *, exclude: Sequence[str] = ("classifier",)) -> nn.Module:
    """A copy of ``model`` with the fraction ``amount`` (in [0, 1)) of its ``nn.Linear``
    weights with the smallest magnitude set to zero, chosen globally over all layers
    (``torch.nn.utils.prune.global_unstructured`` with L1), made permanent.

    ``exclude``: names of submodules to leave whole (by default a ViT's ``classifier``).
    Unstructured zeros make the model no smaller or faster with dense kernels; they are
    the first step of sparse or structured pruning. Introduced in notebook 12.
    """
    if not 0.0 <= float(amount) < 1.0:
        raise CourseError(f"prune_linear: amount must be in [0, 1), got {amount}")
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    params = _prunable(pruned, exclude)
    if not params:
        raise CourseError("prune_linear: no nn.Linear layer left to prune (check exclude=)")
    if amount > 0:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(amount))
        for m, name in params:
            prune.remove(m, name)
    return pruned


def sparsity(model: nn.Module, *, exclude: Sequence[str] = ("classifier",)) -> float:
    """Fraction of exactly-zero weights over the ``nn.Linear`` layers of ``model`` (in [0, 1]).

    Introduced in notebook 12.
    """
    params = _prunable(model, exclude)
    if not params:
        raise CourseError("sparsity: the model has no nn.Linear layer (check exclude=)")
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    return zeros / total


# --------------------------------------------------------------------------- throughput on the CPU


@torch.no_grad()
def throughput(model: nn.Module, X: torch.Tensor, *, repeats: int = 3, device: Any = None,
               train: bool = False) -> float:
    """Measured images per second of ``model`` on the batch ``X`` (float (B, C, H, W)).

    Inference (``train=False``, eval mode, no grad) by default; ``train=True`` times a
    forward + backward pass with gradients. One warm-up pass, then the best of ``repeats``.
    Introduced in notebook 06.
    """
    check_batch(X, "throughput")
    dev = resolve_device(model, device)
    model.to(dev)
    X = X.to(dev)
    best = math.inf
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        if train:
            model.train()
            with torch.enable_grad():
                logits(model(X)).float().logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            model(X)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    model.eval()
    return X.shape[0] / best


def pick_num_threads(model: nn.Module, X: torch.Tensor, candidates: Sequence[int] | None = None,
                     repeats: int = 2) -> int:
    """Time a training step of ``model`` on the batch ``X`` with each CPU thread count, keep the fastest.

    ``candidates`` defaults to ``(1, torch.get_num_threads())``. On a laptop of its own more
    threads are faster; on a machine shared with other busy programs, threads that wait for
    each other can make a step many times slower than one thread. The winner is set with
    ``torch.set_num_threads`` and returned. CPU only (on a GPU it returns the current count
    without timing). Introduced in notebook 06.
    """
    check_batch(X, "pick_num_threads")
    current = torch.get_num_threads()
    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    if dev.type != "cpu":
        return current
    cands = sorted(set(candidates or (1, current)))
    if not cands or any(not isinstance(c, (int, np.integer)) or c < 1 for c in cands):
        raise CourseError(f"pick_num_threads: candidates must be positive ints, got {candidates!r}")
    speed = {}
    for n in cands:
        torch.set_num_threads(int(n))
        speed[n] = throughput(model, X, repeats=repeats, train=True, device="cpu")
    best = max(speed, key=speed.get)
    torch.set_num_threads(int(best))
    return int(best)
