"""Statistics with NaN, Inf and 0-element tensors: reported as they are, on every step path."""

from __future__ import annotations

import math

import pytest
import torch

from hf_alphaadam import AdaDiag, AdaPM, AlphaAdam
from hf_alphaadam.optim._masking import reported_alpha

PATHS = {"reference": dict(foreach=False), "foreach": dict(foreach=True), "native (default)": dict()}


def groups(**options):
    generator = torch.Generator().manual_seed(0)
    healthy = torch.nn.Parameter(torch.randn(8, 4, generator=generator))
    sick = torch.nn.Parameter(torch.randn(6, 5, generator=generator))
    empty = torch.nn.Parameter(torch.zeros(0, 4))
    other = torch.nn.Parameter(torch.randn(7, generator=generator))
    optimizer = AlphaAdam([{"params": [healthy, sick, empty], "name": "decay"},
                           {"params": [other], "name": "no_decay"}], lr=1e-2, **options)
    return (healthy, sick, empty, other), optimizer


def step(params, optimizer, bad: float | None = None) -> None:
    healthy, sick, empty, other = params
    for p in params:
        p.grad = torch.ones_like(p)
    if bad is not None:
        sick.grad[0, 0] = bad
    optimizer.step()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_update_shows_in_alpha_and_the_nonfinite_count(path, bad):
    params, optimizer = groups(**PATHS[path])
    step(params, optimizer)
    finite = optimizer.statistics()["groups"]
    assert finite["decay"]["nonfinite_tensors"] == 0 and math.isfinite(finite["decay"]["alpha_mean"])
    step(params, optimizer, bad)
    statistics = optimizer.statistics(per_tensor=True)
    decay = statistics["groups"]["decay"]
    # the sick tensor's update is NaN (inf / inf in u): its alpha is reported as NaN, not the guarded 1
    assert math.isnan(statistics["tensors"]["decay.1"]["alpha"])
    assert math.isnan(decay["alpha_mean"]) and math.isnan(decay["alpha_min"]) and math.isnan(decay["alpha_max"])
    assert decay["nonfinite_tensors"] == 1
    assert math.isfinite(statistics["tensors"]["decay.0"]["alpha"])
    no_decay = statistics["groups"]["no_decay"]
    assert no_decay["nonfinite_tensors"] == 0 and math.isfinite(no_decay["alpha_mean"])


@pytest.mark.parametrize("path", list(PATHS))
def test_zero_element_tensors_are_left_out(path):
    params, optimizer = groups(**PATHS[path])
    step(params, optimizer)
    statistics = optimizer.statistics(per_tensor=True)
    decay = statistics["groups"]["decay"]
    assert decay["num_tensors"] == 2  # healthy and sick, not the (0, 4) tensor
    assert math.isfinite(decay["mask_ratio"]) and math.isfinite(decay["alpha_mean"])
    assert "decay.2" not in statistics["tensors"]


def test_an_all_nan_gradient_is_not_reported_as_alpha_one():
    params, optimizer = groups(mask="async")
    step(params, optimizer)
    for p in params:
        p.grad = torch.full_like(p, math.nan)
    optimizer.step()
    decay = optimizer.statistics()["groups"]["decay"]
    assert math.isnan(decay["alpha_mean"])


@pytest.mark.parametrize("cls", [AdaPM, AdaDiag])
def test_other_optimizers_report_non_finite_updates_too(cls):
    param = torch.nn.Parameter(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)))
    extra = dict(policy="lowrank", rank=2, log_policy=False) if cls is AdaPM else {}
    optimizer = cls([("layers.0.mlp.up_proj.weight", param)], lr=1e-2, mask="sync", alpha="norm", **extra)
    param.grad = torch.ones_like(param)
    optimizer.step()
    param.grad = torch.ones_like(param)
    param.grad[0, 0] = math.inf
    if cls is AdaDiag:
        optimizer.param_groups[0]["update_freq"] = 1000  # no SVD of the Inf gradient (that is an error)
    optimizer.step()
    group = optimizer.statistics()["groups"]["group0"]
    assert group["nonfinite_tensors"] == 1
    assert not math.isfinite(group["alpha_mean"])


def test_reported_alpha_keeps_nan_and_inf_of_the_norm_rule():
    sums = torch.tensor([[4.0, 1.0, 3.0], [math.nan, 1.0, 3.0], [math.inf, 1.0, 3.0], [1.0, 0.0, 0.0]])
    used = torch.tensor([2.0, 1.0, 1.0, 1.0])
    reported = reported_alpha(sums, used, "norm")
    assert reported[0] == 2.0 and math.isnan(reported[1]) and reported[2] == math.inf and reported[3] == 1.0
    assert torch.equal(reported_alpha(sums, used, "count"), used)
