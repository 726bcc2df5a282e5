#!/usr/bin/env bash
# A miniature weak-to-strong experiment on the CPU, in a few minutes, entirely through `llamafactory-cli train`:
#   1. SFT of a weak (small) and a strong (larger) random-init model on a toy task: list N words of a category;
#   2. DPO of the weak SFT model towards short answers;
#   3. WSPO of the strong SFT model: it learns the weak model's alignment shift, with no preference pairs;
#   4. evaluation of the four models: length of sampled answers on held-out prompts (table + bar plot).
# Usage, from anywhere in a clone: bash scripts/quickstart.sh   (SEED=1 bash scripts/quickstart.sh: other seed)
# Creates .venv with $PYTHON (default python3, >= 3.11) if missing; everything else goes to demo_runs/ (git-ignored).
# Needs no network after the install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SEED="${SEED:-0}"
WORK=demo_runs
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The models are tiny: one thread per process is several times faster than two contending ones.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [[ ! -x .venv/bin/llamafactory-cli ]]; then
    echo "[quickstart] creating .venv and installing llamafactory-wspo (a few minutes)"
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --disable-pip-version-check -c scripts/constraints.txt -e .
fi
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$WORK/logs"

# run_step NAME COMMAND...: runs COMMAND with its output in $WORK/logs/NAME.log and prints its duration.
run_step() {
    local name=$1 start
    shift
    start=$(date +%s%N)
    if ! "$@" >"$WORK/logs/$name.log" 2>&1; then
        tail -n 40 "$WORK/logs/$name.log"
        echo "[quickstart] step '$name' failed, full log: $WORK/logs/$name.log" >&2
        exit 1
    fi
    print_duration "$name" "$start"
}

# print_duration NAME START_NS
print_duration() {
    LC_NUMERIC=C printf "[quickstart] %-12s %6.1f s\n" "$1" "$((($(date +%s%N) - $2) / 1000000))e-3"
}

total_start=$(date +%s%N)
run_step assets python scripts/tiny_assets.py all "$WORK/assets" --seed "$SEED" \
    --model weak:32:1 --model strong:64:2
for step in weak_sft strong_sft weak_dpo strong_wspo; do
    run_step "$step" llamafactory-cli train "scripts/demo/$step.yaml" seed="$SEED"
done
run_step evaluate python scripts/demo/evaluate.py --data "$WORK/assets/data/tiny_sft_eval.json" --seed "$SEED" \
    --model "weak SFT=$WORK/weak_sft" --model "weak DPO=$WORK/weak_dpo" \
    --model "strong SFT=$WORK/strong_sft" --model "strong WSPO=$WORK/strong_wspo" \
    --json "$WORK/quickstart_results.json" --plot "$WORK/quickstart_results.png"
print_duration total "$total_start"
echo
grep -A 5 "^model" "$WORK/logs/evaluate.log"
