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
