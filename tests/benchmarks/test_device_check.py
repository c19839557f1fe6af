"""``scripts/device_check.sh --cpu``: the GPU device check's own code at small sizes on the CPU, so that it cannot
rot while no GPU runs it. Every section must run and pass; the report names the device and goes to the given
folder, never to ``benchmarks/results/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import device_check  # noqa: E402


def test_output_names_and_option_errors():
    assert device_check.output_name("NVIDIA H200", cpu=False) == "gpu_nvidia_h200"
    assert device_check.output_name("anything", cpu=True) == "cpu_device_check"
    with pytest.raises(SystemExit):
        device_check.parse_args(["--skip", "correctness,warp_drive"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_mode_without_cuda_is_refused_with_a_pointer_to_cpu_mode():
    with pytest.raises(SystemExit, match="no CUDA device here; run with --cpu"):
        device_check.run(device_check.parse_args([]))


@pytest.mark.slow
def test_device_check_script_runs_on_the_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHON=sys.executable)
    process = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "device_check.sh"), "--cpu", "--output-dir",
                              str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads((tmp_path / "cpu_device_check.json").read_text())
    assert report["mode"] == "cpu" and report["device"]
    sections = report["sections"]
    assert list(sections) == list(device_check.SECTIONS)
    assert {name: section["ok"] for name, section in sections.items()} == dict.fromkeys(device_check.SECTIONS, True), \
        {name: section.get("error") or section.get("stderr_tail") for name, section in sections.items()}
    assert len(sections["correctness"]["cases"]) == 5
    for measured in sections["step_time"]["lists"].values():
        assert set(measured["optimizers"]) == set(device_check.STEP_KINDS)
        assert all(entry["first_step_s"] > 0 for entry in measured["optimizers"].values())
    assert sections["trainer"]["steps"] == 50 and any(k.startswith("alpha/") for k in sections["trainer"]["alpha_keys"])
    assert set(sections["memory"]["optimizers"]) == {"AdamW", "adapm", "adapm_mini", "alphaadam_8bit"}
    assert "DEEPSPEED" in sections["deepspeed"]["distributed_type"]
