#!/usr/bin/env bash
# The device check in one command (benchmarks/device_check.py holds the logic; its docstring lists the sections).
#   bash scripts/device_check.sh         # on a GPU machine: writes benchmarks/results/gpu_<device>.json
#                                        # (sized for under 8 minutes on one GPU; not yet timed on one)
#   bash scripts/device_check.sh --cpu   # small sizes on the CPU (what CI runs), writes outputs/device_check/
# Other options (--skip SECTIONS, --combo-kernels, --output-dir DIR): bash scripts/device_check.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" -m benchmarks.device_check "$@"
