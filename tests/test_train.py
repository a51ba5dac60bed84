"""Tests of course_lib.train: loaders, augmentation, schedule, fit, evaluation, checkpoints."""
from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import course_lib as cl
from course_lib import CourseError
from course_lib import efficiency, train, vit

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- fixtures


def blobs(n: int = 400, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of tiny grey images: a bright square top-left (0) or bottom-right (1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    h = size // 2
    for i in range(n):
        if y[i] == 0:
            X[i, :h, :h] += 150
        else:
            X[i, h:, h:] += 150
    return X, y.astype(np.int64)


class TinyNet(nn.Module):
    def __init__(self, size: int = 8, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def quiet_fit(model, tl, vl=None, **kw):
    kw.setdefault("num_epochs", 3)
    kw.setdefault("lr", 1e-2)
    return train.fit(model, tl, vl, progress=False, device="cpu", **kw)


# --------------------------------------------------------------------------- loaders


def test_make_loader_grey_shapes_and_normalisation():
    X, y = blobs(70)
    loader = train.make_loader(X, y, batch_size=32)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [32, 32, 6]
    xb, yb = batches[0]
    assert xb.shape == (32, 1, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    expected = (X[:32].astype(np.float32) / 255 - train.MEAN) / train.STD
    np.testing.assert_allclose(xb[:, 0].numpy(), expected, atol=1e-6)
    assert xb.min() >= -1 and xb.max() <= 1
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), y)


def test_make_loader_rgb_no_labels():
    X = np.random.default_rng(0).integers(0, 256, (10, 6, 5, 3), dtype=np.uint8)
    (xb,) = next(iter(train.make_loader(X, batch_size=4)))
    assert xb.shape == (4, 3, 6, 5)
    np.testing.assert_allclose(xb[1, 2].numpy(), (X[1, :, :, 2] / 255 - 0.5) / 0.5, atol=1e-6)


def test_make_loader_shuffle_is_seeded_and_changes_each_epoch():
    X, y = blobs(50)
    a = train.make_loader(X, np.arange(50), batch_size=50, shuffle=True, seed=3)
    b = train.make_loader(X, np.arange(50), batch_size=50, shuffle=True, seed=3)
    a1, a2 = next(iter(a))[1], next(iter(a))[1]
    b1 = next(iter(b))[1]
    assert torch.equal(a1, b1)
    assert not torch.equal(a1, a2)
    assert sorted(a1.tolist()) == list(range(50))


@pytest.mark.parametrize("X, y, match", [
    (np.zeros((4, 8), np.uint8), None, "expected images"),
    (np.zeros((4, 8, 8, 5), np.uint8), None, "expected images"),
    (np.zeros((4, 8, 8), np.int32), None, "dtype"),
    (np.full((4, 8, 8), 3.0, np.float32), None, r"\[0, 1\]"),
    (np.zeros((4, 8, 8), np.uint8), np.zeros(5), "must match"),
])
def test_make_loader_bad_input(X, y, match):
    with pytest.raises(CourseError, match=match):
        train.make_loader(X, y)


def test_make_loader_bad_batch_size_and_empty():
    with pytest.raises(CourseError, match="batch_size"):
        train.make_loader(np.zeros((4, 8, 8), np.uint8), batch_size=0)
    with pytest.raises(CourseError, match="0 images"):
        train.make_loader(np.zeros((0, 8, 8), np.uint8))


# --------------------------------------------------------------------------- augmentation


def test_random_crop_shifts_within_padding():
    X = torch.zeros(64, 1, 9, 9)
    X[:, 0, 4, 4] = 1.0
    torch.manual_seed(0)
    out = train.random_crop(X, padding=2)
    assert out.shape == X.shape
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(64))  # the pixel stays inside
    pos = out[:, 0].flatten(1).argmax(1)
    r, c = pos // 9, pos % 9
    assert (r - 4).abs().max() <= 2 and (c - 4).abs().max() <= 2
    assert len(set(zip(r.tolist(), c.tolist()))) > 5  # really random
    assert torch.equal(train.random_crop(X, padding=0), X)


def test_random_flip_and_augmentation():
    X = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    assert torch.equal(train.random_flip(X, p=1.0), X.flip(-1))
    assert torch.equal(train.random_flip(X, p=0.0), X)
    aug = train.augmentation(padding=1, flip=True)
    assert aug(torch.rand(5, 3, 8, 8)).shape == (5, 3, 8, 8)
    with pytest.raises(CourseError):
        train.random_flip(X, p=2.0)
    with pytest.raises(CourseError, match="batch"):
        train.random_crop(torch.zeros(8, 8))


def test_shift_patches_moves_each_copy_along_its_diagonal():
    X = torch.zeros(2, 1, 9, 9)
    X[:, 0, 4, 4] = 1.0                                      # one bright pixel in the middle
    out = vit.shift_patches(X, 2)
    assert out.shape == (2, 5, 9, 9) and out.dtype == X.dtype
    assert torch.equal(out[:, :1], X)                        # channel 0 is the image itself
    for k, (dy, dx) in enumerate(vit.SHIFT_DIRECTIONS, start=1):
        (r, c), = (out[0, k] == 1).nonzero().tolist()
        assert (r, c) == (4 + 2 * dy, 4 + 2 * dx)            # moved 2 px along its diagonal
    edge = torch.ones(1, 1, 6, 6)
    moved = vit.shift_patches(edge, 1)
    assert float(moved[0, 1:].sum()) == 4 * 25               # what moves out is gone, black comes in
    assert torch.equal(vit.shift_patches(X, 0), X)
    with pytest.raises(CourseError, match="shift"):
        vit.shift_patches(X, -1)
    with pytest.raises(CourseError, match="smaller than the image"):
        vit.shift_patches(X, 9)


def test_compose_applies_in_order_and_skips_none():
    X = torch.ones(2, 1, 4, 4)
    f = train.compose(lambda b: b * 2, None, lambda b: b + 1)
    assert torch.equal(f(X), X * 3)
    assert torch.equal(train.compose()(X), X)
    with pytest.raises(CourseError, match="callables"):
        train.compose(3)


def test_shifted_patch_config_round_trips_with_its_transform(tmp_path):
    from transformers import ViTForImageClassification

    cfg = vit.fmnist_vit_config(hidden_size=32, num_layers=1, num_heads=2, shifted_patches=True)
    assert (cfg.num_channels, cfg.patch_shift) == (5, 3)
    assert vit.input_transform(vit.fmnist_vit_config()) is None       # plain: 1 channel, nothing to do
    model = ViTForImageClassification(cfg)
    model.save_pretrained(tmp_path / "vit")
    again = ViTForImageClassification.from_pretrained(tmp_path / "vit")
    assert again.config.patch_shift == 3                     # the shift travels with the checkpoint
    X = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    xb, = next(iter(train.make_loader(X, batch_size=4, transform=vit.input_transform(again))))
    assert xb.shape == (4, 5, 28, 28)
    assert torch.allclose(again.eval()(xb).logits, model.eval()(xb).logits, atol=1e-6)
    bad = vit.fmnist_vit_config(shifted_patches=True)
    bad.num_channels = 1
    with pytest.raises(CourseError, match="num_channels"):
        vit.input_transform(bad)


def test_abs_gradients_read_a_sharp_step_as_one_in_its_direction():
    X = torch.zeros(1, 1, 6, 6)
    X[..., 3:] = 1.0                                          # black left half, white right half: a vertical edge
    g = vit.abs_gradients(X)[0]
    assert g.shape == (2, 6, 6)                               # |gx|, |gy|
    assert torch.equal(g[0, :, 2:4], torch.ones(6, 2))        # |gx|: the two columns either side of the step
    assert g[0, :, [0, 1, 4, 5]].abs().sum() == 0             # flat regions, and no gx in the border columns
    assert g[1].abs().sum() == 0                              # |gy|: nothing changes down the columns
    Xt = X.transpose(-1, -2)                                  # the same step, horizontal
    assert torch.equal(vit.abs_gradients(Xt)[0].flip(0), g.transpose(-1, -2))
    assert torch.equal(vit.abs_gradients(1 - X)[0], g)      # white-to-black reads the same: absolute values
    assert vit.abs_gradients(torch.rand(2, 3, 8, 8)).shape == (2, 6, 8, 8)
    with pytest.raises(CourseError, match="abs_gradients"):
        vit.abs_gradients(torch.zeros(6, 6))


def test_edge_channels_config_round_trips_with_its_transform(tmp_path):
    from transformers import ViTForImageClassification

    cfg = vit.fmnist_vit_config(hidden_size=32, num_layers=1, num_heads=2, shifted_patches=True, edge_channels=True)
    assert (cfg.num_channels, cfg.patch_shift, cfg.edge_channels) == (7, 3, True)
    assert vit.fmnist_vit_config(edge_channels=True).num_channels == 3      # image + |gx| + |gy|, no shift
    model = ViTForImageClassification(cfg)
    model.save_pretrained(tmp_path / "vit")
    again = ViTForImageClassification.from_pretrained(tmp_path / "vit")
    assert again.config.edge_channels is True                # the edge channels travel with the checkpoint
    X = torch.rand(4, 1, 28, 28)
    xb = vit.input_transform(again)(X)
    assert xb.shape == (4, 7, 28, 28)
    assert torch.equal(xb[:, :5], vit.shift_patches(X, 3))   # the five shifted channels, then the edges
    assert torch.equal(xb[:, 5:], vit.abs_gradients(X))
    assert torch.allclose(again.eval()(xb).logits, model.eval()(xb).logits, atol=1e-6)
    bad = vit.fmnist_vit_config(shifted_patches=True, edge_channels=True)
    bad.num_channels = 5
    with pytest.raises(CourseError, match="edge_channels=True"):
        vit.input_transform(bad)


def test_eager_and_sdpa_attention_compute_the_same_model():
    from transformers import ViTForImageClassification

    cl.config.seed_everything(0)
    eager = ViTForImageClassification(vit.fmnist_vit_config(hidden_size=32, num_layers=2, num_heads=2))
    assert eager.config._attn_implementation == "eager"
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(eager.eval()(x).logits, sdpa.eval()(x).logits, atol=1e-5)
    with pytest.raises(CourseError, match="attn_implementation"):
        vit.fmnist_vit_config(attn_implementation="flash")


def test_loader_applies_transform_before_normalising():
    X = np.zeros((3, 4, 4), np.uint8)
    loader = train.make_loader(X, transform=lambda b: b + 1.0)
    (xb,) = next(iter(loader))
    assert torch.allclose(xb, torch.full_like(xb, (1.0 - 0.5) / 0.5))


# --------------------------------------------------------------------------- schedule


def test_lr_factor_warmup_then_cosine():
    total, warm = 100, 10
    f = [train.lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert all(a < b for a, b in zip(f[:warm], f[1:warm + 1]))
    assert f[warm] == pytest.approx(1.0)
    assert f[-1] < 0.01
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))
    assert train.lr_factor(50, total, warm, "constant") == 1.0
    assert train.lr_factor(55, total, warm, "linear") == pytest.approx(0.5)
    with pytest.raises(CourseError, match="schedule"):
        train.lr_factor(0, 10, 1, "step")


