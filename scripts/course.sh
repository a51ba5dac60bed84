#!/usr/bin/env bash
# Set up (if needed) and run the whole course headless at the default profile.
# Extra arguments go to `course run`, e.g.  bash scripts/course.sh 02 03 --scale smoke
# COURSE_KIT=DIR sets up from a workshop kit (`course pack DIR`) with no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/course doctor || echo "(the doctor found something missing: see above)"
.venv/bin/course run "$@"
echo
echo "Open the executed notebooks in JupyterLab:  .venv/bin/jupyter lab notebooks/"
