#!/usr/bin/env bash
# Create ./.venv (if needed) and install osediff into it, editable, with the given extras.
# Usage: bash scripts/setup.sh [EXTRAS]   (default EXTRAS: all,test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all,test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
.venv/bin/python -c "import osediff, torch; print(f'osediff {osediff.__version__} ready (torch {torch.__version__})')"
