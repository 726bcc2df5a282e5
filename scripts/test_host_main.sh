#!/usr/bin/env bash
# The compatibility set (`pytest -m host_compat`) on LLaMA-Factory main, in its own environment `.venv-main`
# (main's transformers pin excludes the 0.9.5 environment's). The host is the source archive in ../shared/hosts/
# (LLAMAFACTORY_MAIN_SOURCE overrides it: another archive, or a clone of LLaMA-Factory main).
#   bash scripts/test_host_main.sh               # create or update .venv-main, then run the set
#   bash scripts/test_host_main.sh -x -k zero3   # any pytest arguments pass through
# The set (marked in the test files): activation, a WSPO and a WPO run with their losses checked against an
# independent computation (precomputed and per step), two-process ZeRO-3 once, the stock-stage equality test,
# LLaMA-Board's stage list, the gate's own checks, the tuner block pinned to the host's source, and the
# response-only-logits equality tests (tests/test_scoring.py).
set -euo pipefail
cd "$(dirname "$0")/.."

HOST=${LLAMAFACTORY_MAIN_SOURCE:-}
if [ -z "$HOST" ]; then
  HOST=$(ls ../shared/hosts/llamafactory-*.tar.gz 2>/dev/null | tail -n 1 || true)
  [ -n "$HOST" ] || { echo "No LLaMA-Factory source in ../shared/hosts/ (set LLAMAFACTORY_MAIN_SOURCE)." >&2; exit 1; }
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv-main/bin/python ]; then
  "$PYTHON" -m venv .venv-main
fi

# The plugin editable, as in .venv, so that its .pth start-up hook is installed; pytest pins as in the dev extra.
echo "Installing LLaMA-Factory main ($HOST) and llamafactory-wspo[deepspeed] into .venv-main ..."
.venv-main/bin/python -m pip install --quiet --no-compile --disable-pip-version-check -c scripts/constraints.txt \
  "$HOST" -e ".[deepspeed]" "pytest>=8" "pytest-timeout>=2.3" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv-main/bin/python - <<'PY'
from importlib.metadata import version

names = ("llamafactory", "transformers", "torch", "trl", "peft", "datasets", "accelerate", "deepspeed")
print("LLaMA-Factory main environment: " + ", ".join(f"{name} {version(name)}" for name in names))
PY

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export PATH="$PWD/.venv-main/bin:$PATH"
exec .venv-main/bin/python -m pytest -p no:cacheprovider -m host_compat "$@"