def test_param_groups_skip_biases_and_embeddings():
    from transformers import ViTForImageClassification

    model = ViTForImageClassification(vit.fmnist_vit_config(patch_size=7, hidden_size=16, num_layers=1,
                                                              num_heads=2))
    decay, no_decay = train.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "vit.embeddings.cls_token" in nd and "vit.embeddings.position_embeddings" in nd
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


# --------------------------------------------------------------------------- fit


def test_fit_learns_and_records_history():
    cl.config.seed_everything(0)
    X, y = blobs(400)
    tl = train.make_loader(X[:300], y[:300], batch_size=32, shuffle=True)
    vl = train.make_loader(X[300:], y[300:], batch_size=64)
    model = TinyNet()
    before = train.evaluate(model, vl)["loss"]
    h = quiet_fit(model, tl, vl, num_epochs=4, label_smoothing=0.1)
    assert h.num_epochs == 4 and len(h.val_acc) == 4 and len(h["val_loss"]) == 4
    assert len(h.epoch_seconds) == 4 and len(h.lr) == 4
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.val_acc[h.best_epoch] == max(h.val_acc) and h.val_acc[h.best_epoch] > 0.95
    assert h.val_loss[h.best_epoch] < before
    assert h.lr[-1] < 1e-6  # cosine decays to zero at the last step
    assert h.images_per_second > 0 and h.train_seconds >= sum(h.epoch_seconds) * 0.99
    assert train.evaluate(model, vl)["accuracy"] == pytest.approx(h.val_acc[h.best_epoch])


