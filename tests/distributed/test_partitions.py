"""Flat-partition groups (DeepSpeed ZeRO layout) over gloo with an empty, gradient-less partition on one rank:
every rank joins each reduction, alpha and the update equal the single-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _launch import torchrun

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("partition_worker.py")


def test_rank_without_gradient_still_joins_the_reduction(tmp_path):
    torchrun(WORKER, str(tmp_path), timeout=180)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["b_diff"] < 1e-6
        for expected, got in zip(report["expected"], report["got"]):
            assert got["b"]["alpha"] == pytest.approx(expected["b"]["alpha"], rel=1e-5)
            assert got["b"]["mask_ratio"] == pytest.approx(expected["b"]["mask_ratio"], abs=1e-6)
    rank0 = reports[0]
    assert rank0["a_diff"] < 1e-6
    assert any(step["a"]["alpha"] > 1.01 for step in rank0["expected"])  # the mask is active
    for expected, got in zip(rank0["expected"], rank0["got"]):
        assert got["a"]["alpha"] == pytest.approx(expected["a"]["alpha"], rel=1e-5)
        assert got["a"]["mask_ratio"] == pytest.approx(expected["a"]["mask_ratio"], abs=1e-6)
    assert all("a" not in step for step in reports[1]["got"])  # nothing stepped there, nothing reported
