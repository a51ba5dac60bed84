"""The course website and the slide decks (course_lib.site): built from the stored notebooks
and read in a real headless Chromium, as a learner's browser would."""
import json
import os
import re
import time
from pathlib import Path

import pytest

import course_lib as cl
from course_lib import site
from course_lib.config import CourseError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EDGES = ROOT / "notebooks" / "02_edges.ipynb"


def test_lesson_info_reads_title_objective_and_summary():
    info = site.lesson_info(EDGES)
    assert info["stem"] == "02_edges" and info["number"] == "02"
    assert info["title"].startswith("02 · ")
    assert 3 <= len(info["objective"]) <= 6
    assert info["summary"].startswith("## Summary")
    assert info["figures"] > 0


def test_lesson_info_refuses_a_notebook_without_a_title(tmp_path):
    bad = tmp_path / "99_bad.ipynb"
    bad.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": "no heading"}],
                               "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(CourseError, match="Title"):
        site.lesson_info(bad)


def test_launch_links_follow_the_binder_and_colab_patterns():
    links = site.launch_links("02_edges", "https://github.com/someone/course.git", "dev")
    assert links["binder"] == ("https://mybinder.org/v2/gh/someone/course/dev"
                               "?urlpath=lab/tree/notebooks/02_edges.ipynb")
    assert links["colab"] == ("https://colab.research.google.com/github/someone/course/blob/dev/"
                              "notebooks/02_edges.ipynb")
    gitlab = site.launch_links("02_edges", "https://gitlab.com/someone/course")
    assert "colab" not in gitlab and "/v2/gl/someone%2Fcourse/main" in gitlab["binder"]
    assert site.launch_links("02_edges", "https://example.org/not-a-forge") == {}


def test_slide_notebook_keeps_objective_key_figures_and_summary():
    nb = json.loads(EDGES.read_text())
    deck = site.slide_notebook(nb, max_figures=3)
    first = "".join(deck["cells"][0]["source"])
    assert first.startswith("# 02 · Edges") and "Objective" in first
    figs = [c for c in deck["cells"] if c["cell_type"] == "code"]
    assert 1 <= len(figs) <= 3 and all(not c["source"] for c in figs)
    assert all(any(k.startswith("image/") for k in c["outputs"][0]["data"]) for c in figs)
    assert "".join(deck["cells"][-1]["source"]).startswith("## Summary")
    assert all(c["metadata"]["slideshow"]["slide_type"] in ("slide", "fragment") for c in deck["cells"])


def test_a_slide_deck_is_written_for_a_notebook_and_opens_offline(tmp_path):
    (deck,) = site.build_slides(tmp_path, [EDGES])
    html = deck.read_text()
    objective = site.lesson_info(EDGES)["objective"][0]
    plain = re.sub(r"<[^>]+>", "", html)
    assert "Objective" in plain and objective.split("(")[0].strip()[:40] in plain
    assert html.count("<section") >= 3 and "data:image/png;base64" in html
    assert "**Runtime**" not in plain and "Runtime" in plain  # the markers are gone, the line is kept
    # everything the deck loads sits beside it, so it opens without internet
    srcs = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert srcs and not [s for s in srcs if s.startswith(("http:", "https:", "//"))], srcs
    for s in srcs:
        assert (tmp_path / s).exists(), s


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "html"
    t0, started = time.perf_counter(), time.time()
    report = site.build_site(out, repo_url="https://github.com/someone/edges-to-captions")
    report["started"] = started
    report["build_seconds"] = time.perf_counter() - t0
    print(f"\nsite: {len(report['pages'])} pages built in {report['build_seconds']:.1f} s")
    return report


def test_site_has_a_page_per_lesson_and_the_course_pages(built):
    out = built["out"]
    lessons = [f"notebooks/{p.stem}.html" for p in NOTEBOOKS]
    for page in ["index.html", "results.html", "teaching.html", "slides.html", "search.html", *lessons]:
        assert page in built["pages"], page
    assert built["warnings"] == [], built["warnings"][:5]
    assert (out / "searchindex.js").exists()
    index = (out / "index.html").read_text()
    for p in NOTEBOOKS:
        assert f'href="notebooks/{p.stem}.html"' in index, p.stem
    results_html = (out / "results.html").read_text()
    assert "Runtime of each notebook" in results_html and "test_accuracy" in results_html
    assert (out / "slides" / "02_edges.html").exists()


