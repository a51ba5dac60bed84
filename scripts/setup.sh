#!/usr/bin/env bash
# Create .venv, install the locked environment into it and obtain the data.
# Safe to run again: it reinstalls only when requirements.lock or pyproject.toml changed.
# COURSE_KIT=DIR installs from a workshop kit made by `course pack DIR`, with no network.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" - <<'PYCHECK'
import sys
if not ((3, 11) <= sys.version_info[:2] < (3, 13)):
    sys.exit(f"Python 3.11 or 3.12 is needed (the lock is made for 3.11), found {sys.version.split()[0]}; "
             "set PYTHON=/path/to/python3.11 and run again")
PYCHECK
  echo "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi

PIP_SOURCE=()
if [ -n "${COURSE_KIT:-}" ]; then
  if [ ! -d "$COURSE_KIT/wheels" ]; then
    echo "error: COURSE_KIT=$COURSE_KIT has no wheels/ folder; expected a kit made by \`course pack\`" >&2
    exit 1
  fi
  PIP_SOURCE=(--no-index --find-links "$COURSE_KIT/wheels")
fi

# the same digest as `cat requirements.lock pyproject.toml | sha256sum`, also where that tool is missing (macOS)
stamp=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("requirements.lock", "rb").read() + open("pyproject.toml", "rb").read()).hexdigest())')
if [ "$(cat .venv/.installed 2>/dev/null || true)" != "$stamp" ]; then
  echo "installing the locked environment into .venv (a few minutes the first time)${COURSE_KIT:+, from the kit $COURSE_KIT}"
  rm -f .venv/.installed
  .venv/bin/python -m pip install --quiet --disable-pip-version-check ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} \
    --no-deps -r requirements.lock
  .venv/bin/python -m pip install --quiet --disable-pip-version-check ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} \
    --no-deps --no-build-isolation -e .
  echo "$stamp" > .venv/.installed
else
  echo ".venv is up to date"
fi

# Data: Fashion-MNIST from the cache, the system folder, the kit, the Debian package (where
# apt-get may run) or the official release (online); a clear error naming each way otherwise.
.venv/bin/python -c 'import sys; from course_lib import kit; sys.exit(kit.setup_assets())'

# --- Chromium, for the website's browser check (tests/test_site.py, `course site --check`) ---
# Debian's package, installed where apt-get may run (root or passwordless sudo); else say how.
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo -n)
    echo "installing Debian's chromium for the website check"
    { ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq \
      && ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "note: installing chromium failed; the website check fails until it is there (sudo apt-get install chromium, or CHROMIUM=/path/to/chrome)"
  else
    echo "note: the website check (tests/test_site.py) needs Chromium: sudo apt-get install chromium, or set CHROMIUM=/path/to/chrome"
  fi
fi
