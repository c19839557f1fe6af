"""The one dispatch policy (``_adam_engine.route_for``) and the plans that record it."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from hf_alphaadam import AdaPM, AlphaAdam
from hf_alphaadam.optim import _adam_engine, _compiled, _native
from hf_alphaadam.optim._adam_engine import AUTO_COMPILE_MIN_NUMEL, COMPILE_MIN_NUMEL, route_for

CPU = torch.empty(0)
GPU = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)  # route_for reads device and dtype


def route(like=CPU, native=False, numel=10, group=100, foreach=None, fused=None):
    return route_for(native_fits=native, whole_numel=numel, group_numel=group, foreach=foreach, fused=fused,
                     like=like)


@pytest.fixture
def compile_works(monkeypatch):
    monkeypatch.setattr(_compiled, "usable", lambda like: True)


def test_cpu_policy(compile_works):
    native = _native.enabled() and _native.available()
    assert route(native=True) == ("native" if native else "foreach")
    assert route(native=True, fused=False) == "foreach"
    assert route(native=True, foreach=False) == "reference"
    assert route(native=True, foreach=True) == "foreach"  # an explicit foreach is kept
    assert route() == "foreach"  # a small group never compiles
    big = AUTO_COMPILE_MIN_NUMEL
    assert route(numel=COMPILE_MIN_NUMEL, group=big) == "compiled"
    assert route(numel=COMPILE_MIN_NUMEL - 1, group=big) == "foreach"  # small tensors: foreach on the CPU
    assert route(numel=COMPILE_MIN_NUMEL, fused=True) == "compiled"
    assert route(numel=COMPILE_MIN_NUMEL, group=big, foreach=False) == "reference"


def test_gpu_policy_compiles_every_tensor(compile_works):
    assert route(GPU) == "compiled"  # any group size, any tensor size: one compiled call per chunk
    assert route(GPU, fused=True) == "compiled"
    assert route(GPU, fused=False) == "foreach"
    assert route(GPU, foreach=True) == "foreach"
    assert route(GPU, foreach=False) == "reference"


def test_gpu_policy_falls_back_when_torch_compile_is_unusable(monkeypatch):
    monkeypatch.setattr(_compiled, "usable", lambda like: False)
    assert route(GPU) == "foreach"


def test_plans_record_the_route_and_follow_option_changes():
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7, dtype=torch.float64))]
    optimizer = AlphaAdam(params)
    native = "native" if _native.enabled() and _native.available() else "foreach"
    assert [plan.route for plan in optimizer.plans_of(0)] == [native, "foreach"]  # fp64: not the kernel's dtype
    optimizer.param_groups[0]["foreach"] = False
    assert [plan.route for plan in optimizer.plans_of(0)] == ["reference", "reference"]


def test_the_step_reads_the_routes(monkeypatch):
    """The step follows the plans: routes are not decided again per step."""
    params = [torch.nn.Parameter(torch.randn(6, 5))]
    optimizer = AlphaAdam(params, foreach=True)
    seen = []
    original = _adam_engine.alphaadam
    class_module = sys.modules["hf_alphaadam.optim.alphaadam"]  # the package re-exports a function of that name
    monkeypatch.setattr(class_module, "alphaadam",
                        lambda *a, route=None, **k: seen.append(route) or original(*a, route=route, **k))
    monkeypatch.setattr(_adam_engine, "route_for", lambda **k: pytest.fail("a route was decided during the step"))
    params[0].grad = torch.randn(6, 5)
    optimizer.step()
    assert seen == ["foreach"]


@pytest.mark.slow
def test_adapm_element_wise_tensors_on_the_compiled_route_match_the_reference():
    """What AdaPM's plans choose on a GPU (the compiled kernels for its full and momentum-free tensors), run on
    the CPU through the same code."""
    names = ("model.embed_tokens.weight", "layers.0.self_attn.v_proj.weight", "layers.0.input_layernorm.weight")
    shapes = ((12, 8), (8, 8), (8,))

    def build():
        generator = torch.Generator().manual_seed(0)
        return [(n, torch.nn.Parameter(torch.randn(s, generator=generator))) for n, s in zip(names, shapes)]

    reference, compiled = build(), build()
    ref_opt = AdaPM(reference, lr=1e-2, foreach=False, log_policy=False)
    opt = AdaPM(compiled, lr=1e-2, log_policy=False)
    kinds = [plan.kind for plan in opt.plans()]
    assert kinds == ["adam_none", "adam_full", "adam_full"]
    group = opt.param_groups[0]  # the plans a GPU would build
    opt._plan_cache[id(group)] = (opt._plan_options(group),
                                  [dataclasses.replace(plan, route="compiled") for plan in opt.plans_of(0)])
    for step in range(4):
        generator = torch.Generator().manual_seed(10 + step)
        for (_, a), (_, b) in zip(reference, compiled):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ref_opt.step()
        opt.step()
    assert all(plan.route == "compiled" for plan in opt.plans_of(0))
    assert _compiled._DISABLED is None  # compiled, not fallen back to the foreach path
    for (_, a), (_, b) in zip(reference, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[b]["exp_avg_sq"], ref_opt.state[a]["exp_avg_sq"], rtol=1e-5, atol=1e-8)
