#!/usr/bin/env bash
# benchmarks/gpu_suite.py on a machine whose python3 has torch, transformers and peft but not
# diffusers (the lent GPU machine, which reaches no package registry): the diffusers wheel is
# carried in .whl/ and unpacked into /tmp/osediff-site, and the package is read from src/.
#
#   bash benchmarks/gpu_suite.sh --fetch     # here, with PyPI: the wheel of this venv's diffusers into .whl/
#   bash benchmarks/gpu_suite.sh --device cuda --size full --out /tmp/gpu_suite --summary-dir "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch" ]; then
  version=$(.venv/bin/python -c "import diffusers; print(diffusers.__version__)")
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: -d .whl "diffusers==$version"
  ls .whl
  exit
fi
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
if ! "$python" -c "import diffusers" 2>/dev/null; then
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/osediff-site .whl/diffusers-*.whl
  export PYTHONPATH=/tmp/osediff-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_suite.py "$@"
