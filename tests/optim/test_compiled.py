"""The torch.compile'd multi-tensor AlphaAdam path (``_compiled.py``) against the reference loop.

The kernels are compiled once per process (module-level cache in ``_compiled.py``), per kernel and dtype
combination; every mask / alpha mode shares them (the mode is an entry of a table passed as a tensor). Here a chunk
holds 4 tensors (``CHUNK_TENSORS`` patched), which keeps each compilation to a few seconds on a small CPU; the
chunking logic is the same for any size. The native C kernel, which serves fp32 CPU tensors ahead of these kernels
in ``AlphaAdam``, is turned off here (``HF_ALPHAADAM_NATIVE=0``); ``test_native.py`` tests it.
"""

from __future__ import annotations

import importlib
import itertools
import logging

import pytest
import torch

from hf_alphaadam import AlphaAdam
from hf_alphaadam.optim import _compiled
from hf_alphaadam.optim._compiled import _compiled_alphaadam, _compiled_momentum_free

pytestmark = pytest.mark.slow  # compiles C++ kernels with inductor: about a minute in all on 2 CPU cores


def _engine():
    """The module holding the functional core and its dispatch (``_adam_engine`` after the optim/ split)."""
    for name in ("hf_alphaadam.optim._adam_engine", "hf_alphaadam.optim.alphaadam"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_single_tensor_alphaadam"):
            return module
    raise ImportError("no module defines _single_tensor_alphaadam")


_single_tensor_alphaadam = _engine()._single_tensor_alphaadam
CHUNK = 4


@pytest.fixture(autouse=True)
def _small_chunks_without_native_kernel(monkeypatch):
    monkeypatch.setenv("HF_ALPHAADAM_NATIVE", "0")  # fp32 CPU steps take these kernels, not the C one
    monkeypatch.setattr(_compiled, "CHUNK_TENSORS", {"cpu": CHUNK})


MODES = list(itertools.product(["async", "sync", "none"], ["norm", "count", "none"]))
# 5 tensors: two chunks of 4, the second padded. (70, 80) has more than 4096 elements: the reductions take
# inductor's parallel cascade-sum variant; (1,) is a size dynamo would specialise on by default
SHAPES = ((6, 5), (7,), (3, 4, 2), (70, 80), (1,))
TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=0, atol=1e-2)}


class State:
    def __init__(self, dtype: torch.dtype, shapes=SHAPES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
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


def options_for(mask, alpha, lr=1e-2, **overrides):
    options = dict(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, mask=mask, alpha=alpha,
                   alpha_max=3.0 if alpha == "count" else None, first_step="full", maximize=False)
    options.update(overrides)
    return options


def run_both(dtype, mask, alpha, steps=6, none_every=3, shapes=SHAPES, lr_schedule=None, **overrides):
    reference, compiled = State(dtype, shapes), State(dtype, shapes)
    for step in range(steps):
        options = options_for(mask, alpha, **overrides)
        if lr_schedule is not None:
            options["lr"] = lr_schedule(step)
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
        alpha, ratio = torch.full((n,), float("nan"), dtype=torch.float64), torch.empty(n, dtype=torch.float64)
        for positions, a, r in buckets:
            alpha[positions] = a.double()
            ratio[positions] = r.double()
        return alpha, ratio

    for a, b in zip(flatten(expected), flatten(got)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, equal_nan=True)  # 0 / 0 for an empty tensor


def assert_same(reference: State, compiled: State, dtype: torch.dtype) -> None:
    for a, b in zip(reference.params, compiled.params):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, **TOLERANCES[dtype])
    for name in ("exp_avgs", "exp_avg_sqs", "steps"):
        for a, b in zip(getattr(reference, name), getattr(compiled, name)):
            assert a.dtype == b.dtype
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mask,alpha", MODES)
def test_compiled_matches_reference_on_params_state_and_statistics(mask, alpha):
    assert_same(*run_both(torch.float32, mask, alpha), torch.float32)


@pytest.mark.parametrize("mask,alpha", [("async", "norm"), ("sync", "count"), ("none", "none")])
def test_compiled_bf16_params_match_reference(mask, alpha):
    """bf16 parameters and gradients, fp32 moments: fp32 math, results rounded into the bf16 parameters."""
    assert_same(*run_both(torch.bfloat16, mask, alpha), torch.bfloat16)


@pytest.mark.parametrize("mask,alpha", [("async", "norm"), ("sync", "count")])
def test_compiled_maximize(mask, alpha):
    assert_same(*run_both(torch.float32, mask, alpha, maximize=True), torch.float32)


