"""The torch.compile'd two-pass AlphaAdam path against the reference loop (``_single_tensor_alphaadam``).

The kernels are compiled once per process (module-level cache in ``_compiled.py``) and per dtype combination:
fp32 and bf16 parameters here. The first test pays for the compilation (tens of seconds on a small CPU).
The native C kernel, which serves fp32 CPU tensors ahead of these kernels, is turned off here
(``HF_ALPHAADAM_NATIVE=0``); ``test_native.py`` tests it.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from hf_alphaadam import AlphaAdam
from hf_alphaadam.optim._compiled import _compiled_alphaadam
from hf_alphaadam.optim._adam_engine import _single_tensor_alphaadam

pytestmark = pytest.mark.slow  # compiles C++ kernels with inductor: ~1 min the first time on 2 CPU cores


@pytest.fixture(autouse=True)
def _without_native_kernel(monkeypatch):
    monkeypatch.setenv("HF_ALPHAADAM_NATIVE", "0")  # fp32 CPU steps take these kernels, not the C one

MODES = list(itertools.product(["async", "sync", "none"], ["norm", "count", "none"]))
# (70, 80) has more than 4096 elements: the reductions take inductor's parallel cascade-sum variant
SHAPES = ((6, 5), (7,), (3, 4, 2), (70, 80))
TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=0, atol=1e-2)}


class State:
    def __init__(self, dtype: torch.dtype, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in SHAPES]
        state_dtype = torch.promote_types(dtype, torch.float32)
        self.exp_avgs = [torch.zeros_like(p, dtype=state_dtype) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, dtype=state_dtype) for p in self.params]
        self.steps = [torch.tensor(0.0) for _ in self.params]

    def lists(self, keep: list[int]) -> list[list[torch.Tensor]]:
        return [[values[i] for i in keep] for values in (self.params, self.exp_avgs, self.exp_avg_sqs, self.steps)]


def grads_for(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    """A persistent direction plus noise, so that masks are neither empty nor full."""
    generator = torch.Generator().manual_seed(1000 + step)
    out = []
    for p in params:
        drift = torch.linspace(-1, 1, p.numel(), dtype=torch.float64).reshape(p.shape)
        out.append((0.5 * drift + torch.randn(p.shape, generator=generator, dtype=torch.float64)).to(p.dtype))
    return out


def run_both(dtype, mask, alpha, steps=10, maximize=False, lr=1e-2, none_every=3, **overrides):
    reference, compiled = State(dtype), State(dtype)
    options = dict(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, mask=mask, alpha=alpha,
                   alpha_max=3.0 if alpha == "count" else None, first_step="full", maximize=maximize)
    options.update(overrides)
    for step in range(steps):
        grads = grads_for(reference.params, step)
        # a tensor whose grad is None is skipped by the caller (AlphaAdam._init_group): leave it out of the lists
        keep = [i for i in range(len(grads)) if not (none_every and (step + i) % none_every == 0)]
        p, m, v, s = reference.lists(keep)
        expected = _single_tensor_alphaadam(p, [grads[i] for i in keep], m, v, s, **options)
        p, m, v, s = compiled.lists(keep)
        got = _compiled_alphaadam(p, [grads[i] for i in keep], m, v, s, **options)
        compare_buckets(expected, got, len(keep))
    return reference, compiled


def compare_buckets(expected, got, n):
    """Same statistics per position (the compiled path may bucket by dtype, the reference returns one bucket)."""
    def flatten(buckets):
        alpha, ratio = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
        for positions, a, r in buckets:
            alpha[positions] = a.double()
            ratio[positions] = r.double()
        return alpha, ratio

    for a, b in zip(flatten(expected), flatten(got)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def assert_same(reference: State, compiled: State, dtype: torch.dtype) -> None:
    for a, b in zip(reference.params, compiled.params):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, **TOLERANCES[dtype])
    for name in ("exp_avgs", "exp_avg_sqs", "steps"):
        for a, b in zip(getattr(reference, name), getattr(compiled, name)):
            assert a.dtype == b.dtype
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask,alpha", MODES)
def test_compiled_matches_reference_on_params_and_state(dtype, mask, alpha):
    assert_same(*run_both(dtype, mask, alpha), dtype)


@pytest.mark.parametrize("mask,alpha", [("async", "norm"), ("sync", "count")])
def test_compiled_maximize(mask, alpha):
    assert_same(*run_both(torch.float32, mask, alpha, maximize=True), torch.float32)


def test_compiled_first_step_masked_and_alpha_max():
    assert_same(*run_both(torch.float32, "async", "norm", first_step="masked", alpha_max=1.5), torch.float32)


def test_compiled_tensor_lr_matches_float_lr():
    reference, compiled = run_both(torch.float32, "async", "norm", lr=torch.tensor(1e-2))
    assert_same(reference, compiled, torch.float32)


def test_compiled_empty_mask_tensor_is_not_moved_even_by_weight_decay():
    params = [torch.ones(4, 3), torch.ones(5)]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    options = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.5, mask="async", alpha="norm",
                   alpha_max=None, first_step="full", maximize=False)
    _compiled_alphaadam(params, [torch.ones(4, 3), torch.ones(5)], exp_avgs, exp_avg_sqs, steps, **options)
    after_first = params[0].clone()
    # opposite sign everywhere for params[0]: m_{t-1} * g < 0, so its async mask is empty
    [(_, alpha, ratio)] = _compiled_alphaadam(params, [-torch.ones(4, 3), torch.ones(5)], exp_avgs, exp_avg_sqs,
                                              steps, **options)
    assert torch.equal(params[0], after_first)
    assert alpha.tolist() == [1.0, 1.0] and ratio.tolist() == [0.0, 1.0]
    assert exp_avgs[0].lt(1).all()  # the moments are still updated


def test_compiled_does_not_recompile_across_steps_or_sizes():
    from torch._dynamo.utils import counters

    run_both(torch.float32, "async", "norm", steps=2)  # everything this test needs is compiled by now
    before = dict(counters["stats"])
    run_both(torch.float32, "async", "norm", steps=10, lr=3e-3)
    state = State(torch.float32)
    shapes = [(33, 17), (9000,), (5,)]  # new sizes on both sides of the 4096-element variant threshold
    params = [torch.randn(s) for s in shapes]
    for step in range(3):
        _compiled_alphaadam(params, [torch.randn(s) for s in shapes], [torch.zeros(s) for s in shapes],
                            [torch.zeros(s) for s in shapes], [torch.tensor(float(step)) for _ in shapes],
                            lr=1e-2 / (step + 1), beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05,
                            mask="async", alpha="norm", alpha_max=None, first_step="full", maximize=False)
    del state
    assert counters["stats"]["unique_graphs"] == before.get("unique_graphs", 0)


def test_alphaadam_fused_option_matches_reference_loop():
    torch.manual_seed(0)
    shapes = [(33, 17), (17,), (5000,)]
    loop_params = [torch.randn(s, requires_grad=True) for s in shapes]
    fused_params = [p.detach().clone().requires_grad_() for p in loop_params]
    loop = AlphaAdam(loop_params, lr=1e-2, weight_decay=0.1, foreach=False)
    fused = AlphaAdam(fused_params, lr=1e-2, weight_decay=0.1, fused=True)
    for step in range(5):
        grads = [torch.randn(s) for s in shapes]
        for a, b, g in zip(loop_params, fused_params, grads):
            a.grad, b.grad = g.clone(), g.clone()
        loop.step()
        fused.step()
    for a, b in zip(loop_params, fused_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loop.state[a]["exp_avg"], fused.state[b]["exp_avg"], rtol=1e-5, atol=1e-7)


def _spy_compiled(monkeypatch) -> list[list[tuple[int, ...]]]:
    """Record the shapes of the tensors each call of the compiled kernels' driver receives."""
    from hf_alphaadam.optim import _compiled

    calls: list[list[tuple[int, ...]]] = []
    original = _compiled._compiled_alphaadam

    def spy(params, *args, **kwargs):
        calls.append([tuple(p.shape) for p in params])
        return original(params, *args, **kwargs)

    monkeypatch.setattr(_compiled, "_compiled_alphaadam", spy)
    return calls