def test_fit_is_deterministic_under_seeding():
    X, y = blobs(200)

    def run():
        cl.config.seed_everything(1)
        tl = train.make_loader(X, y, batch_size=32, shuffle=True, transform=train.augmentation(1))
        return quiet_fit(TinyNet(), tl, num_epochs=2).train_loss

    assert run() == run()
    cl.config.seed_everything(2)
    other = quiet_fit(TinyNet(), train.make_loader(X, y, batch_size=32, shuffle=True), num_epochs=2).train_loss
    assert other != run()


def test_early_stopping_restores_best_weights():
    X, y = blobs(100)
    tl = train.make_loader(X, y, batch_size=50)
    snapshots: list[torch.Tensor] = []
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])

    def eval_fn(model, loader, device):
        snapshots.append(model.net[1].weight.detach().clone())
        return {"val_acc": next(scores), "val_loss": 1.0}

    model = TinyNet()
    h = quiet_fit(model, tl, tl, num_epochs=6, patience=2, eval_fn=eval_fn)
    assert h.stopped_early and h.num_epochs == 4 and h.best_epoch == 1 and h.monitor == "val_acc"
    assert torch.equal(model.net[1].weight, snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[3])


def test_monitor_falls_back_to_val_loss_lower_is_better():
    X, y = blobs(60)
    tl = train.make_loader(X, y, batch_size=30)
    losses = iter([3.0, 1.0, 2.0])
    h = quiet_fit(TinyNet(), tl, tl, num_epochs=3, eval_fn=lambda m, l, d: {"val_loss": next(losses)})
    assert h.monitor == "val_loss" and h.best_epoch == 1


