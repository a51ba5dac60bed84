"""Tests of course_lib.efficiency (no timing assertions: only what the helpers compute)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import course_lib as cl
from course_lib import CourseError
from course_lib import efficiency as ef

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_vit(attn: str | None = None, seed: int = 0):
    from transformers import ViTForImageClassification

    torch.manual_seed(seed)
    cfg = cl.vit.fmnist_vit_config(patch_size=7, hidden_size=32, num_layers=2, num_heads=2)
    model = ViTForImageClassification(cfg).eval()
    if attn:
        model.set_attn_implementation(attn)
    return model


def mlp(width: int = 64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3)).eval()


# --------------------------------------------------------------------------- timing


def test_time_call_runs_warmup_plus_repeats_and_reports_the_median():
    calls = []
    t = ef.time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(t.times) == 5
    assert t.best <= t.median <= max(t.times) and t.spread >= 0
    assert ef.Timing([1.0, 3.0, 2.0]).median == 2.0


@pytest.mark.parametrize("kw", [dict(repeats=0), dict(warmup=-1)])
def test_time_call_rejects_bad_counts(kw):
    with pytest.raises(CourseError):
        ef.time_call(lambda: None, **kw)


def test_time_call_rejects_non_callables():
    with pytest.raises(CourseError):
        ef.time_call(3)


def test_num_threads_sets_and_restores():
    before = torch.get_num_threads()
    with ef.num_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(CourseError):
        with ef.num_threads(0):
            pass


def test_throughput_sweep_rows_are_consistent():
    seen = []
    rows = ef.throughput_sweep(lambda x: seen.append(len(x)), torch.zeros(8, 4), (1, 4), threads=(1,),
                               repeats=2, warmup=1, name="noop")
    assert [r["batch_size"] for r in rows] == [1, 4] and all(r["threads"] == 1 for r in rows)
    for r in rows:
        assert r["items_per_s"] == pytest.approx(r["batch_size"] / (r["latency_ms"] / 1e3))
        assert r["ms_per_item"] == pytest.approx(r["latency_ms"] / r["batch_size"])
    assert seen == [1] * 3 + [4] * 3  # min_time=0: one call per measurement, after one warm-up call


def test_min_time_repeats_fast_calls_and_reports_the_time_per_call(monkeypatch):
    from types import SimpleNamespace

    clock = [0.0]  # a fake clock: every call of fn takes exactly 2 ms
    monkeypatch.setattr(ef, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []

    def fn(x):
        calls.append(1)
        clock[0] += 0.002

    rows = ef.throughput_sweep(fn, torch.zeros(2, 1), (2,), repeats=3, warmup=0, min_time=0.02)
    assert len(calls) == 3 * 10  # 10 calls fill each 20 ms measurement
    assert rows[0]["latency_ms"] == pytest.approx(2.0) and rows[0]["items_per_s"] == pytest.approx(1000.0)
    rows = ef.compare_speed({"a": fn}, torch.zeros(2, 1), repeats=2, warmup=1, min_time=0.01)
    assert len(calls) == 30 + 1 + 2 * 5 and rows[0]["latency_ms"] == pytest.approx(2.0)


@pytest.mark.parametrize("sizes", [(), (0,), (16,)])
def test_throughput_sweep_rejects_bad_batch_sizes(sizes):
    with pytest.raises(CourseError):
        ef.throughput_sweep(lambda x: x, torch.zeros(8, 2), sizes)


def test_format_table():
    text = ef.format_table([{"name": "a", "x": 1.23456, "n": 3}, {"name": "bb", "x": 10.0, "n": 12}])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["name", "x", "n"]
    assert "1.235" in lines[2] and lines[3].split() == ["bb", "10", "12"]
    with pytest.raises(CourseError):
        ef.format_table([])


# --------------------------------------------------------------------------- predict functions


def test_predict_fn_batched_outputs_and_accuracy():
    m = mlp()
    X = torch.randn(50, 1, 4, 4)
    fn = ef.as_predict_fn(m)
    with torch.no_grad():
        ref = m(X).numpy()
    out = ef.batched_outputs(fn, X, batch_size=7)
    assert out.shape == (50, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    y = ref.argmax(1)
    assert ef.accuracy(fn, X, y) == 1.0
    assert ef.accuracy(fn, X, (y + 1) % 3) == 0.0
    with pytest.raises(CourseError):
        ef.accuracy(fn, X, y[:10])
    with pytest.raises(CourseError):
        ef.as_predict_fn("not a model")


def test_predict_fn_takes_transformers_outputs_and_autocast():
    m = tiny_vit()
    X = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = m(X).logits
    assert ef.max_abs_diff(ef.as_predict_fn(m)(X), ref) == 0.0
    bf = ef.as_predict_fn(m, autocast_dtype=torch.bfloat16)(X)
    assert bf.dtype == torch.float32 and bf.shape == ref.shape
    assert 0 < ef.max_abs_diff(bf, ref) < 0.5  # bf16 keeps ~3 significant digits


def test_autocast_dtypes_on_cpu():
    found = ef.autocast_dtypes("cpu")
    assert torch.bfloat16 in found and set(found) <= {torch.bfloat16, torch.float16}


def test_max_abs_diff():
    assert ef.max_abs_diff(np.array([1.0, 2.0]), torch.tensor([1.5, 2.0])) == 0.5
    with pytest.raises(CourseError):
        ef.max_abs_diff(np.zeros(2), np.zeros(3))


# --------------------------------------------------------------------------- int8


def test_quantize_int8_is_close_smaller_and_leaves_the_original():
    m = mlp(width=256)
    X = torch.randn(64, 1, 4, 4)
    with torch.no_grad():
        ref = m(X)
    w_before = m[1].weight.clone()
    q = ef.quantize_int8(m)
    assert ef.count_quantized(q) == 3 and ef.count_quantized(m) == 0
    assert torch.equal(m[1].weight, w_before) and isinstance(m[1], nn.Linear)
    out = ef.as_predict_fn(q)(X)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05
    assert ef.model_bytes(q) < 0.4 * ef.model_bytes(m)


def test_quantize_int8_skip_keeps_layers_in_float():
    q = ef.quantize_int8(mlp(), skip=("5",))
    assert ef.count_quantized(q) == 2 and isinstance(q[5], nn.Linear)


def test_quantize_int8_rejects_models_without_linears():
    with pytest.raises(CourseError):
        ef.quantize_int8(nn.Sequential(nn.ReLU()))
    with pytest.raises(CourseError):
        ef.quantize_int8(42)


def test_conv1d_to_linear_keeps_gpt2_outputs():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=2)).eval()
    ids = torch.randint(0, 40, (3, 10))
    with torch.no_grad():
        ref = gpt(ids).logits
    n = ef.conv1d_to_linear(gpt)
    assert n == 2 * 4  # per block: c_attn, attention c_proj, c_fc, mlp c_proj
    assert not any(isinstance(mod, Conv1D) for mod in gpt.modules())
    with torch.no_grad():
        assert ef.max_abs_diff(gpt(ids).logits, ref) < 1e-5
    q = ef.quantize_int8(gpt)
    assert ef.count_quantized(q) == n + 1  # + the language-model head


# --------------------------------------------------------------------------- ONNX and compile


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path):
    m = tiny_vit()
    path = ef.export_onnx(m, torch.randn(2, 1, 28, 28), tmp_path / "vit.onnx")
    fn = ef.onnx_predict_fn(path, threads=1)
    X = torch.randn(5, 1, 28, 28)  # another batch size than the export's
    out = fn(X)
    assert out.shape == (5, 10) and out.dtype == torch.float32
    assert ef.max_abs_diff(out, ef.as_predict_fn(m)(X)) <= 1e-4
    # worker threads sleep between calls unless asked to spin (they would starve the next timing)
    options = fn.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spin = ef.onnx_predict_fn(path, threads=1, spinning=True).session.get_session_options()
    with pytest.raises(RuntimeError):  # not set: onnxruntime's own default (spinning) applies
        spin.get_session_config_entry("session.intra_op.allow_spinning")


def test_onnx_bad_input(tmp_path):
    with pytest.raises(CourseError):
        ef.onnx_predict_fn(tmp_path / "missing.onnx")
    with pytest.raises(CourseError):
        ef.export_onnx(mlp(), torch.zeros(2, 16, dtype=torch.long), tmp_path / "x.onnx")


def test_try_compile_reports_failures_instead_of_raising():
    bad = ef.try_compile(mlp(), torch.randn(2, 1, 4, 4), backend="no_such_backend")
    assert not bad.ok and bad.fn is None and bad.error and bad.seconds >= 0


def test_try_compile_eager_backend_matches():
    m = mlp()
    X = torch.randn(4, 1, 4, 4)
    res = ef.try_compile(m, X, backend="eager")
    assert res.ok and res.error is None
    assert ef.max_abs_diff(res.fn(X), ef.as_predict_fn(m)(X)) < 1e-6


# --------------------------------------------------------------------------- FLOPs, MFU, memory


def test_vit_flops_matches_the_flop_counter_with_eager_attention():
    m = tiny_vit(attn="eager")
    X = torch.randn(3, 1, 28, 28)
    counted = ef.count_flops(lambda: m(X))
    assert counted == ef.vit_flops(m.config, batch_size=3)


def test_vit_flops_formula_by_hand():
    cfg = cl.vit.fmnist_vit_config(patch_size=7, hidden_size=32, num_layers=2, num_heads=2)
    n, d, m = 17, 32, 64
    embed = 2 * 16 * 49 * d
    layer = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * m
    assert ef.vit_flops(cfg, 2) == 2 * (embed + 2 * layer + 2 * d * 10)
    with pytest.raises(CourseError):
        ef.vit_flops(object())


def test_matmul_peak_and_mfu():
    peak = ef.matmul_peak(128, device="cpu", repeats=2)
    assert np.isfinite(peak) and peak > 0
    assert ef.mfu(1e6, 10.0, 1e8) == pytest.approx(0.1)
    with pytest.raises(CourseError):
        ef.mfu(0, 1, 1)
    with pytest.raises(CourseError):
        ef.matmul_peak(8)


def test_measure_mfu_is_consistent():
    m = mlp()
    X = torch.randn(32, 1, 4, 4)
    flops = ef.count_flops(lambda: m(X[:1]))
    assert flops == 2 * (16 * 64 + 64 * 64 + 64 * 3)
    r = ef.measure_mfu(ef.as_predict_fn(m), X, flops, n=64, repeats=2)
    assert r["achieved_flops"] == pytest.approx(flops * r["items_per_s"])
    assert r["mfu"] == pytest.approx(r["achieved_flops"] / r["peak_flops"]) and r["mfu"] > 0
    with pytest.raises(CourseError):
        ef.measure_mfu(ef.as_predict_fn(m), X, flops, n=4)


def test_peak_activation_bytes_counts_live_tensors():
    def f():
        a = torch.ones(1000)           # 4000 bytes
        b = a * 2                      # 4000 more: 8000 live
        del a
        c = b + 1                      # a was freed: still 8000 at most
        return c

    assert ef.peak_activation_bytes(f) == 8000
    m = tiny_vit()
    small = ef.peak_activation_bytes(lambda: ef.as_predict_fn(m)(torch.randn(4, 1, 28, 28)))
    big = ef.peak_activation_bytes(lambda: ef.as_predict_fn(m)(torch.randn(64, 1, 28, 28)))
    assert 8 < big / small < 24  # activations grow about linearly with the batch


# --------------------------------------------------------------------------- pruning


def test_prune_linear_hits_the_asked_sparsity_and_spares_the_classifier():
    m = tiny_vit()
    p = ef.prune_linear(m, 0.5)
    assert ef.sparsity(m) == 0.0
    assert ef.sparsity(p) == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(p.classifier.weight, m.classifier.weight)
    assert not any(n.endswith("_orig") for n, _ in p.named_parameters())  # pruning made permanent
    assert ef.sparsity(ef.prune_linear(m, 0.0)) == 0.0


@pytest.mark.parametrize("amount", [-0.1, 1.0])
def test_prune_linear_rejects_bad_amounts(amount):
    with pytest.raises(CourseError):
        ef.prune_linear(mlp(), amount)


def test_sparsity_needs_linears():
    with pytest.raises(CourseError):
        ef.sparsity(nn.Sequential(nn.ReLU()))


def test_compare_speed_interleaves_and_uses_the_first_as_baseline():
    order = []
    fns = {"a": lambda x: order.append("a"), "b": lambda x: order.append("b")}
    rows = ef.compare_speed(fns, torch.zeros(4, 2), repeats=3, warmup=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]  # 1 warm-up + 3 timed turns, order rotating
    assert [r["name"] for r in rows] == ["a", "b"] and rows[0]["speedup"] == pytest.approx(1.0)
    for r in rows:
        assert r["batch_size"] == 4 and r["items_per_s"] == pytest.approx(4 / (r["latency_ms"] / 1e3))
    order.clear()
    fns["c"] = lambda x: order.append("c")
    ef.compare_speed(fns, torch.zeros(4, 2), repeats=2, warmup=1)
    assert order == list("abc") + list("bca") + list("cab")  # nobody always follows the same neighbour
    order.clear()
    ef.compare_speed(fns, torch.zeros(4, 2), repeats=1, warmup=1, rotate=False)
    assert order == list("abc") * 2
    with pytest.raises(CourseError):
        ef.compare_speed({}, torch.zeros(4, 2))
    with pytest.raises(CourseError):
        ef.compare_speed(fns, torch.zeros(0, 2))
