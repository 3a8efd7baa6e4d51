#!/usr/bin/env bash
# The remote procedure of benchmarks/gpu_check.py on a GPU machine with no network access whose Python lacks PyAV
# and diffusers: run from the repository root with $OUT set to the (empty) folder whose files come back.
# Extra arguments go to gpu_check.py (e.g. `--only unet --budget-scale 4`, or `--device cpu --quick` in the
# rehearsal, tests/test_gpu_check.py). Wheels carried in .whl/ (see docs/gpu-check.md) are installed into a private
# folder first; without .whl/ the Python's own packages are used.
set -euo pipefail
: "${OUT:?set OUT to the folder the results go to}"
export GPU_CHECK_STARTED_AT="${GPU_CHECK_STARTED_AT:-$(date +%s.%N)}"  # the 420 s count from here, install included
site="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site-XXXXXX")"
shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
  python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$site" "${wheels[@]}"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py --out "$OUT" "$@"
