"""The ``course`` command: doctor, fetch, run, student, results, site, slides, pack.

Introduced in notebook 00::

    course doctor                 # versions, device, offline/online, cache, assets
    course fetch                  # materialise every asset into the cache (before a workshop)
    course run [NB ...] --scale default
    course student                # write the student edition into student/
    course results                # regenerate the README tables from results/
    course site [--out DIR]       # the course website from the stored notebooks (+ slides)
    course slides [NB ...]        # one reveal.js slide deck per notebook
    course pack DIR               # an offline workshop kit: wheels, data, checkpoints
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time

from . import config
from .config import CourseError

PACKAGES = ("numpy", "torch", "transformers", "tokenizers", "cv2", "skimage", "sklearn",
            "matplotlib", "onnxruntime", "nbclient", "peft", "gguf")


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - report any import failure
        return f"MISSING ({type(e).__name__})"


def doctor_report() -> tuple[list[tuple[str, str, str]], bool]:
    """Rows (item, status, detail) and whether every offline asset is present."""
    rows: list[tuple[str, str, str]] = []
    t0 = time.perf_counter()
    online = config.is_online()
    decided_in = time.perf_counter() - t0
    rows.append(("python", "ok", platform.python_version()))
    for mod in PACKAGES:
        v = _version(mod)
        rows.append((mod, "MISSING" if v.startswith("MISSING") else "ok", v))
    try:
        dev = config.device()
        rows.append(("device", "ok", str(dev)))
    except ImportError:
        rows.append(("device", "MISSING", "torch is not installed"))
    rows.append(("network", "ok", f"{'online' if online else 'offline'} (decided in {decided_in:.2f} s)"))
    rows.append(("scale", "ok", config.scale()))
    rows.append(("cache", "ok", config.display_path(config.cache_dir())))
    all_ok = all(r[1] == "ok" for r in rows)
    from . import data

    for key in data.FASHION_FILES:
        try:
            p = data.fashion_mnist_file(key, allow_download=False)
            rows.append((f"fashion-mnist {key}", "ok", config.display_path(p)))
        except CourseError:
            all_ok = False
            rows.append((f"fashion-mnist {key}", "MISSING",
                         "sudo apt-get install dataset-fashion-mnist  (or `course fetch` online)"))
    bad_photos = []
    for name in data.list_photos():
        try:
            data.load_photo(name)
        except Exception:  # noqa: BLE001
            bad_photos.append(name)
    rows.append(("photos", "ok" if not bad_photos else "MISSING",
                 f"{len(data.list_photos()) - len(bad_photos)}/{len(data.list_photos())} bundled photos load"
                 + (f"; missing {bad_photos}" if bad_photos else "")))
    all_ok &= not bad_photos
    from . import inspection

    elpv_ok = inspection.available()
    all_ok &= elpv_ok
    rows.append(("data elpv", "ok" if elpv_ok else "MISSING",
                 ("2,624 EL solar cells (package elpv-dataset); licence CC BY-NC-SA 4.0, non-commercial use only"
                  if elpv_ok else f"pip install --no-deps {inspection.PACKAGE_PIN}  (data licence CC BY-NC-SA 4.0)")))
    try:
        from . import models

        for st in models.asset_status():
            ok = bool(st.get("present", st.get("offline")))
            if not ok and not st.get("online_only"):
                all_ok = False
            status = "ok" if ok else ("online only" if st.get("online_only") else "MISSING")
            rows.append((f"model {st['name']}", status, st.get("source", "") if ok else st.get("fix", "")))
    except ImportError as e:
        all_ok = False
        rows.append(("models", "MISSING", str(e)))
    return rows, all_ok


def cmd_doctor(args: argparse.Namespace) -> int:
    rows, ok = doctor_report()
    width = max(len(r[0]) for r in rows)
    for item, status, detail in rows:
        print(f"{item:<{width}}  {status:<11}  {detail}")
    print("\nall offline assets present" if ok else "\nsome offline assets are missing: see the fixes above")
    return 0 if ok else 1


def cmd_fetch(args: argparse.Namespace) -> int:
    from . import data

    failed = []
    targets = args.assets or ["fashion-mnist", "models"]
    if "fashion-mnist" in targets:
        for key in data.FASHION_FILES:
            try:
                print(f"fashion-mnist {key}: {config.display_path(data.fashion_mnist_file(key))}")
            except CourseError as e:
                failed.append(str(e))
    from . import inspection, models

    if "fashion-mnist" in targets or "elpv" in targets:   # a pip package: nothing to download here
        if inspection.available():
            print("elpv: installed (package elpv-dataset; data licence CC BY-NC-SA 4.0)")
        else:
            failed.append(f"elpv: not installed: pip install --no-deps {inspection.PACKAGE_PIN}")
    for st in models.asset_status():
        name = st["name"]
        if "models" not in targets and name not in targets:
            continue
        if st.get("online_only") and not config.is_online():
            print(f"{name}: online only, skipped offline")
            continue
        try:
            print(f"{name}: {config.display_path(models.fetch(name))}")
        except CourseError as e:
            failed.append(f"{name}: {e}")
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import runner

    return runner.run(args.notebooks, scale=args.scale, inplace=args.inplace, timeout=args.timeout)


def cmd_student(args: argparse.Namespace) -> int:
    from . import runner, student

    out = config.REPO_ROOT / args.out if config.REPO_ROOT else None
    if out is None:
        raise CourseError("course student needs a clone of the course repository")
    for p in student.write_student_edition(runner.find_notebooks(args.notebooks), out):
        print(config.display_path(p))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from . import kit

    kit.pack(args.dir, data=not args.no_data, models=not args.no_models)
    return 0


def cmd_site(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import site

    out = Path(args.out)
    if site.update_teaching_guide():
        print("TEACHING.md: its times and numbers refreshed from results/")
    report = site.build_site(out, repo_url=args.repo_url, branch=args.branch)
    print(f"{len(report['pages'])} pages in {report['seconds']:.1f} s: "
          f"{config.display_path(Path(report['out']) / 'index.html')}")
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.check:
        shots = {p: Path(args.screenshots) / (p.replace("/", "_").removesuffix(".html") + ".png")
                 for p in ("index.html", "notebooks/02_edges.html")} if args.screenshots else None
        problems = site.problems(site.check_site(report["out"], screenshots=shots))
        for pr in problems:
            print(f"PROBLEM: {pr}", file=sys.stderr)
        print("browser check: " + ("no console errors, every image decoded, navigation works"
                                   if not problems else f"{len(problems)} problems"))
        return 1 if problems else 0
    return 0


def cmd_slides(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import runner, site

    for p in site.build_slides(Path(args.out), runner.find_notebooks(args.notebooks)):
        print(config.display_path(p))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from . import results

    path = results.results_path("default", "cpu")
    records = json.loads(path.read_text()) if path.exists() else []
    print(results.markdown_table(records))
    readme = config.REPO_ROOT / "README.md" if config.REPO_ROOT else None
    if readme is not None and readme.exists():
        results.update_readme(readme, records, results.load_timings("cpu"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="course", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="check versions, device, network and offline assets")
    p = sub.add_parser("fetch", help="materialise assets in the cache (run online before a workshop)")
    p.add_argument("assets", nargs="*", help="fashion-mnist, elpv, models, or model names (default: all)")
    p = sub.add_parser("run", help="execute notebooks headless and collect their results")
    p.add_argument("notebooks", nargs="*", help="e.g. 02 or 02_edges (default: all)")
    p.add_argument("--scale", choices=config.SCALES, default=None, help="default: $COURSE_SCALE or 'default'")
    p.add_argument("--inplace", action=argparse.BooleanOptionalAction, default=None,
                   help="write executed notebooks back into notebooks/ (default: only at the default scale)")
    p.add_argument("--timeout", type=int, default=None,
                   help="per-cell timeout in seconds (default: 4x the notebook's measured wall time, 300-1800)")
    p = sub.add_parser("student", help="write the student edition (solutions blanked)")
    p.add_argument("notebooks", nargs="*")
    p.add_argument("--out", default="student")
    sub.add_parser("results", help="print the results table and refresh README.md")
    p = sub.add_parser("site", help="build the course website from the stored notebooks")
    p.add_argument("--out", default="build/site", help="output folder (default: build/site)")
    p.add_argument("--repo-url", default=None,
                   help="public repository for the launch links (default: $COURSE_REPO_URL or a placeholder)")
    p.add_argument("--branch", default=None, help="its branch (default: $COURSE_BRANCH or main)")
    p.add_argument("--check", action="store_true", help="then load every page in headless Chromium")
    p.add_argument("--screenshots", default=None, help="with --check: write PNG screenshots here")
    p = sub.add_parser("slides", help="write one reveal.js slide deck per notebook")
    p.add_argument("notebooks", nargs="*")
    p.add_argument("--out", default="build/slides")
    p = sub.add_parser("pack", help="write an offline workshop kit into DIR (run online)")
    p.add_argument("dir", help="folder for the kit (outside the clone, e.g. on a USB stick)")
    p.add_argument("--no-data", action="store_true", help="leave Fashion-MNIST out")
    p.add_argument("--no-models", action="store_true", help="leave the converted checkpoints out")
    args = parser.parse_args(argv)
    handler = {"doctor": cmd_doctor, "fetch": cmd_fetch, "run": cmd_run,
               "student": cmd_student, "results": cmd_results,
               "site": cmd_site, "slides": cmd_slides, "pack": cmd_pack}[args.cmd]
    try:
        return handler(args)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