def test_compiled_first_step_masked_and_alpha_max():
    assert_same(*run_both(torch.float32, "async", "norm", first_step="masked", alpha_max=1.5), torch.float32)


def test_compiled_tensor_lr_matches_float_lr():
    reference, compiled = run_both(torch.float32, "async", "norm", lr=torch.tensor(1e-2))
    assert_same(reference, compiled, torch.float32)


def test_compiled_non_contiguous_tensors_are_written_back():
    params = [torch.randn(6, 5).t(), torch.randn(9)]
    reference = [p.clone() for p in params]
    states = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    reference_states = [[torch.zeros_like(p) for p in reference] for _ in range(2)]
    steps, reference_steps = [torch.tensor(0.0) for _ in params], [torch.tensor(0.0) for _ in params]
    grads = [torch.randn(p.shape) for p in params]
    _compiled_alphaadam(params, grads, *states, steps, **options_for("sync", "norm"))
    _single_tensor_alphaadam(reference, grads, *reference_states, reference_steps, **options_for("sync", "norm"))
    assert not params[0].is_contiguous()
    for got, expected in zip(params + states[0] + states[1], reference + reference_states[0] + reference_states[1]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_compiled_empty_mask_tensor_is_not_moved_even_by_weight_decay():
    params = [torch.ones(4, 3), torch.ones(5)]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    options = options_for("async", "norm", weight_decay=0.5)
    _compiled_alphaadam(params, [torch.ones(4, 3), torch.ones(5)], exp_avgs, exp_avg_sqs, steps, **options)
    after_first = params[0].clone()
    # opposite sign everywhere for params[0]: m_{t-1} * g < 0, so its async mask is empty
    [(_, alpha, ratio)] = _compiled_alphaadam(params, [-torch.ones(4, 3), torch.ones(5)], exp_avgs, exp_avg_sqs,
                                              steps, **options)
    assert torch.equal(params[0], after_first)
    assert alpha.tolist() == [1.0, 1.0] and ratio.tolist() == [0.0, 1.0]
    assert exp_avgs[0].lt(1).all()  # the moments are still updated


def test_sharded_sums_are_reduced_between_the_passes():
    """reduce_sums sees the local [n, 3] sums of pass A, and pass B uses what it returns (here: doubled, as two
    identical shards would give, with numels the whole tensors' element counts)."""
    seen = []

    def reduce_sums(sums, indices):
        seen.append((sums.clone(), list(indices)))
        return sums * 2

    shapes = ((6, 5), (7,))
    reference, compiled = State(torch.float32, shapes), State(torch.float32, shapes)
    grads = grads_for(reference.params, 0)
    options = options_for("async", "norm", first_step="masked")
    numels = [2 * p.numel() for p in reference.params]
    for state, func in ((reference, _single_tensor_alphaadam), (compiled, _compiled_alphaadam)):
        for step in range(2):  # the second step has a non-trivial mask
            p, m, v, s = state.lists([0, 1])
            buckets = func(p, grads_for(p, step), m, v, s, numels=numels,
                           reduce_sums=lambda sums, at: reduce_sums(sums, at), **options)
        state.buckets = buckets
    compare_buckets(reference.buckets, compiled.buckets, 2)
    assert_same(reference, compiled, torch.float32)
    assert [indices for _, indices in seen[-1:]] == [[0, 1]] and seen[-1][0].shape == (2, 3)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_no_recompiles_across_20_steps_with_a_changing_lr_and_new_sizes():
    run_both(torch.float32, "async", "norm", steps=2)  # everything this test needs is compiled by now
    before = _unique_graphs()
    run_both(torch.float32, "async", "norm", steps=20, lr_schedule=lambda step: 1e-2 * 0.9 ** step)
    run_both(torch.float32, "async", "norm", steps=2, lr=torch.tensor(3e-3))  # a tensor lr (an LR scheduler's)
    shapes = [(33, 17), (9000,), (5,), (1,), (0,), (2, 2), (3,)]  # new sizes and a new tensor count
    run_both(torch.float32, "async", "norm", steps=3, shapes=shapes, none_every=0)
    assert _unique_graphs() == before


def _graphs(function) -> int:
    """How many compiled graphs dynamo holds for ``function`` (its cache entries: one per guard set)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(function.__code__))


def test_graphs_per_bucket_do_not_grow_with_the_tensor_count(monkeypatch, caplog):
    """10 tensors and 300 tensors (of other sizes) run on the same graphs: at most one per kernel and dtype
    combination compiled so far, whatever the tensor count. The first-step compilation time is logged."""
    monkeypatch.setattr(_compiled, "_WARM", set())  # compile (or find compiled) again, and log it
    with caplog.at_level(logging.INFO, logger=_compiled.__name__):
        run_both(torch.float32, "async", "norm", steps=2, shapes=[(5, 3)] * 9 + [(40,)], none_every=0)
    kernels = (_compiled._sums_norm, _compiled._apply)
    after_ten = [_graphs(kernel) for kernel in kernels]
    run_both(torch.float32, "async", "norm", steps=2, shapes=[(3, 2)] * 150 + [(7,)] * 150, none_every=0)
    assert [_graphs(kernel) for kernel in kernels] == after_ten
    dtype_combinations = {name: len({key for key in _compiled._WARM if key[0] == name})
                          for name in ("sums_norm", "apply")}
    assert dtype_combinations == {"sums_norm": 1, "apply": 1}
    # one graph per dtype combination stepped so far in this process (this module: fp32; bf16; fp32 masters with
    # bf16 gradients), whatever the tensor counts and sizes
    assert all(1 <= graphs <= 3 for graphs in after_ten), after_ten
    timings = [r.getMessage() for r in caplog.records if "compiled the AlphaAdam kernel" in r.getMessage()]
    assert len(timings) == 2 and all(m.endswith(" s") for m in timings), timings


def test_parameters_and_padding_share_one_graph(monkeypatch):
    """Parameters (whose views require grad) next to scratch padding, in lists of 3 and 6 tensors: no new graph
    after the first step (dynamo guards on requires_grad; the flat views are detached)."""
    monkeypatch.setattr(_engine(), "COMPILE_MIN_NUMEL", 1)
    for count in (3, 6, 3):
        params = [torch.nn.Parameter(torch.randn(4, count)) for _ in range(count)]
        optimizer = AlphaAdam(params, lr=1e-2, fused=True)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
        if count == 3 and "graphs" not in locals():
            graphs = [_graphs(kernel) for kernel in (_compiled._sums_norm, _compiled._apply)]
    assert [_graphs(kernel) for kernel in (_compiled._sums_norm, _compiled._apply)] == graphs


def test_one_compiled_call_per_chunk_and_pass(monkeypatch):
    calls = []
    original = _compiled._run
    monkeypatch.setattr(_compiled, "_run", lambda name, *args: calls.append((name, len(args[0]))) or original(
        name, *args))
    run_both(torch.float32, "async", "norm", steps=1, shapes=[(3, 2)] * 9, none_every=0)
    assert calls == [("sums_norm", CHUNK)] * 3 + [("apply", CHUNK)] * 3  # 9 tensors: 3 chunks, the last padded


def test_compiled_momentum_free_matches_the_foreach_step():
    try:
        from hf_alphaadam.optim import _adapm_fast
    except ImportError:  # before the optim/ split (the package's ``adapm`` attribute is the function)
        _adapm_fast = importlib.import_module("hf_alphaadam.optim.adapm")

    torch.manual_seed(0)
    shapes = [(6, 5), (7,), (70, 80), (1,), (3, 4)]
    results = []
    for func in (_adapm_fast._foreach_momentum_free, _compiled_momentum_free):
        torch.manual_seed(0)
        params = [torch.randn(s) for s in shapes]
        exp_avg_sqs = [torch.zeros(s) for s in shapes]
        steps = [torch.tensor(0.0) for _ in shapes]
        for step in range(4):
            grads = [torch.randn(s) for s in shapes]
            func(params, grads, exp_avg_sqs, steps, lr=1e-2 / (step + 1), beta2=0.999, eps=1e-8, weight_decay=0.1,
                 maximize=step == 3)
        results.append((params, exp_avg_sqs, steps))
    for got, expected in zip(*[sum(r, []) for r in results[::-1]]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def _train_pair(make_other, steps=4, shapes=((6, 5), (70, 80), (7,))):
    """Params of the reference loop and of ``make_other(params)`` after the same steps, with their optimizers."""
    torch.manual_seed(0)
    reference = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    other = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    loop = AlphaAdam(reference, lr=1e-2, weight_decay=0.1, foreach=False)
    optimizer = make_other(other)
    for step in range(steps):
        for a, b in zip(reference, other):
            a.grad = torch.randn(a.shape) + 0.3 * step
            b.grad = a.grad.clone()
        loop.step()
        optimizer.step()
    return reference, other, loop, optimizer


def _spy_compiled(monkeypatch) -> list[list[tuple[int, ...]]]:
    """Record the shapes of the tensors each call of the compiled path's driver receives."""
    calls: list[list[tuple[int, ...]]] = []
    original = _compiled._compiled_alphaadam

    def spy(params, *args, **kwargs):
        calls.append([tuple(p.shape) for p in params])
        return original(params, *args, **kwargs)

    monkeypatch.setattr(_compiled, "_compiled_alphaadam", spy)
    return calls


def test_alphaadam_fused_option_matches_reference_loop(monkeypatch):
    monkeypatch.setattr(_engine(), "COMPILE_MIN_NUMEL", 1)  # every tensor through the compiled kernels
    calls = _spy_compiled(monkeypatch)
    reference, fused, loop, optimizer = _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, weight_decay=0.1, fused=True))
    assert calls and all(len(shapes) == 3 for shapes in calls)
    for a, b in zip(reference, fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(optimizer.state[b]["exp_avg"], loop.state[a]["exp_avg"], rtol=1e-5, atol=1e-7)
    expected, got = loop.statistics(per_tensor=True)["tensors"], optimizer.statistics(per_tensor=True)["tensors"]
    assert got.keys() == expected.keys() and len(got) == 3
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key


@pytest.mark.parametrize("bf16_update", ["kahan", "stochastic"])
def test_bf16_updates_on_fp32_masters_match_the_reference_loop(monkeypatch, bf16_update):
    """bf16 parameters with Kahan / stochastic write-back: the core steps fp32 masters (bf16 gradients) on the
    compiled kernels; the write-back is the optimizer's, the same for every path."""
    monkeypatch.setattr(_engine(), "COMPILE_MIN_NUMEL", 1)
    calls = _spy_compiled(monkeypatch)
    torch.manual_seed(0)
    shapes = ((6, 5), (70, 80), (7,))
    made = {}
    for name, path in (("loop", dict(foreach=False)), ("fused", dict(fused=True))):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s).bfloat16()) for s in shapes]
        optimizer = AlphaAdam(params, lr=1e-2, weight_decay=0.1, bf16_update=bf16_update, **path)
        for step in range(4):
            for p in params:
                p.grad = (torch.randn(p.shape) + 0.3 * step).bfloat16()
            optimizer.step()
        made[name] = (params, optimizer)
    assert calls and all(len(shapes) == 3 for shapes in calls)
    (reference, loop), (fused, optimizer) = made["loop"], made["fused"]
    for a, b in zip(reference, fused):
        assert b.dtype == torch.bfloat16
        torch.testing.assert_close(b, a, rtol=0, atol=1e-2)
        torch.testing.assert_close(optimizer.state[b]["exp_avg_sq"], loop.state[a]["exp_avg_sq"], rtol=1e-5,
                                   atol=1e-8)


