#!/usr/bin/env bash
# One command from a fresh clone: create .venv, install, fine-tune MiniLM offline for 200 steps.
#   bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch==2.13.0 first: any other torch request pulls the newest CUDA build (several GB).
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[offline,test]"
export HF_HUB_OFFLINE=1
advrobust train examples/quickstart.toml "$@"
cat runs/quickstart-vanilla/metrics.json