def test_custom_step_fn_is_used():
    X, y = blobs(64)
    tl = train.make_loader(X, y, batch_size=32)
    calls = []

    def step_fn(model, batch, device):
        calls.append(batch[0].shape[0])
        return model(batch[0].to(device)).pow(2).mean()

    h = quiet_fit(TinyNet(), tl, num_epochs=2, step_fn=step_fn)
    assert calls == [32, 32, 32, 32] and h.train_loss[1] < h.train_loss[0]
    assert h.best_epoch == 1 and h.metrics == {}


def test_fit_bad_inputs():
    X, y = blobs(32)
    tl = train.make_loader(X, y, batch_size=16)
    with pytest.raises(CourseError, match="num_epochs"):
        quiet_fit(TinyNet(), tl, num_epochs=0)
    with pytest.raises(CourseError, match="lr"):
        quiet_fit(TinyNet(), tl, lr=-1.0)
    with pytest.raises(CourseError, match="val_loader"):
        quiet_fit(TinyNet(), tl, patience=2)
    with pytest.raises(CourseError, match="schedule"):
        quiet_fit(TinyNet(), tl, schedule="exponential")
    with pytest.raises(CourseError, match="nn.Module"):
        quiet_fit("not a model", tl)
    with pytest.raises(CourseError, match="tuples"):
        quiet_fit(TinyNet(), [torch.zeros(4, 1, 8, 8)])
    with pytest.raises(CourseError, match="scalar"):
        quiet_fit(TinyNet(), tl, step_fn=lambda m, b, d: m(b[0]))
    with pytest.raises(CourseError, match="nan"):
        quiet_fit(TinyNet(), tl, step_fn=lambda m, b, d: m(b[0]).sum() * float("nan"))