def test_fused_routes_small_tensors_to_foreach_and_matches_reference(monkeypatch):
    monkeypatch.setattr(_engine(), "COMPILE_MIN_NUMEL", 1000)
    calls = _spy_compiled(monkeypatch)
    reference, fused, loop, optimizer = _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, weight_decay=0.1, fused=True))
    assert calls and all(shapes == [(70, 80)] for shapes in calls)  # (6, 5) and (7,) took the foreach path
    for a, b in zip(reference, fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(optimizer.state[b]["exp_avg_sq"], loop.state[a]["exp_avg_sq"], rtol=1e-5,
                                   atol=1e-8)


def test_default_compiles_only_groups_above_the_size_threshold(monkeypatch):
    engine = _engine()
    monkeypatch.setattr(engine, "COMPILE_MIN_NUMEL", 1000)
    calls = _spy_compiled(monkeypatch)
    _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2), steps=2)  # 5637 elements < 2^24: foreach
    assert calls == []
    monkeypatch.setattr(engine, "AUTO_COMPILE_MIN_NUMEL", 5000)
    _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, fused=False), steps=2)  # never compiles
    _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, foreach=True), steps=2)  # an explicit foreach is kept
    assert calls == []
    reference, auto, _, _ = _train_pair(lambda ps: AlphaAdam(ps, lr=1e-2, weight_decay=0.1), steps=3)
    assert calls == [[(70, 80)]] * 3
    for a, b in zip(reference, auto):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_default_falls_back_to_foreach_when_compiling_fails(monkeypatch, caplog):
    engine = _engine()

    def broken(name, args):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(engine, "AUTO_COMPILE_MIN_NUMEL", 5000)
    monkeypatch.setattr(engine, "COMPILE_MIN_NUMEL", 1000)
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
