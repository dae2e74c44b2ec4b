#!/usr/bin/env bash
# The main job in miniature, offline, one command from a fresh clone: install into .venv, train
# MiniLM without and with ASA on the same MR data, attack both with DeepWordBug on the same 50
# examples, print the comparison and write runs/quickstart/report.md with its plots.
#   bash scripts/quickstart.sh                                   # about 10 minutes on 2 CPU cores
#   bash scripts/quickstart.sh --set train.max_steps=20          # extra arguments go to advrobust bench
# Rerunning skips what is finished; an interrupted run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then  # an active virtualenv is used as it is
    bash scripts/install.sh
    . .venv/bin/activate
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=runs/quickstart
for arg in "$@"; do
    case "$arg" in bench.out_dir=*) out="${arg#bench.out_dir=}" ;; esac
done
advrobust bench examples/quickstart-bench.toml --no-progress "$@"
# The comparison: report.md up to its training-cost section (the defence x attack table and, when
# the bench computes them, the paired differences).
sed -n '/^## Defence x attack/,/^## Training cost/p' "$out/report.md" | sed '$d'
echo "Full report: $out/report.md (plots beside it)"
