"""course_lib.inspection: protocol, measures, memory bank, reports (notebook 13)."""
import numpy as np
import pytest

from course_lib import CourseError
from course_lib import inspection as ins


def _cells(n=6, seed=0):
    rng = np.random.default_rng(seed)
    X = np.full((n, 64, 64), 150, dtype=np.uint8)
    X[:, :, 20:22] = 60                                      # a busbar in every cell
    X = (X + rng.integers(-5, 6, X.shape)).clip(0, 255).astype(np.uint8)
    return X


def test_proba_to_label_and_binary():
    y = ins.proba_to_label([0, 1 / 3, 2 / 3, 1.0])
    assert y.tolist() == [0, 1, 2, 3]
    assert ins.binary(y).tolist() == [False, False, True, True]
    with pytest.raises(CourseError):
        ins.proba_to_label([0.5])


def test_paper_split_is_stratified_and_exact():
    rng = np.random.default_rng(0)
    label = rng.choice(4, size=400, p=[0.57, 0.11, 0.04, 0.28])
    types = rng.choice(["mono", "poly"], size=400)
    tr, te = ins.paper_split(label, types, seed=1)
    assert len(te) == 100 and len(tr) == 300 and not set(tr) & set(te)
    for k in range(4):
        for t in ("mono", "poly"):
            n = ((label == k) & (types == t)).sum()
            assert abs(((label[te] == k) & (types[te] == t)).sum() - 0.25 * n) <= 1
    assert not np.array_equal(te, ins.paper_split(label, types, seed=2)[1])
    with pytest.raises(CourseError):
        ins.paper_split(label, types[:10])


def test_scores_two_and_four_classes():
    t = np.array([0, 1, 2, 3, 0, 3])
    p = np.array([1, 1, 3, 3, 2, 3])
    s = ins.scores(t, p, np.array(["mono"] * 3 + ["poly"] * 3))
    assert s["acc4"] == pytest.approx(3 / 6)
    assert s["acc2"] == pytest.approx(5 / 6)     # 0->1 and 2->3 stay on the same side; 0->2 does not
    assert s["acc2_mono"] == 1.0 and s["acc2_poly"] == pytest.approx(2 / 3)
    with pytest.raises(CourseError):
        ins.scores(t, p[:3])
    with pytest.raises(CourseError):
        ins.scores(t, p + 3)


def test_paired_bootstrap():
    a = np.ones(200, bool)
    b = np.r_[np.ones(150, bool), np.zeros(50, bool)]
    r = ins.paired_bootstrap(a, b, n_boot=500)
    assert r["diff"] == pytest.approx(0.25) and r["low"] > 0.15 and r["high"] < 0.35 and r["p_not_better"] == 0
    same = ins.paired_bootstrap(a, a, n_boot=100)
    assert same["low"] == same["high"] == 0
    with pytest.raises(CourseError):
        ins.paired_bootstrap(a, b[:10])


def test_flatten_removes_busbars_and_ridge_finds_a_crack():
    X = _cells(2)
    flat = ins.flatten_cell(X, size=64)
    assert flat.shape == (2, 64, 64) and flat.dtype == np.float32
    assert np.abs(flat[:, :, 20:22]).max() < 0.2           # the busbar is gone
    cracked = X.copy()
    idx = np.arange(10, 50)
    cracked[1, idx, idx] = 40                               # a thin dark diagonal line
    R = ins.ridge_map(cracked, size=64)
    assert R.min() >= 0 and R[1, idx, idx].mean() > 5 * R[0].mean()
    M, names = ins.line_measures(cracked, size=64)
    assert M.shape == (2, len(names)) and np.isfinite(M).all()
    j = names.index("ridge_largest_component")
    assert M[1, j] > M[0, j]
    assert M[1, names.index("ridge_diagonal_share")] > 0.5


def test_bad_images_raise():
    with pytest.raises(CourseError, match="uint8"):
        ins.flatten_cell(np.zeros((2, 32, 32), np.float32))
    with pytest.raises(CourseError, match="grey"):
        ins.line_measures(np.zeros((2, 32, 32, 3), np.uint8))


def test_texture_features_shapes():
    F = ins.texture_features(_cells(3), size=100)
    assert set(F) == set(ins.TEXTURE_KINDS) and all(v.shape[0] == 3 and v.dtype == np.float32 for v in F.values())


