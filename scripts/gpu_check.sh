#!/bin/sh
# The GPU check (`make gpu-check`): on a machine with a CUDA GPU, runs the tests marked `cuda`
# and `ainode bench --full`, and writes bench/RESULTS-gpu.md (the runtime the worker would
# report, the test outcome and the benchmark table). Without a usable GPU it says so and exits 0,
# so it is safe to run anywhere.
set -eu
cd "$(dirname "$0")/.."
VENV=${AINODE_VENV:-.venv}
PY="$VENV/bin/python"
OUT=${GPU_CHECK_OUTPUT:-bench/RESULTS-gpu.md}

if ! reason=$("$PY" -m ainode_worker.runtime --require-cuda 2>&1); then
  echo "gpu-check: no usable CUDA GPU here: $reason"
  echo "gpu-check: nothing to check (run it on the GPU server)"
  exit 0
fi

echo "gpu-check: $reason"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
"$PY" -m pytest -p no:cacheprovider -m cuda tests -q >"$tmp/tests.txt" 2>&1 || status=$?
tail -n 30 "$tmp/tests.txt"
"$VENV/bin/ainode" bench --full --output "$tmp/bench.md" || status=$?
{
  echo "# GPU check"
  echo
  echo "Written by \`make gpu-check\` ($(date -u +%Y-%m-%dT%H:%MZ))."
  echo
  echo "## Runtime"
  echo
  echo '```'
  "$PY" -m ainode_worker.runtime
  echo '```'
  echo
  echo "## Tests marked cuda"
  echo
  echo '```'
  tail -n 15 "$tmp/tests.txt"
  echo '```'
  echo
  echo "## Benchmarks (ainode bench --full)"
  echo
  if [ -f "$tmp/bench.md" ]; then cat "$tmp/bench.md"; else echo "(the benchmarks did not run)"; fi
} >"$OUT"
echo "gpu-check: wrote $OUT"
exit "$status"
