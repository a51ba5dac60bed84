import gzip
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import course_lib as cl
from course_lib import data


@pytest.mark.parametrize("name", data.list_photos())
def test_every_photo_is_rgb_uint8(name):
    img = data.load_photo(name)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.max() > 50


@given(st.text(min_size=1, max_size=12))
@settings(max_examples=30, deadline=None)
def test_unknown_photo_names_are_refused(name):
    if name in data.PHOTOS or name == "cat":
        return
    with pytest.raises(cl.CourseError, match="expected one of"):
        data.load_photo(name)


def test_real_textures():
    for name in data.REAL_TEXTURES:
        t = data.load_texture(name)
        assert t.dtype == np.uint8 and t.ndim == 2
    with pytest.raises(cl.CourseError):
        data.load_texture("marble")


@pytest.mark.parametrize("orientation", [0.0, 30.0, 90.0, 135.0])
def test_grating_has_the_asked_orientation_and_frequency(orientation):
    img = data.procedural_texture("grating", size=128, orientation=orientation, frequency=0.125)
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    spec = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean())))
    ky, kx = np.unravel_index(spec.argmax(), spec.shape)
    fy, fx = (ky - 64) / 128, (kx - 64) / 128
    assert np.hypot(fx, fy) == pytest.approx(0.125, abs=0.01)
    angle = np.rad2deg(np.arctan2(fy, fx)) % 180
    assert min(abs(angle - orientation % 180), 180 - abs(angle - orientation % 180)) < 4


def test_procedural_bad_input():
    with pytest.raises(cl.CourseError, match="frequency"):
        data.procedural_texture("grating", frequency=0.8)
    with pytest.raises(cl.CourseError, match="expected one of"):
        data.procedural_texture("waves")


def test_fashion_mnist_shapes_and_balance():
    X, y = data.load_fashion_mnist("train")
    Xt, yt = data.load_fashion_mnist("test")
    assert X.shape == (60000, 28, 28) and X.dtype == np.uint8 and y.dtype == np.int64
    assert Xt.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(y), np.full(10, 6000))
    assert len(data.FASHION_CLASSES) == 10
    with pytest.raises(cl.CourseError, match="'train' or 'test'"):
        data.load_fashion_mnist("validation")


def test_corrupted_cache_file_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    good = data.fashion_mnist_file("t10k-labels")  # from the system folder (or a real cache)
    cached = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good.read_bytes()[:100])  # a half-written download
    found = data.fashion_mnist_file("t10k-labels", allow_download=False)
    assert not cached.exists(), "the corrupted cache file must be removed"
    assert cl.cache.sha256_file(found) == data.FASHION_FILES["t10k-labels"][1]


def test_cache_is_preferred_when_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    src = data.fashion_mnist_file("t10k-labels")
    (tmp_path / "fashion-mnist").mkdir()
    shutil.copy(src, tmp_path / "fashion-mnist" / src.name)
    assert data.fashion_mnist_file("t10k-labels") == tmp_path / "fashion-mnist" / src.name


def test_missing_everywhere_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(data.FASHION_DIR_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "nowhere2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cl.config.is_online(refresh=True)
    with pytest.raises(cl.CourseError) as e:
        data.fashion_mnist_file("t10k-labels")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and data.FASHION_DIR_ENV in msg
    assert "course fetch" in msg and "skipped (offline)" in msg


def test_system_folder_with_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "sys"
    bad.mkdir()
    with gzip.open(bad / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not the real labels")
    monkeypatch.setenv(data.FASHION_DIR_ENV, str(bad))
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cl.config.is_online(refresh=True)
    with pytest.raises(cl.CourseError, match="checksum mismatch"):
        data.fashion_mnist_file("t10k-labels")


@pytest.fixture(scope="module")
def scenes():
    return data.make_scenes(600, split="train", seed=3)


def test_scenes_are_deterministic_and_well_formed(scenes):
    again = data.make_scenes(600, split="train", seed=3)
    assert np.array_equal(scenes.images, again.images) and scenes.captions == again.captions
    other = data.make_scenes(600, split="train", seed=4)
    assert not np.array_equal(scenes.images, other.images)
    assert scenes.images.shape == (600, 64, 64, 3) and scenes.images.dtype == np.uint8
    assert set(np.unique(scenes.counts)) == {1, 2, 3}
    for f in ("object", "colour", "texture", "size"):
        assert np.array_equal(scenes.slots[f] >= 0, scenes.slots["object"] >= 0)


def test_masks_match_slots(scenes):
    for i in range(50):
        present = set(np.flatnonzero(scenes.slots["object"][i] >= 0) + 1)
        assert set(np.unique(scenes.masks[i])) - {0} == present


def test_item_colour_shows_in_its_pixels(scenes):
    """The brightest pixels of a plain item carry its colour's dominant channel."""
    colours = np.array(list(data.COLOURS.values()))
    checked = 0
    for i in range(200):
        for k in np.flatnonzero(scenes.slots["texture"][i] == 0):
            px = scenes.images[i][scenes.masks[i] == k + 1].astype(float)
            mean = px.mean(0)
            want = colours[scenes.slots["colour"][i, k]]
            assert np.argmax(mean) == np.argmax(want)
            checked += 1
    assert checked > 20


def test_captions_are_the_graphs(scenes):
    for cap, graph in zip(scenes.captions, scenes.graphs):
        assert data.parse_caption(cap) == graph
        assert cap == data.scene_caption(graph)


def test_heldout_compositions_only_in_heldout():
    held = set(data.HELDOUT_PAIRS)

    def pairs(s):
        return {(it["colour"], it["object"]) for g in s.graphs for it in g}

    for split in ("train", "val", "test"):
        assert not pairs(data.make_scenes(1500, split=split, seed=0)) & held
    h = data.make_scenes(300, split="heldout", seed=0)
    assert all({(it["colour"], it["object"]) for it in g} & held for g in h.graphs)


def test_splits_draw_from_disjoint_fashion_images():
    tr = data.make_scenes(500, "train", 0).source
    va = data.make_scenes(500, "val", 0).source
    assert tr[tr >= 0].max() < 50000 <= va[va >= 0].min()


def test_scene_bad_input():
    with pytest.raises(cl.CourseError, match="split"):
        data.make_scenes(4, split="dev")
    with pytest.raises(cl.CourseError, match="positive"):
        data.make_scenes(0)
    with pytest.raises(cl.CourseError, match="max_items"):
        data.make_scenes(4, max_items=7)


@given(st.lists(st.tuples(st.sampled_from(list(data.SIZES)), st.sampled_from(list(data.COLOURS)),
                          st.sampled_from(data.TEXTURES), st.sampled_from(data.OBJECT_WORDS)),
                min_size=1, max_size=4))
@settings(max_examples=60, deadline=None)
def test_parse_inverts_caption(items):
    graph = [{"object": o, "colour": c, "texture": t, "size": s, "position": data.POSITIONS[k]}
             for k, (s, c, t, o) in enumerate(items)]
    assert data.parse_caption(data.scene_caption(graph)) == graph
