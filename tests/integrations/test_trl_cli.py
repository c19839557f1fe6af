"""TRL's command line with ``--optim alphaadam`` and no hf_alphaadam import in user code (issue 18).

``trl sft`` starts ``trl/scripts/sft.py`` in a child process (through ``accelerate launch``): the names come from
the package's ``.pth`` start-up hook and the alpha monitor attaches itself. The run is the shipped example
(``examples/trl/sft_lora.yaml``: LoRA SFT on ``examples/data/gsm8k_sft``) on the tests' tiny local Llama, 2 steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "examples" / "trl" / "sft_lora.yaml"


@pytest.mark.slow
def test_trl_sft_cli_uses_alphaadam_and_logs_alpha(tiny_llama_dir, tmp_path):
    trl = Path(sys.executable).with_name("trl")
    out = tmp_path / "out"
    command = [str(trl), "sft", "--config", str(CONFIG), "--model_name_or_path", tiny_llama_dir,
               "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2",
               "--max_length", "64", "--per_device_train_batch_size", "2", "--report_to", "none"]
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HF_ALPHAADAM_AUTOREGISTER", "HF_ALPHAADAM_MONITOR", "PYTHONPATH")}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    checkpoint = out / "checkpoint-2"
    # the optimizer state is AlphaAdam's: its param groups carry the mask rule, alpha and the optim_args value
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    groups = state["param_groups"]
    assert groups and all((g["mask"], g["alpha"], g["alpha_max"]) == ("async", "norm", 10.0) for g in groups)
    assert {g["name"] for g in groups} <= {"decay", "no_decay"}
    assert all("lora_" in name for g in groups for name in g["param_names"])  # LoRA: only the adapters train
    # alpha and the mask ratio reached the logs of both steps
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:
        assert {"alpha/decay/mean", "alpha/decay/min", "alpha/decay/max", "mask_ratio/decay"} <= set(entry)
        assert entry["alpha/decay/mean"] >= 1.0 - 1e-6 and 0.0 < entry["mask_ratio/decay"] <= 1.0
    assert steps[0]["mask_ratio/decay"] == 1.0  # the first step is unmasked (first_step=full)
