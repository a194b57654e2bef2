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
# NIQE's pristine-image parameters ship in BasicSR's source archive on PyPI; osediff eval finds it here
case ",${extras}," in
  *,all,*|*,eval,*)
    cache="${OSEDIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/osediff}"
    ls "$cache"/basicsr-*.tar.gz >/dev/null 2>&1 \
      || .venv/bin/python -m pip download --quiet --no-deps basicsr==1.4.2 -d "$cache" ;;
esac
.venv/bin/python -c "import osediff, torch; print(f'osediff {osediff.__version__} ready (torch {torch.__version__})')"
