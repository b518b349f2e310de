#!/usr/bin/env bash
# The GPU check (issue 15; docs/speed.md "GPU figures"): one prepared run on a GPU machine.
#   bash bench/gpu_check.sh OUT [--scale full|tiny] [--device cuda|cpu] [--budget-s S]
# On a machine with no network (the GPU machines we borrow have torch, numpy, pandas, pyarrow,
# scikit-learn and Pillow but not the suite's other dependencies), the wheels that `make
# gpu-wheels` puts in .whl/ are installed into /tmp/site first. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader || true
exec "$PY" -m bench.gpu_check "$@"
