"""FSDP2 (raw ``fully_shard`` on CPU, 2 processes over gloo): per-tensor alpha and the trajectory equal the
unsharded run, state tensors are DTensors shaped like their parameters (the step counter a plain tensor equal
on all ranks), and a distributed-checkpoint round trip resumes the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _launch import torchrun

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("fsdp2_worker.py")


@pytest.mark.parametrize("path", ["foreach", "loop", "swap"])
def test_fsdp2_alpha_equals_unsharded_and_dcp_resumes(tmp_path, path):
    torchrun(WORKER, str(tmp_path), path)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # the model is sharded unevenly, one rank holds an empty shard of the last layer
    assert reports[1]["local_shapes"]["3.weight"] == [0, 9]
    for report in reports:
        assert len(report["sharded_alphas"]) == len(report["reference_alphas"]) == 6
        for reference, sharded in zip(report["reference_alphas"], report["sharded_alphas"]):
            assert reference.keys() == sharded.keys()
            for name in reference:
                assert sharded[name]["alpha"] == pytest.approx(reference[name]["alpha"], rel=1e-5), name
                assert sharded[name]["mask_ratio"] == pytest.approx(reference[name]["mask_ratio"], abs=1e-6)
        assert any(step["0.weight"]["alpha"] > 1.1 for step in report["reference_alphas"])
        assert report["max_param_diff"] < 1e-5
        assert report["max_exp_avg_diff"] < 1e-6
        for kinds in report["state_kinds"].values():
            assert kinds == {"step": "Tensor", "exp_avg": "DTensor", "exp_avg_sq": "DTensor"}


def test_adapm_fsdp2_elementwise_blocks_equal_unsharded_and_low_rank_is_refused(tmp_path):
    torchrun(WORKER, str(tmp_path), "adapm")
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["max_param_diff"] < 1e-5
        assert report["embedding_state"] == ["exp_avg_sq", "step"]  # no momentum for the embedding
        assert report["linear_state"] == ["exp_avg", "exp_avg_sq", "step"]
        for name, message in report["refusals"].items():
            assert message is not None, f"{name} on DTensor shards was not refused"
            assert "FSDP2 DTensor" in message, message
