#!/usr/bin/env bash
# One command from a fresh checkout: set up .venv (if needed) and run the main job, the AlphaAdam-vs-AdamW
# comparison (examples/compare_optimizers.py). Extra arguments are passed to the example, e.g.
#
#   bash scripts/quickstart.sh
#   bash scripts/quickstart.sh --text_file data/tinyshakespeare/input.txt --max_steps 600
#
# The install is scripts/install.sh (idempotent: a second run reuses .venv; its environment variables PYTHON,
# TORCH_SPEC and TORCH_INSTALL_ARGS are described there).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh  # the same install step as CI (.ci/run)

export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
echo "quickstart: .venv/bin/python examples/compare_optimizers.py $*"
exec .venv/bin/python examples/compare_optimizers.py "$@"
