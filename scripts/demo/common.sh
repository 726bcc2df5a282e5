# The helpers of scripts/quickstart.sh and scripts/quickstart_cross.sh; sourced from the checkout's root, after
# .venv exists and WORK names the output folder. Sets SEED (default 0), the offline environment, PATH and $WORK/logs.

SEED="${SEED:-0}"
QUICKSTART="$(basename "$0" .sh)"  # the prefix of the progress lines
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The models are tiny: one thread per process is several times faster than two contending ones.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$WORK/logs"
QUICKSTART_START=$(date +%s%N)

# print_duration NAME START_NS
print_duration() {
    LC_NUMERIC=C printf "[%s] %-20s %6.1f s\n" "$QUICKSTART" "$1" "$((($(date +%s%N) - $2) / 1000000))e-3"
}

# run_step NAME COMMAND...: runs COMMAND with its output in $WORK/logs/NAME.log and prints its duration.
run_step() {
    local name=$1 start
    shift
    start=$(date +%s%N)
    if ! "$@" >"$WORK/logs/$name.log" 2>&1; then
        tail -n 40 "$WORK/logs/$name.log"
        echo "[$QUICKSTART] step '$name' failed, full log: $WORK/logs/$name.log" >&2
        exit 1
    fi
    print_duration "$name" "$start"
}

# evaluate "NAME=DIR:TEMPLATE"...: each model $WORK/DIR, in its chat template, answers the held-out prompts through
# the package's `llamafactory-wspo generate` (4 samples per prompt at temperature 1, 32 new tokens, seed $SEED + the
# prompt's index) into $WORK/answers/DIR.jsonl; scripts/demo/evaluate.py scores them into
# $WORK/quickstart_results.json and .png. Prints the total time and the table.
evaluate() {
    local spec name dir template answers=()
    mkdir -p "$WORK/answers"
    for spec in "$@"; do
        name=${spec%%=*} dir=${spec#*=}
        template=${dir#*:} dir=${dir%%:*}
        run_step "generate_$dir" llamafactory-wspo generate model_name_or_path="$WORK/$dir" template="$template" \
            input_file="$WORK/assets/data/tiny_sft_eval.json" output_file="$WORK/answers/$dir.jsonl" \
            num_samples=4 temperature=1.0 top_p=1.0 max_new_tokens=32 seed="$SEED" \
            infer_backend=huggingface infer_dtype=float32 overwrite=true
        answers+=(--answers "$name=$WORK/answers/$dir.jsonl")
    done
    run_step evaluate python scripts/demo/evaluate.py "${answers[@]}" \
        --json "$WORK/quickstart_results.json" --plot "$WORK/quickstart_results.png"
    print_duration total "$QUICKSTART_START"
    echo
    cat "$WORK/logs/evaluate.log"
}
