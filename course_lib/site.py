"""The course website and the slide decks: ``course site`` and ``course slides``.

Introduced in the README ("Course website", "For teachers"). The site is built with Sphinx,
MyST-NB and the Sphinx Book Theme from the **stored, executed** notebooks (they are never
re-executed here), so a build takes well under a minute and needs no kernel::

    course site                      # -> build/site/index.html (open it in a browser)
    course site --check              # ... and load every page in headless Chromium
    course slides 02                 # -> build/slides/02_edges.html (reveal.js)

What a build stages (in ``<out>-src``, next to the output folder) before Sphinx runs:

- ``notebooks/NN_topic.ipynb``: a copy of each lesson with a link line under its objective
  (download the notebook or its student edition, open it in Binder or Colab, its slides);
  reference solutions are folded away (``hide-input``) so a reader tries first;
- ``index.md`` (the course map), ``results.md`` (the runtime and results tables, from
  ``results/*.json``), ``teaching.md`` (``TEACHING.md``) and ``slides.md``.

The launch links are built from a repository URL (``--repo-url`` or ``$COURSE_REPO_URL``;
a placeholder otherwise): nothing is contacted while building. Everything a page loads
(theme, search index, MathJax from the ``sphinx-mathjax-offline`` package, reveal.js from
``sphinx-revealjs``) is copied into the site, so it reads offline too.

The browser check (:func:`check_site`) serves the site on 127.0.0.1, drives Debian's
``chromium`` over the DevTools protocol and reports, per page, console errors, failed
loads, images that did not decode, and the previous/next links.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from . import config, results
from .config import CourseError

DEFAULT_REPO_URL = "https://github.com/your-org/edges-to-captions"
REPO_ENV, BRANCH_ENV = "COURSE_REPO_URL", "COURSE_BRANCH"
BINDER_URL = "https://mybinder.org"
COLAB_URL = "https://colab.research.google.com"
#: Sections of a lesson that the slide decks leave out (besides the title, objective and summary).
SLIDE_SKIP = ("setup", "exercises", "exercise", "going further")
MAX_SLIDE_FIGURES = 8


def _root() -> Path:
    if config.REPO_ROOT is None:
        raise CourseError("course site needs a clone of the course repository (no site/ folder found)")
    return config.REPO_ROOT


def site_source_dir() -> Path:
    """``site/``: the Sphinx configuration and static files of the website."""
    return _root() / "site"


# --------------------------------------------------------------------------- lessons

def _markdown(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def lesson_info(path: Path) -> dict[str, Any]:
    """Title, objective bullets, section headings and summary of a lesson, read from its
    Markdown cells (outputs are not touched). Keys: ``stem, number, title, objective``
    (list of str), ``sections`` (list of str), ``summary`` (str, may be empty), ``figures``
    (number of stored image outputs)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    first = next((_markdown(c) for c in cells if c.get("cell_type") == "markdown"), "")
    m = re.search(r"^#\s+(.+)$", first, flags=re.M)
    if m is None:
        raise CourseError(f"{Path(path).name}: the first Markdown cell has no '# NN · Title' heading")
    title = m.group(1).strip()
    objective = [ln[2:].strip() for ln in first.splitlines() if ln.startswith("- ")]
    sections, summary, figures = [], "", 0
    for c in cells:
        if c.get("cell_type") == "markdown":
            text = _markdown(c)
            for ln in text.splitlines():
                if ln.startswith("## "):
                    sections.append(ln[3:].strip())
            if re.match(r"^##\s+Summary", text):
                summary = text
        else:
            figures += sum(1 for o in c.get("outputs", [])
                           if any(k.startswith("image/") for k in o.get("data", {})))
    return {"stem": Path(path).stem, "number": Path(path).stem[:2], "title": title,
            "objective": objective, "sections": sections, "summary": summary, "figures": figures}


