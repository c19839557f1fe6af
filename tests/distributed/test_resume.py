"""Checkpoint resume through the Trainer: stopping mid-run and resuming reproduces the uninterrupted run
bit-exactly (single process and 2-process DDP); a run killed with SIGKILL resumes from its last complete
checkpoint and finishes with the same parameters; DDP equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _launch import ROOT, torchrun

WORKER = Path(__file__).with_name("trainer_worker.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_single(out_dir: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(WORKER), str(out_dir), *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads((out_dir / "report-rank0.json").read_text())


def test_stop_and_resume_is_bit_exact(tmp_path):
    straight = run_single(tmp_path / "straight")
    run_single(tmp_path / "split", "--stop_after", "4")
    assert (tmp_path / "split" / "run" / "checkpoint-4" / "optimizer.pt").exists()
    resumed = run_single(tmp_path / "split", "--resume")
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert resumed["losses"] == straight["losses"]  # every logged loss, bit for bit
    assert resumed["param_hash"] == straight["param_hash"]
    assert resumed["alphas"] == straight["alphas"][4:]


def test_sigkill_mid_training_resumes_from_last_complete_checkpoint(tmp_path):
    straight = run_single(tmp_path / "straight", "--max_steps", "12", "--save_steps", "2")
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(WORKER), str(out), "--max_steps", "12", "--save_steps", "2",
                                "--sleep", "0.4"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (out / "run" / "checkpoint-6" / "trainer_state.json").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint-6 within the time limit"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "report-rank0.json").exists()
    # a save interrupted by the kill leaves a partial directory: make sure one is there and is skipped
    partial = out / "run" / "checkpoint-10"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"partial")
    resumed = run_single(out, "--max_steps", "12", "--save_steps", "2", "--resume")
    assert not resumed["resumed_from"].endswith("checkpoint-10")
    assert resumed["param_hash"] == straight["param_hash"]
    assert resumed["losses"] == straight["losses"]


@pytest.mark.distributed
def test_ddp_equals_single_process_and_resumes_bit_exactly(tmp_path):
    single = run_single(tmp_path / "single", "--per_device_batch", "8")
    torchrun(WORKER, str(tmp_path / "ddp"), "--per_device_batch", "4")
    reports = [json.loads((tmp_path / "ddp" / f"report-rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["world_size"] == 2 and "MULTI_CPU" in reports[0]["distributed_type"]
    assert reports[0]["param_hash"] == reports[1]["param_hash"]
    for step, loss in single["losses"].items():
        assert reports[0]["losses"][step] == pytest.approx(loss, rel=1e-4)
    for reference, ddp in zip(single["alphas"], reports[0]["alphas"]):
        assert reference.keys() == ddp.keys()
        for name in reference:
            assert ddp[name] == pytest.approx(reference[name], rel=1e-3, abs=1e-4), name

    torchrun(WORKER, str(tmp_path / "ddp_split"), "--per_device_batch", "4", "--stop_after", "4")
    torchrun(WORKER, str(tmp_path / "ddp_split"), "--per_device_batch", "4", "--resume")
    resumed = json.loads((tmp_path / "ddp_split" / "report-rank0.json").read_text())
    assert resumed["losses"] == reports[0]["losses"]
    assert resumed["param_hash"] == reports[0]["param_hash"]