def test_every_lesson_page_has_its_figures_downloads_and_launch_links(built):
    out = built["out"]
    for p in NOTEBOOKS:
        html = (out / "notebooks" / f"{p.stem}.html").read_text()
        n_fig = site.lesson_info(p)["figures"]
        assert html.count('<img') >= n_fig, p.stem
        downloads = re.findall(r'class="reference download internal" download="" href="([^"]+)"', html)
        assert len(downloads) >= 2, p.stem
        for d in downloads:
            assert (out / "notebooks" / d).resolve().exists(), d
        assert f"mybinder.org/v2/gh/someone/edges-to-captions/main?urlpath=lab/tree/notebooks/{p.stem}.ipynb" in html
        assert f"colab.research.google.com/github/someone/edges-to-captions/blob/main/notebooks/{p.stem}.ipynb" in html
        assert f'href="../slides/{p.stem}.html"' in html
        # the downloadable notebook is the stored one, byte for byte (unless edited since)
        if p.stat().st_mtime > built["started"]:
            continue
        stored = next(d for d in downloads if "student" not in d and d.endswith(f"{p.stem}.ipynb"))
        assert (out / "notebooks" / stored).resolve().read_bytes() == p.read_bytes()


def test_site_reads_in_headless_chromium(built):
    """Every page (and every slide deck) loads with no console error and no failed load,
    every stored figure decodes with a non-zero natural size, the previous/next links walk
    through the lessons in order, clicking "next" works, and the offline search finds Canny."""
    shots_dir = Path(os.environ.get("COURSE_SITE_SCREENSHOTS", built["out"].parent / "screenshots"))
    shots = {p: shots_dir / (p.replace("/", "_").removesuffix(".html") + ".png")
             for p in ("index.html", "notebooks/02_edges.html", "notebooks/07_pretrained_vits.html")}
    t0 = time.perf_counter()
    report = site.check_site(built["out"], screenshots=shots)
    n_img = sum(len(r["images"]) for r in report["pages"].values())
    print(f"\nchromium: {len(report['pages'])} pages, {len(report.get('slides', {}))} decks, "
          f"{n_img} images checked in {time.perf_counter() - t0:.1f} s")
    assert site.problems(report) == []
    assert len(report["pages"]) == len(built["pages"])
    assert n_img >= sum(site.lesson_info(p)["figures"] for p in NOTEBOOKS)
    assert all(s.exists() and s.stat().st_size > 10_000 for s in shots.values())


def test_site_build_needs_the_teaching_guide(tmp_path, monkeypatch):
    monkeypatch.setattr(cl.config, "REPO_ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(CourseError, match="TEACHING.md"):
        site.teaching_page(tmp_path)


GUIDE_FIELDS = ("Goals.", "Prerequisites.", "Time.", "Key figure.", "Discussion.", "Pitfalls.",
                "Exercises check.")


def test_teaching_guide_covers_every_lesson_and_has_two_plans():
    text = (ROOT / "TEACHING.md").read_text()
    numbers = sorted({p.stem[:2] for p in NOTEBOOKS} | {f"{n:02d}" for n in range(14)})
    sections = re.split(r"^### ", text, flags=re.M)
    for num in numbers:
        sec = next((s for s in sections if s.startswith(f"{num} · ")), None)
        assert sec is not None, f"TEACHING.md has no section '### {num} · ...'"
        for field in GUIDE_FIELDS:
            assert f"**{field}**" in sec, f"lesson {num}: no {field!r}"
        assert f"<!-- minutes:{num} -->" in sec, f"lesson {num}: its time is not generated"
    assert "## Plan A · A 90-minute class" in text and "## Plan B · A full-day offline workshop" in text
    # no line starts with a marker: Markdown would read it as a raw HTML block
    assert not re.search(r"^\s*<!--", text, flags=re.M)


def test_teaching_guide_times_and_numbers_come_from_results():
    timings = cl.results.load_timings("cpu", root=ROOT)
    page = site.teaching_page(ROOT)
    stem = "02_edges"
    d = timings["default"][stem]
    expect = f"{d:.0f} s" if d < 90 else f"{d / 60:.1f} min"
    assert re.search(r"<!-- minutes:02 -->[^<]*`default` " + re.escape(expect), page)
    filled = site.fill_guide("<!-- minutes:02,05@default -->stale<!-- /minutes --> "
                             "<!-- result:x/y -->1<!-- /result -->", timings, [])
    total = timings["default"][stem] + timings["default"]["05_attention_and_vit_anatomy"]
    assert ("stale" not in filled and (f"{total:.0f} s" if total < 90 else f"{total / 60:.1f} min") in filled
            and "not recorded yet" in filled)


def test_course_slides_command_writes_a_deck(tmp_path, capsys):
    assert cl.cli.main(["slides", "02", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "02_edges.html").exists() and "02_edges.html" in capsys.readouterr().out
    assert cl.cli.main(["slides", "99", "--out", str(tmp_path)]) == 2  # an unknown notebook: a clear error
