#!/usr/bin/env bash
# The quickstart with a weak model of another family: cross-tokenizer WSPO on the CPU, in a few minutes.
#   1. SFT of a weak model with a byte-level BPE tokenizer and the llama3 template, and of a strong model with the
#      word-level tokenizer and the qwen template of scripts/quickstart.sh;
#   2. DPO of the weak SFT model towards short answers (in its own tokenizer and template);
#   3. WSPO of the strong SFT model with `weak_template: llama3`: the weak shift is moved onto the strong tokens;
#   4. evaluation of the four models: length of sampled answers on held-out prompts (table + bar plot).
# Usage, from anywhere in a clone: bash scripts/quickstart_cross.sh   (SEED=1 ...: other seed)
# Needs the environment of scripts/quickstart.sh (.venv); everything goes to demo_runs/cross/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SEED="${SEED:-0}"
WORK=demo_runs/cross
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [[ ! -x .venv/bin/llamafactory-cli ]]; then
    echo "[quickstart_cross] run scripts/quickstart.sh once first: it creates .venv" >&2
    exit 1
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
        echo "[quickstart_cross] step '$name' failed, full log: $WORK/logs/$name.log" >&2
        exit 1
    fi
    LC_NUMERIC=C printf "[quickstart_cross] %-12s %6.1f s\n" "$name" "$((($(date +%s%N) - start) / 1000000))e-3"
}

run_step assets python scripts/tiny_assets.py all "$WORK/assets" --seed "$SEED" --model strong:64:2
run_step weak_family python scripts/demo/weak_family.py "$WORK/assets/bpe" --data "$WORK/assets/data" \
    --seed "$SEED"
for step in weak_sft strong_sft weak_dpo strong_wspo; do
    run_step "$step" llamafactory-cli train "scripts/demo/cross/$step.yaml" seed="$SEED"
done
run_step evaluate python scripts/demo/evaluate.py --data "$WORK/assets/data/tiny_sft_eval.json" --seed "$SEED" \
    --model "weak SFT=$WORK/weak_sft" --model "weak DPO=$WORK/weak_dpo" \
    --model "strong SFT=$WORK/strong_sft" --model "strong WSPO=$WORK/strong_wspo" \
    --template "weak SFT=llama3" --template "weak DPO=llama3" \
    --json "$WORK/quickstart_results.json" --plot "$WORK/quickstart_results.png"
echo
grep -A 5 "^model" "$WORK/logs/evaluate.log"
