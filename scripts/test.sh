#!/usr/bin/env bash
# Create or update .venv with the development extra, then run the test-suite (CPU, offline).
#   bash scripts/test.sh                 # everything, the tests marked slow included
#   bash scripts/test.sh -m "not slow"   # unit tests only; any pytest arguments pass through, a -m replaces ours
# A plain `pytest` skips the tests marked slow (addopts in pyproject.toml); `-m ""` here selects them again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi

echo "Installing llamafactory-wspo[dev] into .venv ..."
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt -e ".[dev]" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# tests/test_webui.py drives LLaMA-Board in Debian's Chromium; it skips only where Chromium cannot be installed.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  echo "Installing Chromium for the LLaMA-Board browser test ..."
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "Chromium could not be installed: the browser tests of tests/test_webui.py will be skipped." >&2
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check llamafactory_wspo tests scripts
.venv/bin/ruff format --check llamafactory_wspo tests scripts
exec .venv/bin/python -m pytest -p no:cacheprovider -m "" "$@"
