#!/usr/bin/env bash
# The GPU path in one command, for a machine with a CUDA GPU (issue 20, part 5):
#   1. the suite's CUDA tests (tests/test_cuda.py: every probe and the CLI on cuda vs cpu;
#      the cuda tests of tests/test_engine.py), which must run, not skip;
#   2. the benchmark rows that take --device (data_probes, smoothness, early_exit,
#      smoothness_speed) on the GPU, printing their table of ratios.
#
#   bash benchmarks/gpu_check.sh            # full rows (a few minutes on a GPU)
#   bash benchmarks/gpu_check.sh --quick    # extra arguments go to benchmarks/run.py
#
# Results: benchmarks/results-cuda.json (GPU_CHECK_OUT to change), never the CPU table's
# benchmarks/results.json. Uses .venv/bin/python when it exists, else python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
OUT="${GPU_CHECK_OUT:-benchmarks/results-cuda.json}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"

"$PY" - "$DEVICE" <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch.cuda.is_available() is false: this needs a CUDA GPU (and a CUDA build of torch)")
print(f"# {torch.cuda.get_device_name(torch.device(sys.argv[1]))}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF

echo "# CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_engine.py -k cuda

echo "# benchmark rows on $DEVICE"
"$PY" benchmarks/run.py --device "$DEVICE" --only data_probes,smoothness,early_exit,smoothness_speed --out "$OUT" "$@"
echo "# written: $OUT"