def test_pool_tokens():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(3, 4, 4, 8)).astype(np.float16)
    c = rng.normal(size=(3, 8)).astype(np.float32)
    assert ins.pool_tokens(c, P, "cls+mean").shape == (3, 16)
    assert ins.pool_tokens(c, P, "cls+mean+max").shape == (3, 24)
    assert ins.pool_tokens(c, P, "cls+grid2").shape == (3, 40)
    with pytest.raises(CourseError):
        ins.pool_tokens(c, P, "nope")


def test_greedy_coreset_covers_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    X = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centres]).astype(np.float32)
    idx = ins.greedy_coreset(X, 4)
    assert len(set((X[idx] > 5).astype(int).dot([1, 2]).tolist())) == 4    # one point per cluster


def test_memory_bank_flags_the_odd_patch():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(20, 4, 4, 16)).astype(np.float32) * 0.1
    bank = ins.MemoryBank(size=100, seed=0).fit(normal)
    test = rng.normal(size=(2, 4, 4, 16)).astype(np.float32) * 0.1
    test[1, 2, 3] += 5.0
    maps = bank.maps(test)
    assert maps.shape == (2, 4, 4)
    scores = bank.score(maps)
    assert scores[1] > 3 * scores[0]
    assert ins.region_of(maps[1]) in ("right", "bottom right")
    with pytest.raises(CourseError):
        ins.MemoryBank().maps(test)
    with pytest.raises(CourseError):
        bank.maps(test[..., :8])


def test_region_of():
    m = np.zeros((6, 6))
    m[0, 0] = 1
    assert ins.region_of(m) == "top left"
    m[:] = 0
    m[3, 5] = 1
    assert ins.region_of(m) == "right"


def _report():
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = 9.0
    return ins.cell_report("0042", "mono", [0.1, 0.1, 0.2, 0.6], amap, np.array([1.0, 2.0, 3.0, 10.0]), 0.0123, 0.05)


def test_cell_report_and_rule_note_pass_the_check():
    r = _report()
    assert r["verdict"] == "defective" and r["defect_probability"] == 0.8 and r["predicted_class"] == "100%"
    assert r["anomaly_percentile"] == 75 and r["anomaly_region"] == "top left"
    assert r["crack_length_share"] == 1.2 and r["dark_area_share"] == 5.0
    assert "anomaly_region: top left" in ins.report_text(r)
    assert ins.check_note(ins.rule_note(r), r)["ok"]
    with pytest.raises(CourseError):
        ins.cell_report("1", "mono", [0.5, 0.5], np.zeros((4, 4)), np.ones(3), 0, 0)
    with pytest.raises(CourseError):
        ins.report_text({"cell": "1"})


def test_check_note_catches_invented_facts():
    r = _report()
    bad = ins.check_note("Cell 0042 is functional; a crack of 37 mm runs at the bottom right.", r)
    assert bad["invented_numbers"] == ["37"] and bad["wrong_verdict"] and bad["wrong_region"] and not bad["ok"]
    good = ins.check_note("Cell 0042 (mono) is defective with probability 80 %, anomaly at the top left.", r)
    assert good["ok"], good
    with pytest.raises(CourseError):
        ins.check_note(None, r)


def test_check_note_reads_the_verdict_not_the_reference():
    amap = np.zeros((4, 4), np.float32)
    ok = ins.cell_report("7", "poly", [0.9, 0.05, 0.03, 0.02], amap, np.ones(5), 0.0, 0.0)
    assert ok["verdict"] == "functional" and ins.check_note(ins.rule_note(ok), ok)["ok"]
    flipped = ins.rule_note(ok).replace("functional", "defective")     # still mentions "defect-free cells"
    assert ins.check_note(flipped, ok)["wrong_verdict"]
    assert not ins.check_note("Cell 7 is not defective.", ok)["wrong_verdict"]


def test_missing_package_error_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("elpv_dataset"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(CourseError, match="pip install --no-deps elpv-dataset==1.0.0.post1"):
        ins._package_loader()


@pytest.mark.skipif(not ins.available(), reason="elpv-dataset not installed")
def test_load_elpv_real_cells():
    d = ins.load_elpv()
    assert d.images.shape == (2624, 300, 300) and d.images.dtype == np.uint8
    assert np.bincount(d.label).tolist() == [1508, 295, 106, 715]
    assert set(d.types) == {"mono", "poly"}
    sub = ins.load_elpv(80, seed=0)
    assert 70 <= len(sub.images) <= 90 and set(sub.label) == {0, 1, 2, 3}
    assert "CC BY-NC-SA 4.0" in ins.LICENCE
    with pytest.raises(CourseError):
        ins.load_elpv(3)