def _train_pair(make_other, steps=4, shapes=((6, 5), (70, 80), (7,))):
    """Params of the reference loop and of ``make_other(params)`` after the same steps, with their optimizers."""
    torch.manual_seed(0)
    reference = [torch.randn(s, requires_grad=True) for s in shapes]
    other = [p.detach().clone().requires_grad_() for p in reference]
    loop = AlphaAdam(reference, lr=1e-2, weight_decay=0.1, foreach=False)
    optimizer = make_other(other)
    for step in range(steps):
        for a, b in zip(reference, other):
            a.grad = torch.randn_like(a) + 0.3 * step
            b.grad = a.grad.clone()
        loop.step()
        optimizer.step()
    return reference, other, loop, optimizer


def test_fused_routes_small_tensors_to_foreach_and_matches_reference(monkeypatch):
    import sys

    module = sys.modules["hf_alphaadam.optim._adam_engine"]

    monkeypatch.setattr(module, "COMPILE_MIN_NUMEL", 1000)
    calls = _spy_compiled(monkeypatch)
    reference, fused, loop, optimizer = _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, weight_decay=0.1, fused=True))
    assert calls and all(shapes == [(70, 80)] for shapes in calls)  # (6, 5) and (7,) took the foreach path
    for a, b in zip(reference, fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(optimizer.state[b]["exp_avg_sq"], loop.state[a]["exp_avg_sq"], rtol=1e-5,
                                   atol=1e-8)
    expected, got = loop.statistics(per_tensor=True)["tensors"], optimizer.statistics(per_tensor=True)["tensors"]
    assert got.keys() == expected.keys() and len(got) == 3
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key


def test_default_compiles_only_groups_above_the_size_threshold(monkeypatch):
    import sys

    module = sys.modules["hf_alphaadam.optim._adam_engine"]

    monkeypatch.setattr(module, "COMPILE_MIN_NUMEL", 1000)
    calls = _spy_compiled(monkeypatch)
    _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2), steps=2)  # 5637 elements < 2^24: foreach
    assert calls == []
    monkeypatch.setattr(module, "AUTO_COMPILE_MIN_NUMEL", 5000)
    _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, fused=False), steps=2)  # never compiles
    _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, foreach=True), steps=2)  # an explicit foreach is kept
    assert calls == []
    reference, auto, _, _ = _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, weight_decay=0.1), steps=3)
    assert calls == [[(70, 80)]] * 3
    for a, b in zip(reference, auto):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_default_falls_back_to_foreach_when_compiling_fails(monkeypatch, caplog):
    from hf_alphaadam.optim import _compiled
    import sys

    module = sys.modules["hf_alphaadam.optim._adam_engine"]

    def broken(name, args):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(module, "AUTO_COMPILE_MIN_NUMEL", 5000)
    monkeypatch.setattr(module, "COMPILE_MIN_NUMEL", 1000)
    monkeypatch.setattr(_compiled, "_WARM", set())
    monkeypatch.setattr(_compiled, "_warm_up", broken)
    monkeypatch.setattr(_compiled, "_DISABLED", None)
    with caplog.at_level("WARNING", logger=_compiled.__name__):
        reference, auto, loop, optimizer = _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, weight_decay=0.1))
    assert [r.message for r in caplog.records if "using the foreach path" in r.message] != []
    assert len([r for r in caplog.records if "compiling the fused step failed" in r.message]) == 1  # once
    assert "no C++ compiler found" in _compiled._DISABLED
    for a, b in zip(reference, auto):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert optimizer.state[b]["step"].item() == loop.state[a]["step"].item() == 4  # counted once per step
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):  # asked for explicitly: the error surfaces
        _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, fused=True), steps=1)


def test_fused_option_validation():
    with pytest.raises(TypeError, match="fused must be True, False or None, got 'yes'"):
        AlphaAdam([torch.zeros(2, requires_grad=True)], fused="yes")