def _readme_course_rows() -> dict[str, str]:
    """``{"02": "gradients, LoG/DoG, ..."}`` from the README's course table."""
    readme = _root() / "README.md"
    rows = {}
    if readme.exists():
        for ln in readme.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^\|\s*(\d\d)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|\s*$", ln)
            if m:
                rows[m.group(1)] = m.group(3)
    return rows


def _repo_parts(repo_url: str) -> tuple[str, str, str] | None:
    """``(host, org, repo)`` of a GitHub/GitLab URL, else None."""
    m = re.match(r"^https?://(github\.com|gitlab\.com)/([^/]+)/([^/]+?)(?:\.git)?/?$", repo_url)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def launch_links(stem: str, repo_url: str, branch: str = "main") -> dict[str, str]:
    """Online launch links of notebook ``stem`` (``{"binder": url, "colab": url}``) built from
    the repository URL; Colab only for GitHub. Empty for a URL that is not GitHub/GitLab."""
    parts = _repo_parts(repo_url)
    if parts is None:
        return {}
    host, org, repo = parts
    path = f"notebooks/{stem}.ipynb"
    kind = "gh" if host == "github.com" else "gl"
    repo_ref = f"{org}/{repo}" if kind == "gh" else f"{org}%2F{repo}"
    links = {"binder": f"{BINDER_URL}/v2/{kind}/{repo_ref}/{branch}?urlpath=lab/tree/{path}"}
    if kind == "gh":
        links["colab"] = f"{COLAB_URL}/github/{org}/{repo}/blob/{branch}/{path}"
    return links


def _links_cell(stem: str, repo_url: str, branch: str) -> dict:
    links = launch_links(stem, repo_url, branch)
    parts = [f"{{download}}`Download the notebook <../downloads/{stem}.ipynb>`",
             f"{{download}}`student edition <../downloads/student/{stem}.ipynb>`"]
    if "binder" in links:
        parts.append(f"[Open in Binder]({links['binder']})")
    if "colab" in links:
        parts.append(f"[Open in Colab]({links['colab']})")
    parts.append(f'<a class="course-slides-link" href="../slides/{stem}.html">Slides</a>')
    text = ("```{container} course-links\n" + " · ".join(parts) + "\n```\n\n"
            "*Stored as executed at the `default` profile on a 2-core CPU; run it yourself with "
            f"`course run {stem[:2]}` (or offline, after `course doctor`).*")
    return {"cell_type": "markdown", "metadata": {"tags": ["course-links"]}, "source": text}


def _strip_runtime_markers(text: str) -> str:
    """Drop the ``<!-- runtime -->`` markers, keep the runtime line: Markdown renderers read
    a line that starts with an HTML comment as raw HTML and would show ``**Runtime**``."""
    return re.sub(r"<!--\s*/?runtime\s*-->", "", text)


def _site_notebook(nb: dict, stem: str, repo_url: str, branch: str) -> dict:
    """The staged copy of a lesson: the link line after the objective, solutions folded."""
    nb = copy.deepcopy(nb)
    cells = nb["cells"]
    first_md = next(i for i, c in enumerate(cells) if c.get("cell_type") == "markdown")
    cells.insert(first_md + 1, _links_cell(stem, repo_url, branch))
    for c in cells:
        if c.get("cell_type") == "markdown":
            # The runtime markers are HTML comments on the runtime line's own line, which
            # would make MyST read the whole line as raw HTML: keep only the text.
            c["source"] = _strip_runtime_markers(_markdown(c))
        tags = c.setdefault("metadata", {}).setdefault("tags", [])
        if c.get("cell_type") == "code" and "solution" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    return nb


# --------------------------------------------------------------------------- pages

