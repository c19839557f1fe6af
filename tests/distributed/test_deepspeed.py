"""DeepSpeed ZeRO-1/2/3 on CPU (``DS_ACCELERATOR=cpu``, 2 processes over gloo) with AlphaAdam as the client
optimizer: with one param group per tensor (``whole_numel`` set) every flat partition belongs to one tensor and
per-tensor alpha, mask ratios and losses equal the single-process run; plain multi-tensor groups are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _launch import torchrun

pytest.importorskip("deepspeed", reason="DeepSpeed is part of the 'recipes' extra that CI installs")
pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("deepspeed_worker.py")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_alpha_equals_single_process(tmp_path, stage):
    torchrun(WORKER, str(tmp_path), str(stage), env={"DS_ACCELERATOR": "cpu"}, timeout=600)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["losses"] == pytest.approx(report["reference_losses"], rel=1e-6)
        for reference, sharded in zip(report["reference_alphas"], report["alphas"]):
            assert reference.keys() == sharded.keys()
            for name in reference:
                assert sharded[name]["alpha"] == pytest.approx(reference[name]["alpha"], rel=1e-5), name
                assert sharded[name]["mask_ratio"] == pytest.approx(reference[name]["mask_ratio"], abs=1e-6)
        assert any(step["0.weight"]["alpha"] > 1.1 for step in report["reference_alphas"])
        assert "flat partition" in report["refusal"]


TRAINER_WORKER = Path(__file__).with_name("trainer_worker.py")
DS_CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_trainer_with_shipped_zero_config_matches_ddp_and_resumes(tmp_path, stage):
    """optim="alphaadam" through the Trainer with recipes/accelerate/ds_zero{stage}.json: the plugin hands
    DeepSpeed one group per tensor, per-tensor alpha equals the DDP run's, and a stopped run resumes."""
    env = {"DS_ACCELERATOR": "cpu"}
    config = str(DS_CONFIGS / f"ds_zero{stage}.json")
    torchrun(TRAINER_WORKER, str(tmp_path / "ddp"), "--per_device_batch", "4", "--max_steps", "6")
    torchrun(TRAINER_WORKER, str(tmp_path / "zero"), "--per_device_batch", "4", "--max_steps", "6",
             "--deepspeed", config, env=env, timeout=600)
    ddp = json.loads((tmp_path / "ddp" / "report-rank0.json").read_text())
    zero = json.loads((tmp_path / "zero" / "report-rank0.json").read_text())
    assert "DEEPSPEED" in zero["distributed_type"]
    for step, loss in ddp["losses"].items():
        assert zero["losses"][step] == pytest.approx(loss, rel=1e-4)
    for reference, sharded in zip(ddp["alphas"], zero["alphas"]):
        assert reference.keys() == sharded.keys()
        for name in reference:
            assert sharded[name] == pytest.approx(reference[name], rel=1e-3, abs=1e-4), name

    torchrun(TRAINER_WORKER, str(tmp_path / "split"), "--per_device_batch", "4", "--max_steps", "6",
             "--save_steps", "3", "--stop_after", "3", "--deepspeed", config, env=env, timeout=600)
    torchrun(TRAINER_WORKER, str(tmp_path / "split"), "--per_device_batch", "4", "--max_steps", "6",
             "--save_steps", "3", "--resume", "--deepspeed", config, env=env, timeout=600)
    resumed = json.loads((tmp_path / "split" / "report-rank0.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-3")
    for step, loss in zero["losses"].items():
        assert resumed["losses"][step] == pytest.approx(loss, rel=1e-5)
