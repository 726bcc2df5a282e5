#!/usr/bin/env bash
# A miniature weak-to-strong experiment on the CPU, in a few minutes, entirely through `llamafactory-cli train`:
#   1. SFT of a weak (small) and a strong (larger) random-init model on a toy task: list N words of a category;
#   2. DPO of the weak SFT model towards short answers;
#   3. WSPO of the strong SFT model: it learns the weak model's alignment shift, with no preference pairs;
#   4. evaluation of the four models: answers sampled on held-out prompts by `llamafactory-wspo generate`, their
#      length and topic (table + bar plot).
# Usage, from anywhere in a clone: bash scripts/quickstart.sh   (SEED=1 bash scripts/quickstart.sh: other seed)
# Creates .venv with $PYTHON (default python3, >= 3.11) if missing; everything else goes to demo_runs/ (git-ignored).
# Needs no network after the install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/llamafactory-cli ]]; then
    echo "[quickstart] creating .venv and installing llamafactory-wspo (a few minutes)"
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --disable-pip-version-check -c scripts/constraints.txt -e .
fi
WORK=demo_runs
source scripts/demo/common.sh

run_step assets python scripts/tiny_assets.py all "$WORK/assets" --seed "$SEED" \
    --model weak:32:1 --model strong:64:2
for step in weak_sft strong_sft weak_dpo strong_wspo; do
    run_step "$step" llamafactory-cli train "scripts/demo/$step.yaml" seed="$SEED"
done
evaluate "weak SFT=weak_sft:qwen" "weak DPO=weak_dpo:qwen" "strong SFT=strong_sft:qwen" "strong WSPO=strong_wspo:qwen"
