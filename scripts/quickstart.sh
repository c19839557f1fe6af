#!/usr/bin/env bash
# One command from a fresh checkout: set up .venv (if needed) and run the main job, the AlphaAdam-vs-AdamW
# comparison (examples/compare_optimizers.py). Extra arguments are passed to the example, e.g.
#
#   bash scripts/quickstart.sh
#   bash scripts/quickstart.sh --text_file ../shared/data/tinyshakespeare/input.txt --max_steps 600
#
# Idempotent: a second run reuses .venv and skips the installs unless pyproject.toml changed since the last one.
# Environment: PYTHON (interpreter for the venv, default python3), TORCH_SPEC (default torch==2.13.0),
# TORCH_INSTALL_ARGS (extra pip arguments for torch only, e.g. "--index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=.venv
STAMP=$VENV/.quickstart-installed

if [ ! -x "$VENV/bin/python" ]; then
    echo "quickstart: creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -U pip
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] \
        || ! "$VENV/bin/python" -c "import torch, hf_alphaadam, matplotlib, tqdm, trl, peft" >/dev/null 2>&1; then
    # torch first: once it is satisfied, installing the package cannot pull a (multi-GB) CUDA build of torch.
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        echo "quickstart: installing $TORCH_SPEC"
        # shellcheck disable=SC2086  # TORCH_INSTALL_ARGS is a list of pip arguments
        "$VENV/bin/pip" install -q ${TORCH_INSTALL_ARGS:-} "$TORCH_SPEC"
    fi
    # every extra, so that the README's test command runs the whole suite (trl, peft, deepspeed, bitsandbytes);
    # DeepSpeed builds no C++ ops at install time.
    echo "quickstart: installing hf-alphaadam (editable) with the recipes, bnb and dev extras"
    constraints=()
    [ -f .ci/constraints.txt ] && constraints=(-c .ci/constraints.txt)
    DS_BUILD_OPS=0 "$VENV/bin/pip" install -q "${constraints[@]}" -e ".[recipes,bnb,dev]"
    touch "$STAMP"
else
    echo "quickstart: $VENV is up to date"
fi

export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
echo "quickstart: $VENV/bin/python examples/compare_optimizers.py $*"
exec "$VENV/bin/python" examples/compare_optimizers.py "$@"
