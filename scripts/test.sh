#!/usr/bin/env bash
# Set up (if needed) and run every test offline: unit tests of course_lib, then every
# notebook under nbval at the smoke profile. Extra arguments go to pytest.
# COURSE_KIT=DIR sets up from a workshop kit (`course pack DIR`) with no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# COURSE_HEADLESS=1: no frontend here, so widgets draw a static view and progress bars are
# text (a widget without a frontend can stall nbclient); a cell past 300 s fails, naming itself
export HF_HUB_OFFLINE=1 COURSE_SCALE=smoke COURSE_HEADLESS=1 MPLBACKEND=Agg PYTHONHASHSEED=0
exec .venv/bin/python -m pytest tests notebooks -p no:cacheprovider \
  --nbval-lax --nbval-cell-timeout=300 --sanitize-with tests/sanitize.cfg "$@"
