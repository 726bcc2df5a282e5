#!/usr/bin/env bash
# Run pytest test ids N times each, one fresh pytest per run, round-robin over the ids, and count passes and
# failures per id. Used to show that the two-process tests do not fail at random (issue 21, defect 1).
#   bash scripts/repeat_two_process.sh N TEST_ID [TEST_ID ...]
#   e.g. nice -n 10 bash scripts/repeat_two_process.sh 50 \
#          tests/test_grpo_train.py::test_deepspeed_zero3_two_processes \
#          tests/test_wpo_train.py::test_deepspeed_zero3_two_processes \
#          "tests/test_wspo_train.py::test_deepspeed_zero3_two_processes[True]"
# The running counts go to stdout and to the log (REPEAT_LOG, default ./repeat_two_process.log), with the last
# lines of every failed run's output. Exits 0 only when every run passed. PYTHON overrides the interpreter
# (default: .venv/bin/python of this checkout).
set -uo pipefail

if [ "$#" -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N TEST_ID [TEST_ID ...]  (N: runs per test id, a positive integer)" >&2
  exit 2
fi
runs=$1
shift
tests=("$@")

root="$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-$root/.venv/bin/python}
log=$(realpath -m "${REPEAT_LOG:-repeat_two_process.log}")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export PATH="$(dirname "$python"):$PATH"

declare -A passed failed
for test in "${tests[@]}"; do passed[$test]=0; failed[$test]=0; done
say() { echo "$*" | tee -a "$log"; }

say "== $(date -Is) $runs run(s) each of ${#tests[@]} test id(s) in $root (python: $python)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((i = 1; i <= runs; i++)); do
  for test in "${tests[@]}"; do
    start=$SECONDS
    (cd "$root" && "$python" -m pytest -p no:cacheprovider -q -x --no-header -o addopts= "$test") >"$out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
      passed[$test]=$((passed[$test] + 1))
      say "run $i $test: pass ($((SECONDS - start)) s) - ${passed[$test]} passed, ${failed[$test]} failed"
    else
      failed[$test]=$((failed[$test] + 1))
      say "run $i $test: FAIL rc=$rc ($((SECONDS - start)) s) - ${passed[$test]} passed, ${failed[$test]} failed"
      {
        echo "---- output tail of failed run $i of $test"
        tail -n 60 "$out"
        echo "----"
      } >>"$log"
    fi
  done
done

status=0
say "== $(date -Is) totals"
for test in "${tests[@]}"; do
  say "$test: ${passed[$test]} passed, ${failed[$test]} failed of $runs"
  [ "${failed[$test]}" -eq 0 ] || status=1
done
exit "$status"