def _write(path: Path, text: str) -> None:
    """Write only when the text changed (keeps Sphinx's incremental rebuilds working)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _fmt_minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def index_page(lessons: list[dict], timings: dict[str, dict[str, float]]) -> str:
    """The home page: what the course is, the course map with measured runtimes, the toctree."""
    leave = _readme_course_rows()
    lines = [
        "# Edges to Captions", "",
        "A hands-on Jupyter course in computer vision that asks one question — *can a machine "
        "describe what it sees?* — and answers it step by step: from pixels, edges and "
        "textures, through Vision Transformers, to fusing image and text features, generating "
        "captions and letting a small language model read what the vision side measured.", "",
        "Every lesson below is the stored notebook, executed at the `default` profile on a "
        "2-core laptop CPU, with its figures. Everything runs **offline**: real pretrained "
        "weights and real data come from installed packages. Each lesson page has a download "
        "link, the student edition (solutions blanked) and, for the online path, Binder and "
        "Colab links.", "",
        "## The course map", "",
        "| # | lesson | you leave with | smoke | default |",
        "|---|---|---|---|---|",
    ]
    for les in lessons:
        t_s = timings.get("smoke", {}).get(les["stem"])
        t_d = timings.get("default", {}).get(les["stem"])
        what = leave.get(les["number"]) or (les["objective"][0] if les["objective"] else "")
        title = les["title"].split("·", 1)[-1].strip()
        lines.append(f"| {les['number']} | [{title}](notebooks/{les['stem']}.ipynb) | {what} | "
                     f"{_fmt_minutes(t_s)} | {_fmt_minutes(t_d)} |")
    lines += [
        "", "Runtimes are whole-notebook wall times measured by `course run` on a 2-core CPU "
        "(`results/*-timings.json`); `full` is meant for a GPU. All numbers: "
        "[results and runtimes](results.md).", "",
        "## Run it yourself", "",
        "```bash",
        "bash scripts/course.sh   # set up, check the machine, run every notebook (default profile)",
        "bash scripts/test.sh     # set up, run the unit tests and every notebook (smoke profile)",
        "```", "",
        "Teachers: the [teaching guide](teaching.md) has goals, timings, discussion questions "
        "and pitfalls for each lesson and two ready plans; every lesson also has a "
        "[slide deck](slides.md).", "",
        "```{toctree}", ":hidden:", ":caption: Lessons", ":maxdepth: 1", "",
        *[f"notebooks/{les['stem']}" for les in lessons],
        "```", "",
        "```{toctree}", ":hidden:", ":caption: For learners and teachers", ":maxdepth: 1", "",
        "results", "teaching", "slides",
        "```", "",
    ]
    return "\n".join(lines)


def results_page(root: Path) -> str:
    """Runtimes and headline results, generated from ``results/*.json`` (never typed in)."""
    res_dir = root / "results"
    lines = ["# Results and runtimes", "",
             "Generated from the files in `results/` that `course run` writes; the README's "
             "tables come from the same files.", ""]
    devices = sorted({p.name.split("-")[1] for p in res_dir.glob("*-*-timings.json")})
    for dev in devices:
        timings = results.load_timings(dev, root=root)
        lines += [f"## Runtime of each notebook ({dev.upper()})", "",
                  "Whole notebook, wall time, measured by `course run`.", "",
                  results.runtimes_table(timings), ""]
    for path in sorted(res_dir.glob("*.json")):
        if path.name.endswith("-timings.json"):
            continue
        records = json.loads(path.read_text(encoding="utf-8"))
        if not records:
            continue
        prof, dev = path.stem.split("-", 1)
        lines += [f"## Headline numbers: `{prof}` profile, {dev.upper()}", "",
                  f"From `results/{path.name}`.", "", results.markdown_table(records), ""]
    return "\n".join(lines)


def slides_page(lessons: list[dict]) -> str:
    lines = ["# Slides", "",
             "One reveal.js deck per lesson, generated from the notebook (objective, key "
             "figures, summary) by `course slides`. Open a deck and use the arrow keys; "
             "`S` opens the speaker view. They work offline.", ""]
    for les in lessons:
        lines.append(f'- <a class="course-slides-link" href="slides/{les["stem"]}.html">'
                     f'{les["title"]}</a>')
    return "\n".join(lines) + "\n"


_MINUTES = re.compile(r"<!-- minutes:([0-9,]+)(?:@(\w+))? -->(.*?)<!-- /minutes -->", re.S)
_RESULT = re.compile(r"<!-- result:(\w+)/(\w+) -->(.*?)<!-- /result -->", re.S)


def _refill(m: re.Match, body: str) -> str:
    """The match with its last group (the text between the markers) replaced by ``body``."""
    whole, start = m.group(0), m.start(0)
    return whole[:m.start(3) - start] + body + whole[m.end(3) - start:]


def fill_guide(text: str, timings: dict[str, dict[str, float]], records: list[dict]) -> str:
    """Fill the generated spans of the teaching guide from the measured files, so no time or
    number in it is typed by hand:

    - ``<!-- minutes:02 -->…<!-- /minutes -->``: the notebook's wall time at each profile;
    - ``<!-- minutes:00,01,02@default -->…<!-- /minutes -->``: the sum at one profile;
    - ``<!-- result:06_training_a_vit/test_accuracy -->…<!-- /result -->``: a headline number
      of the default run (``results/default-cpu.json``)."""
    def stems(nums: str) -> list[str]:
        names = {s for prof in timings.values() for s in prof}
        return [next((s for s in sorted(names) if s[:2] == n), n) for n in nums.split(",")]

    def minutes(m: re.Match) -> str:
        nbs, prof = stems(m.group(1)), m.group(2)
        if prof:
            vals = [timings.get(prof, {}).get(s) for s in nbs]
            body = "not measured yet" if None in vals else _fmt_minutes(sum(vals))
        else:
            parts = [f"`{p}` {_fmt_minutes(timings[p][nbs[0]])}" if nbs[0] in timings.get(p, {})
                     else f"`{p}` not measured yet" for p in config.SCALES
                     if nbs[0] in timings.get(p, {}) or p != "full"]
            body = " · ".join(parts) + ("" if nbs[0] in timings.get("full", {}) else " (`full`: for a GPU)")
        return _refill(m, body)

    def result(m: re.Match) -> str:
        hit = next((r for r in records if r["notebook"] == m.group(1) and r["metric"] == m.group(2)), None)
        body = "not recorded yet" if hit is None else results._fmt(hit["value"])
        return _refill(m, body)

    return _RESULT.sub(result, _MINUTES.sub(minutes, text))


def teaching_page(root: Path) -> str:
    """TEACHING.md with its generated spans filled from ``results/`` (see :func:`fill_guide`)."""
    guide = root / "TEACHING.md"
    if not guide.exists():
        raise CourseError("TEACHING.md is missing: the site's teaching guide is built from it")
    default = results.results_path("default", "cpu", root=root)
    records = json.loads(default.read_text(encoding="utf-8")) if default.exists() else []
    return fill_guide(guide.read_text(encoding="utf-8"), results.load_timings("cpu", root=root), records)


def update_teaching_guide(root: Path | None = None) -> bool:
    """Refresh the generated spans of TEACHING.md in place (``course site`` does it, as
    ``course results`` does for the README); True if the file changed."""
    root = root or _root()
    guide = root / "TEACHING.md"
    new = teaching_page(root)
    if new != guide.read_text(encoding="utf-8"):
        guide.write_text(new, encoding="utf-8")
        return True
    return False


def stage(src: Path, repo_url: str, branch: str = "main",
          notebooks: list[Path] | None = None) -> list[dict]:
    """Write the Sphinx sources of the site into ``src``; returns the lesson infos."""
    from . import runner, student

    root = _root()
    nbs = notebooks if notebooks is not None else runner.all_notebooks()
    if not nbs:
        raise CourseError("no notebooks found in notebooks/")
    lessons = []
    stems = {p.stem for p in nbs}
    for stale in (src / "notebooks").glob("*.ipynb"):
        if stale.stem not in stems:
            stale.unlink()
    for p in nbs:
        text = p.read_text(encoding="utf-8")
        nb = json.loads(text)
        lessons.append(lesson_info(p))
        _write(src / "downloads" / p.name, text)
        import nbformat

        stud = student.student_notebook(nbformat.reads(text, as_version=4))
        _write(src / "downloads" / "student" / p.name, nbformat.writes(stud) + "\n")
        _write(src / "notebooks" / p.name,
               json.dumps(_site_notebook(nb, p.stem, repo_url, branch), indent=1, ensure_ascii=False))
    timings = results.load_timings("cpu", root=root)
    _write(src / "index.md", index_page(lessons, timings))
    _write(src / "results.md", results_page(root))
    _write(src / "slides.md", slides_page(lessons))
    _write(src / "teaching.md", teaching_page(root))
    return lessons


# --------------------------------------------------------------------------- vendored JS

def _package_dir(dist: str, module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CourseError(f"the site needs the package {dist!r} (it ships files the pages load "
                          f"offline); install the lock: pip install --no-deps -r requirements.lock")
    return Path(list(spec.submodule_search_locations)[0])


def mathjax_dir() -> Path:
    """MathJax 3 (``tex-chtml.js`` and its fonts), shipped by ``sphinx-mathjax-offline``."""
    return _package_dir("sphinx-mathjax-offline", "sphinx-mathjax-offline") / "static" / "mathjax"


def revealjs_dir() -> Path:
    """reveal.js (``dist/`` and ``plugin/``), shipped by ``sphinx-revealjs``."""
    return _package_dir("sphinx-revealjs", "sphinx_revealjs") / "_static" / "revealjs"


# Only what tex-chtml.js loads (no SVG output, no speech maps): ~2 MB instead of 24 MB.
_MATHJAX_PARTS = ("tex-chtml.js", "input", "output/chtml.js", "output/chtml", "ui", "a11y", "adaptors")


def copy_mathjax(dest: Path) -> None:
    src = mathjax_dir()
    for part in _MATHJAX_PARTS:
        s, d = src / part, dest / part
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


def copy_revealjs(dest: Path) -> None:
    src = revealjs_dir()
    for part in ("dist", "plugin/notes"):
        shutil.copytree(src / part, dest / part, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.map", "*.esm.js"))


# --------------------------------------------------------------------------- slides

def slide_notebook(nb: dict, max_figures: int = MAX_SLIDE_FIGURES) -> dict:
    """A filtered copy of a lesson for a slide deck: the title + objective slide, one slide
    per key figure (the first figure of each teaching section, code hidden), the summary."""
    cells = nb["cells"]
    out: list[dict] = []

    def slide(cell: dict, kind: str = "slide") -> dict:
        cell = copy.deepcopy(cell)
        if cell.get("cell_type") == "markdown":
            cell["source"] = _strip_runtime_markers(_markdown(cell))
        cell.setdefault("metadata", {})["slideshow"] = {"slide_type": kind}
        return cell

    first_md = next(i for i, c in enumerate(cells) if c.get("cell_type") == "markdown")
    out.append(slide(cells[first_md]))
    section, shown, n_fig = None, set(), 0
    for c in cells[first_md + 1:]:
        if c.get("cell_type") == "markdown":
            text = _markdown(c)
            m = re.search(r"^##\s+(.+)$", text, flags=re.M)
            if m:
                section = m.group(1).strip()
            if re.match(r"^##\s+Summary", text):
                out.append(slide(c))
            continue
        if section is None or section.lower().split("·")[-1].strip() in SLIDE_SKIP:
            continue
        if section in shown or n_fig >= max_figures:
            continue
        imgs = [o for o in c.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {}))]
        if not imgs:
            continue
        shown.add(section)
        n_fig += 1
        out.append(slide({"cell_type": "markdown", "metadata": {}, "source": f"## {section}"}))
        fig = {"cell_type": "code", "metadata": {}, "execution_count": None, "source": "",
               "outputs": [{k: v for k, v in imgs[0].items() if k != "execution_count"}
                           | {"output_type": "display_data"}]}
        fig["outputs"][0].setdefault("metadata", {})
        out.append(slide(fig, "fragment"))
    for i, c in enumerate(out):
        c["id"] = f"slide-{i}"
    deck = {k: v for k, v in nb.items() if k != "cells"}
    deck["cells"] = out
    return deck


def build_slides(out: Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Write one reveal.js deck per notebook into ``out`` (``NN_topic.html``), with
    reveal.js and MathJax copied beside them so the decks open offline."""
    import nbformat
    from nbconvert import SlidesExporter

    from . import runner

    nbs = notebooks if notebooks is not None else runner.all_notebooks()
    out.mkdir(parents=True, exist_ok=True)
    copy_revealjs(out / "reveal.js")
    copy_mathjax(out / "mathjax")
    shutil.copy2(site_source_dir() / "_static" / "favicon.svg", out / "favicon.svg")
    exporter = SlidesExporter(
        extra_template_paths=[str(site_source_dir() / "slides")],
        template_file="course_reveal.html.j2",
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
        reveal_url_prefix="reveal.js", reveal_theme="white", reveal_transition="none")
    written = []
    for p in nbs:
        deck = nbformat.from_dict(slide_notebook(nbformat.read(p, as_version=4)))
        body, _ = exporter.from_notebook_node(deck, resources={"metadata": {"name": p.stem}})
        dst = out / f"{p.stem}.html"
        dst.write_text(body, encoding="utf-8")
        written.append(dst)
    return written


# --------------------------------------------------------------------------- site

def build_site(out: Path, repo_url: str | None = None, branch: str | None = None,
               notebooks: list[Path] | None = None, slides: bool = True,
               jobs: int = 1) -> dict[str, Any]:
    """Build the website into ``out`` (``out/index.html``); sources are staged in
    ``<out>-src``. Returns ``{"pages": [...], "seconds": float, "warnings": [...],
    "lessons": [...]}``; raises :class:`CourseError` when Sphinx fails."""
    t0 = time.perf_counter()
    out = Path(out).resolve()
    src = out.with_name(out.name + "-src")
    repo_url = repo_url or os.environ.get(REPO_ENV) or DEFAULT_REPO_URL
    branch = branch or os.environ.get(BRANCH_ENV) or "main"
    lessons = stage(src, repo_url, branch, notebooks)
    env = dict(os.environ, **{REPO_ENV: repo_url, BRANCH_ENV: branch})
    env.pop("SOURCE_DATE_EPOCH", None)
    warn_file = src / "warnings.txt"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", str(jobs),
           "-c", str(site_source_dir()), "-d", str(src / ".doctrees"), "-w", str(warn_file),
           str(src), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    warnings = [w for w in (warn_file.read_text().splitlines() if warn_file.exists() else []) if w.strip()]
    if proc.returncode != 0:
        raise CourseError(f"sphinx failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    copy_mathjax(out / "_static" / "mathjax")
    if slides:
        build_slides(out / "slides", notebooks)
    pages = sorted(str(p.relative_to(out)) for p in out.rglob("*.html") if _is_page(p.relative_to(out)))
    return {"pages": pages, "seconds": time.perf_counter() - t0, "warnings": warnings,
            "lessons": [les["stem"] for les in lessons], "out": out}


# --------------------------------------------------------------------------- browser check

def _is_page(rel: Path) -> bool:
    """A page of the site (not a theme/static file, not a slide deck)."""
    return len(rel.parts) == 1 or not rel.parts[0].startswith(("_", "slides"))


def find_chromium() -> str:
    """Path of a Chromium/Chrome binary (``$CHROMIUM`` first); raises with how to install it."""
    cands = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome",
             "google-chrome-stable"]
    for c in cands:
        if c and shutil.which(c):
            return shutil.which(c)
    raise CourseError("no Chromium found for the site check: install Debian's package "
                      "(sudo apt-get install chromium; scripts/setup.sh does it when it may) "
                      "or set CHROMIUM=/path/to/chrome")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # noqa: D102 - silence the access log
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class CDP:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CourseError(f"DevTools {method} failed: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            self.events.append(msg)
        raise CourseError(f"timed out waiting for {method}")

    def evaluate(self, expr: str, timeout: float = 30.0) -> Any:
        res = self.send("Runtime.evaluate", expression=expr, awaitPromise=True,
                        returnByValue=True, timeout=int(timeout * 1000))
        if "exceptionDetails" in res:
            raise CourseError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def close(self) -> None:
        self.ws.close()


_CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--no-pings", "--no-proxy-server",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    # The site must not need anything from outside: every other host fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,900", "--hide-scrollbars", "--mute-audio",
]

# Run in each page once it has loaded: decode every image, wait for MathJax, then report.
_PAGE_CHECK = r"""
(async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  const settle = p => Promise.race([p.catch(() => null), new Promise(r => setTimeout(r, 10000))]);
  await Promise.all(imgs.map(i => settle(i.decode())));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await settle(MathJax.startup.promise);
  const href = sel => { const a = document.querySelector(sel); return a ? a.href : null; };
  return {
    url: location.href, title: document.title,
    images: imgs.map(i => ({src: (i.currentSrc || i.src).slice(0, 200), ok: i.complete && i.naturalWidth > 0,
                            w: i.naturalWidth, h: i.naturalHeight})),
    next: href('a.right-next'), prev: href('a.left-prev'),
    math: document.querySelectorAll('mjx-container').length,
    math_errors: document.querySelectorAll('mjx-merror').length,
    text_length: document.body ? document.body.innerText.length : 0,
  };
})()
"""


@contextlib.contextmanager
def chromium_page(timeout: float = 30.0) -> Iterator[CDP]:
    """Start headless Chromium (a fresh profile) and yield a DevTools client for its page."""
    exe = find_chromium()
    profile = Path(tempfile.mkdtemp(prefix="course-chromium-"))
    proc = subprocess.Popen([exe, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CourseError(f"{exe} did not start its DevTools server (exit {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        cdp = CDP(page["webSocketDebuggerUrl"], timeout=timeout)
        for domain in ("Page", "Runtime", "Log"):
            cdp.send(f"{domain}.enable")
        cdp.send("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                 deviceScaleFactor=1, mobile=False)
        yield cdp
    finally:
        if cdp is not None:
            with contextlib.suppress(Exception):
                cdp.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among DevTools events."""
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
    return out


def _load(cdp: CDP, url: str, timeout: float = 30.0) -> dict:
    cdp.events.clear()
    cdp.send("Page.navigate", url=url)
    cdp.wait_for("Page.loadEventFired", timeout=timeout)
    report = cdp.evaluate(_PAGE_CHECK, timeout=timeout)
    time.sleep(0.2)  # let late console messages arrive
    with contextlib.suppress(Exception):
        cdp.evaluate("1", timeout=5)
    report["errors"] = _errors(cdp.events)
    return report


def _screenshot(cdp: CDP, path: Path) -> None:
    """The top of the page into ``path``, and, when the page has stored figures, the first
    one scrolled into view into ``<path stem>-figure.png``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(cdp.send("Page.captureScreenshot", format="png")["data"]))
    if cdp.evaluate("""(() => { const i = document.querySelector('.cell_output img');
            if (!i) return false; i.scrollIntoView({block: 'center'}); return true; })()"""):
        time.sleep(0.3)
        shot = cdp.send("Page.captureScreenshot", format="png")["data"]
        path.with_name(path.stem + "-figure.png").write_bytes(base64.b64decode(shot))
        cdp.evaluate("window.scrollTo(0, 0), true")


def check_site(html_dir: Path, screenshots: dict[str, Path] | None = None,
               search_term: str = "Canny") -> dict[str, Any]:
    """Load every page of a built site in headless Chromium and report what a reader would
    hit. Returns ``{"pages": {rel: report}, "search": {...}, "click_next": {...}}``, where each
    report has ``errors`` (console errors, exceptions, failed loads), ``images`` (with ``ok``:
    loaded and decoded with a non-zero natural size), ``next``/``prev`` links. ``screenshots``
    maps a page (``"index.html"``) to a PNG path to write."""
    html_dir = Path(html_dir)
    pages = sorted(str(p.relative_to(html_dir)) for p in html_dir.rglob("*.html")
                   if _is_page(p.relative_to(html_dir)))
    out: dict[str, Any] = {"pages": {}}
    with serve(html_dir) as base, chromium_page() as cdp:
        for rel in pages:
            out["pages"][rel] = _load(cdp, base + rel)
            if screenshots and rel in screenshots:
                _screenshot(cdp, Path(screenshots[rel]))
        for deck in sorted((html_dir / "slides").glob("*.html")):
            out.setdefault("slides", {})[deck.name] = _load(cdp, base + f"slides/{deck.name}")
        # Search: the results list fills in from the offline search index.
        rep = _load(cdp, base + f"search.html?q={search_term}")
        hits = cdp.evaluate("""new Promise(res => { const t0 = Date.now(); (function poll() {
            const n = document.querySelectorAll('#search-results li, ul.search li').length;
            if (n > 0 || Date.now() - t0 > 15000) res(n); else setTimeout(poll, 100); })(); })""")
        out["search"] = {"term": search_term, "hits": hits, "errors": rep["errors"]}
        # Navigation: clicking "next" on the home page opens the first lesson.
        _load(cdp, base + "index.html")
        cdp.events.clear()
        cdp.evaluate("document.querySelector('a.right-next').click(), true")
        cdp.wait_for("Page.loadEventFired")
        out["click_next"] = {"landed": cdp.evaluate("location.href")}
    return out


def problems(report: dict[str, Any]) -> list[str]:
    """Everything a reader would trip over, from :func:`check_site`'s report (empty: none):
    console errors and failed loads, images that did not decode, a broken previous/next
    chain through the lessons, a search that finds nothing, a "next" click that goes nowhere."""
    out = []
    pages = report["pages"]
    for group in ("pages", "slides"):
        for rel, rep in report.get(group, {}).items():
            out += [f"{rel}: {e}" for e in rep["errors"]]
            out += [f"{rel}: image not decoded: {i['src'][:80]}" for i in rep["images"] if not i["ok"]]
            out += [f"{rel}: {rep['math_errors']} formulas failed to typeset"] if rep.get("math_errors") else []
            if rep.get("text_length", 1) == 0:
                out.append(f"{rel}: blank page")
    base = pages["index.html"]["url"].rsplit("index.html", 1)[0]
    by_url = {rep["url"].split("#")[0]: rel for rel, rep in pages.items()}
    chain, url = ["index.html"], pages["index.html"]["next"]
    while url and len(chain) <= len(pages):
        rel = by_url.get(url.split("#")[0])
        if rel is None:
            out.append(f"{chain[-1]}: its next link {url} is not a page of the site")
            break
        if pages[rel]["prev"] != base + chain[-1]:
            out.append(f"{rel}: previous link is {pages[rel]['prev']}, expected {base + chain[-1]}")
        chain.append(rel)
        url = pages[rel]["next"]
    lessons = sorted(r for r in pages if r.startswith("notebooks/"))
    if [r for r in chain if r.startswith("notebooks/")] != lessons:
        out.append(f"next links do not walk through the lessons in order: {chain}")
    if report["search"]["hits"] == 0 or report["search"]["errors"]:
        out.append(f"search for {report['search']['term']!r}: {report['search']}")
    if report["click_next"]["landed"] != base + (lessons[0].removesuffix(".html") + ".html" if lessons else ""):
        out.append(f"clicking next on the home page landed on {report['click_next']['landed']}")
    return out