def test_fit_with_amp_on_cpu_runs():
    X, y = blobs(64)
    h = quiet_fit(TinyNet(), train.make_loader(X, y, batch_size=32), num_epochs=1, amp=True)
    assert math.isfinite(h.train_loss[0])


# --------------------------------------------------------------------------- evaluation


def test_evaluate_and_predict_agree():
    cl.config.seed_everything(0)
    X, y = blobs(90)
    loader = train.make_loader(X, y, batch_size=40)
    model = TinyNet()
    logits = train.predict(model, loader)
    assert logits.shape == (90, 2) and logits.dtype == np.float32
    m = train.evaluate(model, loader)
    assert m["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
    assert m["loss"] == pytest.approx(float((lse - logits[np.arange(90), y]).mean()), rel=1e-5)
    with pytest.raises(CourseError, match="no batches"):
        train.predict(model, [])


# --------------------------------------------------------------------------- checkpoints and history


def test_checkpoint_plain_module_roundtrip(tmp_path):
    X, y = blobs(64)
    tl = train.make_loader(X, y, batch_size=32)
    model = TinyNet()
    path = tmp_path / "ckpt"
    h = quiet_fit(model, tl, tl, num_epochs=2, checkpoint_dir=path)
    fresh = train.load_weights(TinyNet(), path)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert train.load_history(path).to_dict() == h.to_dict()
    train.save_checkpoint(TinyNet(), path)  # overwriting works and leaves no temp folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert train.load_history(path) is None
    with pytest.raises(CourseError, match="model.safetensors"):
        train.load_weights(TinyNet(), tmp_path / "missing")


def test_checkpoint_transformers_vit_roundtrip(tmp_path):
    from transformers import ViTForImageClassification

    cl.config.seed_everything(0)
    cfg = vit.fmnist_vit_config(patch_size=7, hidden_size=32, num_layers=1, num_heads=2)
    model = ViTForImageClassification(cfg)
    Xf, yf = np.random.default_rng(0).integers(0, 256, (48, 28, 28), dtype=np.uint8), np.arange(48) % 10
    tl = train.make_loader(Xf, yf, batch_size=16, shuffle=True)
    train.fit(model, tl, tl, num_epochs=1, lr=1e-3, progress=False, device="cpu", checkpoint_dir=tmp_path / "vit")
    again = ViTForImageClassification.from_pretrained(tmp_path / "vit")
    ordered = train.make_loader(Xf, yf, batch_size=16)  # predict needs a fixed order
    np.testing.assert_allclose(train.predict(again, ordered), train.predict(model, ordered), atol=1e-6)
    assert again.config.id2label[0] == cl.data.FASHION_CLASSES[0]


def test_history_dict_roundtrip_and_plot():
    h = train.History(train_loss=[1.0, 0.5], metrics={"val_loss": [0.9, 0.6], "val_acc": [0.5, 0.7]},
                      epoch_seconds=[1.0, 1.0], lr=[0.1, 0.0], best_epoch=1, monitor="val_acc")
    again = train.History.from_dict(h.to_dict())
    assert again == h and again.val_acc == [0.5, 0.7] and again.best == {"val_loss": 0.6, "val_acc": 0.7}
    fig = h.plot()
    assert len(fig.axes) == 2
    with pytest.raises(AttributeError):
        h.val_f1
    with pytest.raises(CourseError, match="val_f1"):
        h["val_f1"]


# --------------------------------------------------------------------------- recipe


def test_fmnist_vit_config_and_throughput():
    from transformers import ViTForImageClassification

    cfg = vit.fmnist_vit_config(patch_size=7, hidden_size=32, num_layers=1, num_heads=4, mlp_ratio=2)
    assert cfg.intermediate_size == 64 and cfg.num_labels == 10 and cfg.num_channels == 1
    model = ViTForImageClassification(cfg)
    assert model(torch.zeros(3, 1, 28, 28)).logits.shape == (3, 10)
    assert train.count_parameters(model) > 0
    assert efficiency.throughput(model, torch.zeros(8, 1, 28, 28), repeats=1) > 0
    with pytest.raises(CourseError, match="divide 28"):
        vit.fmnist_vit_config(patch_size=5)
    with pytest.raises(CourseError, match="divisible"):
        vit.fmnist_vit_config(hidden_size=30, num_heads=4)
    assert vit.fmnist_vit_checkpoint().name == f"vit-fmnist-{cl.config.scale()}"


def test_pick_num_threads_sets_a_candidate():
    before = torch.get_num_threads()
    try:
        n = efficiency.pick_num_threads(TinyNet(), torch.zeros(16, 1, 8, 8), candidates=[1, 2], repeats=1)
        assert n in (1, 2) and torch.get_num_threads() == n
        with pytest.raises(CourseError, match="positive ints"):
            efficiency.pick_num_threads(TinyNet(), torch.zeros(16, 1, 8, 8), candidates=[0])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_fmnist_vit_config_init_std_sets_initial_weights(std):
    from transformers import ViTForImageClassification

    cl.config.seed_everything(0)
    model = ViTForImageClassification(vit.fmnist_vit_config(hidden_size=64, num_layers=1, init_std=std))
    w = model.vit.layers[0].mlp.fc1.weight.detach()           # (128, 64): 8192 samples
    assert abs(float(w.std()) - std) < 0.1 * std
    with pytest.raises(CourseError, match="init_std"):
        vit.fmnist_vit_config(init_std=0.0)


def test_fmnist_vit_config_defaults_are_notebook_06_recipe():
    from transformers import ViTForImageClassification

    cfg = vit.fmnist_vit_config()
    assert (cfg.patch_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.intermediate_size, cfg.image_size, cfg.num_channels) == (7, 96, 4, 4, 192, 28, 1)
    assert 290_000 < train.count_parameters(ViTForImageClassification(cfg)) < 330_000  # "about 310k" in the docstring


def test_load_or_train_trains_once_and_retrains_on_a_new_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    calls = []

    def fit_tiny():
        calls.append(1)
        torch.manual_seed(len(calls))
        return nn.Linear(3, 2), None

    def load(d):
        return train.load_weights(nn.Linear(3, 2), d)

    a = train.load_or_train("tiny", {"lr": 0.1, "sizes": (3, 2)}, fit_tiny, load)
    b = train.load_or_train("tiny", {"sizes": [3, 2], "lr": 0.1}, fit_tiny, load)
    assert a.trained and not b.trained and len(calls) == 1
    assert torch.equal(a.model.weight, b.model.weight)
    assert train.saved_recipe(a.directory) == {"lr": 0.1, "sizes": [3, 2]}
    c = train.load_or_train("tiny", {"lr": 0.2, "sizes": [3, 2]}, fit_tiny, load)
    assert c.trained and len(calls) == 2


def test_checkpoint_dir_rejects_paths():
    with pytest.raises(CourseError, match="plain folder name"):
        train.checkpoint_dir("a/b")
