#!/usr/bin/env bash
# The quickstart with a weak model of another family: cross-tokenizer WSPO on the CPU, in a few minutes.
#   1. SFT of a weak model with a byte-level BPE tokenizer and the llama3 template, and of a strong model with the
#      word-level tokenizer and the qwen template of scripts/quickstart.sh;
#   2. DPO of the weak SFT model towards short answers (in its own tokenizer and template);
#   3. WSPO of the strong SFT model with `weak_template: llama3`: the weak shift is moved onto the strong tokens;
#   4. evaluation of the four models, each in its own template, as in scripts/quickstart.sh (table + bar plot).
# Usage, from anywhere in a clone: bash scripts/quickstart_cross.sh   (SEED=1 ...: other seed)
# Needs the environment of scripts/quickstart.sh (.venv); everything goes to demo_runs/cross/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x .venv/bin/llamafactory-cli ]]; then
    echo "[quickstart_cross] run scripts/quickstart.sh once first: it creates .venv" >&2
    exit 1
fi
WORK=demo_runs/cross
source scripts/demo/common.sh

run_step assets python scripts/tiny_assets.py all "$WORK/assets" --seed "$SEED" --model strong:64:2
run_step weak_family python scripts/demo/weak_family.py "$WORK/assets/bpe" --data "$WORK/assets/data" \
    --seed "$SEED"
for step in weak_sft strong_sft weak_dpo strong_wspo; do
    run_step "$step" llamafactory-cli train "scripts/demo/cross/$step.yaml" seed="$SEED"
done
evaluate "weak SFT=weak_sft:llama3" "weak DPO=weak_dpo:llama3" "strong SFT=strong_sft:qwen" \
    "strong WSPO=strong_wspo:qwen"
