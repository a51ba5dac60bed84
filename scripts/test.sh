#!/usr/bin/env bash
# Set up (if needed) and run every test offline: unit tests of course_lib, then every
# notebook under nbval at the smoke profile. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 COURSE_SCALE=smoke MPLBACKEND=Agg PYTHONHASHSEED=0
exec .venv/bin/python -m pytest tests notebooks -p no:cacheprovider \
  --nbval-lax --nbval-cell-timeout=600 --sanitize-with tests/sanitize.cfg "$@"
