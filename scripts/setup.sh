#!/usr/bin/env bash
# Create .venv and install the locked environment into it.
# Safe to run again: it reinstalls only when requirements.lock or pyproject.toml changed.
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

stamp=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.installed 2>/dev/null || true)" != "$stamp" ]; then
  echo "installing the locked environment into .venv (a few minutes the first time)"
  rm -f .venv/.installed
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$stamp" > .venv/.installed
else
  echo ".venv is up to date"
fi

# Fashion-MNIST: the Debian package is the offline source; elsewhere the course downloads it.
if ! .venv/bin/python -c "from course_lib import data; [data.fashion_mnist_file(k, allow_download=False) for k in data.FASHION_FILES]" 2>/dev/null; then
  echo "note: Fashion-MNIST is not on this machine yet. Offline: sudo apt-get install dataset-fashion-mnist;"
  echo "      online: it is downloaded (and checksummed) on first use, or now with .venv/bin/course fetch"
fi
