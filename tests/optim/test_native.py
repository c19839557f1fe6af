"""The native C AlphaAdam step (``_native.py``) against the reference loop (``_single_tensor_alphaadam``)."""

from __future__ import annotations

import copy
import itertools
import logging
import sys
import threading

import pytest
import torch

from hf_alphaadam import AlphaAdam
from hf_alphaadam.optim import _native
from hf_alphaadam.optim._native import _native_alphaadam

reference_module = sys.modules["hf_alphaadam.optim._adam_engine"]
_single_tensor_alphaadam = reference_module._single_tensor_alphaadam

# an empty tensor, tiny ones, one just under and two over the kernel's split size (2^16: cut over threads)
SHAPES = ((0,), (7,), (6, 5), (300, 200), (65537,), (300, 230))
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
OPTIONS = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"no C compiler here: {_native.unavailable_reason()}")


def tensors(seed: int, shapes=SHAPES, step: float = 0.0) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=generator) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    exp_avgs = [0.1 * torch.randn(s, generator=generator) if step else torch.zeros(s) for s in shapes]
    exp_avg_sqs = [0.01 * torch.rand(s, generator=generator) if step else torch.zeros(s) for s in shapes]
    steps = [torch.tensor(step) for _ in shapes]
    return [params, grads, exp_avgs, exp_avg_sqs, steps]


def assert_same(native, reference, native_stats, reference_stats) -> None:
    for name, a, b in zip(("params", "grads", "exp_avg", "exp_avg_sq"), native[:4], reference[:4]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")
    assert [float(s) for s in native[4]] == [float(s) for s in reference[4]]
    (_, alpha_n, ratio_n), (_, alpha_r, ratio_r) = native_stats[0], reference_stats[0]
    torch.testing.assert_close(alpha_n, alpha_r, **TOLERANCE)
    torch.testing.assert_close(ratio_n, ratio_r, rtol=1e-6, atol=1e-7, equal_nan=True)  # 0 / 0 for the empty one


@pytest.mark.parametrize("mask,alpha", list(itertools.product(["async", "sync", "none"], ["norm", "count", "none"])))
@pytest.mark.parametrize("threads", [1, 3])
def test_matches_reference_in_every_mode(mask, alpha, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the kernel's thread count
    # each of first_step, maximize, alpha_max and a first / later step in both settings
    for first_step, maximize, alpha_max, step in [("full", False, None, 0.0), ("masked", True, 1.5, 0.0),
                                                  ("full", True, 1.5, 4.0), ("masked", False, None, 4.0)]:
        reference = tensors(seed=int(step) + maximize, step=step)
        native = copy.deepcopy(reference)
        options = dict(OPTIONS, mask=mask, alpha=alpha, alpha_max=alpha_max, first_step=first_step,
                       maximize=maximize)
        reference_stats = _single_tensor_alphaadam(*reference, **options)
        native_stats = _native_alphaadam(*native, **options)
        assert_same(native, reference, native_stats, reference_stats)


def test_non_contiguous_tensors_are_updated_in_place():
    reference = tensors(seed=3, shapes=[(40, 30), (300, 257)], step=2.0)
    reference = [[t.t() for t in values] if k < 4 else values for k, values in enumerate(reference)]
    native = [[t.clone().t().contiguous().t() if k < 4 else t.clone() for t in values]
              for k, values in enumerate(reference)]
    assert not native[0][0].is_contiguous()
    originals = list(native[0])
    options = dict(OPTIONS, mask="async", alpha="norm", alpha_max=None, first_step="full", maximize=False)
    assert_same(native, reference, _native_alphaadam(*native, **options), _single_tensor_alphaadam(*reference,
                                                                                                   **options))
    assert all(a is b for a, b in zip(native[0], originals))


def test_sharded_sums_are_added_before_alpha():
    """Two shards of each tensor stepped in two threads whose ``reduce_sums`` adds their sums (the SUMS / APPLY
    calls of a sharded run) equal the whole tensors stepped by the reference."""
    shapes = [(9, 4), (300, 260)]
    whole = tensors(seed=5, shapes=shapes, step=3.0)
    options = dict(OPTIONS, mask="async", alpha="count", alpha_max=None, first_step="full", maximize=False)
    shards = []
    for part in range(2):
        shard = [[t.reshape(-1).chunk(2)[part].clone() for t in values] if k < 4 else copy.deepcopy(values)
                 for k, values in enumerate(whole)]
        shards.append(shard)
    numels = [torch.Size(s).numel() for s in shapes]
    deposited: list[torch.Tensor | None] = [None, None]
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def run(part: int) -> None:
        def reduce_sums(sums: torch.Tensor, indices: list[int]) -> torch.Tensor:
            assert indices == [0, 1]
            deposited[part] = sums.clone()
            barrier.wait()
            return deposited[0] + deposited[1]

        results[part] = _native_alphaadam(*shards[part], numels=numels, reduce_sums=reduce_sums, **options)

    workers = [threading.Thread(target=run, args=(part,)) for part in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    reference_stats = _single_tensor_alphaadam(*whole, **options)
    for k in range(4):
        for i, tensor in enumerate(whole[k]):
            joined = torch.cat([shards[0][k][i], shards[1][k][i]]).view(tensor.shape)
            torch.testing.assert_close(joined, tensor, **TOLERANCE)
    for part in range(2):
        torch.testing.assert_close(results[part][0][1], reference_stats[0][1], **TOLERANCE)
        torch.testing.assert_close(results[part][0][2], reference_stats[0][2], rtol=1e-6, atol=1e-7)


def _model_pair(**options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 256), torch.nn.Tanh(), torch.nn.Linear(256, 3))
    twin = copy.deepcopy(model)
    return model, twin, AlphaAdam(model.parameters(), lr=1e-2, **options), AlphaAdam(twin.parameters(), lr=1e-2,
                                                                                     foreach=False)


def _train(model, twin, optimizer, reference, steps: int = 4) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 300, generator=generator)
        for net, opt in ((model, optimizer), (twin, reference)):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()


def test_default_step_takes_the_native_kernel_and_matches_reference(monkeypatch):
    calls = []
    original = _native._native_alphaadam
    monkeypatch.setattr(_native, "_native_alphaadam", lambda *a, **k: calls.append(len(a[0])) or original(*a, **k))
    model, twin, optimizer, reference = _model_pair()
    _train(model, twin, optimizer, reference)
    assert calls == [4] * 4  # every fp32 CPU tensor of the group, in one call per step
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(optimizer.state[a][key], reference.state[b][key], rtol=1e-5, atol=1e-8)
    statistics, expected = optimizer.statistics(), reference.statistics()
    assert statistics.keys() == expected.keys()
    for kind in statistics:
        for group in statistics[kind]:
            assert statistics[kind][group] == pytest.approx(expected[kind][group], rel=1e-5), (kind, group)


@pytest.mark.parametrize("options,env", [(dict(foreach=True), "1"), (dict(foreach=False), "1"),
                                         (dict(fused=False), "1"), ({}, "0")])
def test_explicit_paths_and_the_switch_keep_it_off(options, env, monkeypatch):
    monkeypatch.setenv("HF_ALPHAADAM_NATIVE", env)
    monkeypatch.setattr(_native, "_native_alphaadam", lambda *a, **k: pytest.fail("the native kernel was used"))
    model, twin, optimizer, reference = _model_pair(**options)
    _train(model, twin, optimizer, reference, steps=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_other_dtypes_take_the_other_paths(monkeypatch):
    monkeypatch.setattr(_native, "_native_alphaadam", lambda *a, **k: pytest.fail("the native kernel was used"))
    param = torch.nn.Parameter(torch.randn(40, 30, dtype=torch.bfloat16))
    optimizer = AlphaAdam([param], lr=1e-2)
    param.grad = torch.randn_like(param)
    optimizer.step()
    assert optimizer.state[param]["exp_avg"].dtype == torch.float32


def test_failed_build_warns_once_and_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_native, "_LIBRARY", None)
    monkeypatch.setattr(_native, "_ERROR", None)
    monkeypatch.setenv("HF_ALPHAADAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    model, twin, optimizer, reference = _model_pair()
    with caplog.at_level(logging.WARNING, logger="hf_alphaadam.optim._native"):
        _train(model, twin, optimizer, reference, steps=3)
    warnings = [r for r in caplog.records if "native AlphaAdam kernel is unavailable" in r.message]
    assert len(warnings) == 1, [r.message for r in caplog.records]
    assert "HF_ALPHAADAM_NATIVE=0" in warnings[0].message
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOLERANCE)
    assert optimizer.state[next(model.parameters())]["step"].item() == 3  # steps counted once


def test_build_is_cached_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ALPHAADAM_CACHE", str(tmp_path))
    first = _native._build()
    stamp = first.stat().st_mtime_ns
    assert _native._build() == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    # no temporary file left behind: the library and its size / checksum record
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".sha256"]


# --------------------------------------------------------------------------------------------- AdaPM's use of it

def test_momentum_free_step_matches_foreach_ops():
    from hf_alphaadam.optim._adapm_fast import _foreach_momentum_free

    for maximize, weight_decay in ((False, 0.1), (True, 0.0)):
        reference = tensors(seed=7, step=2.0)
        native = copy.deepcopy(reference)
        options = dict(lr=1e-2, beta2=0.99, eps=1e-8, weight_decay=weight_decay, maximize=maximize)
        _foreach_momentum_free(reference[0], reference[1], reference[3], reference[4], **options)
        _native.momentum_free_adam(native[0], native[1], native[3], native[4], **options)
        for k in (0, 1, 3):
            for a, b in zip(native[k], reference[k]):
                torch.testing.assert_close(a, b, **TOLERANCE)
        assert [float(s) for s in native[4]] == [float(s) for s in reference[4]] == [3.0] * len(SHAPES)
        assert all(torch.equal(a, b) for a, b in zip(native[2], reference[2]))  # exp_avg is not touched


GPT2_SPEC = [("transformer.wte.weight", (50, 8)), ("transformer.h.0.attn.c_attn.weight", (8, 24)),
             ("transformer.h.0.attn.c_proj.weight", (8, 8)), ("transformer.h.0.mlp.c_fc.weight", (8, 32)),
             ("transformer.h.0.ln_1.weight", (8,)), ("transformer.h.0.mlp.c_proj.bias", (8,)),
             ("model.layers.0.mlp.up_proj.weight", (32, 8)), ("model.layers.0.self_attn.v_proj.weight", (8, 8))]


@pytest.mark.parametrize("options", [dict(), dict(weight_decay=0.0, maximize=True),
                                     dict(mask="async", alpha="norm", maximize=True),
                                     dict(second_moment="mini", head_dim=4)])
def test_adapm_fp32_fast_path_with_native_kernel_equals_reference(options, monkeypatch):
    from hf_alphaadam import AdaPM

    calls = []
    originals = {name: getattr(_native, name) for name in ("_native_alphaadam", "momentum_free_adam", "adapm_tail")}
    for name, function in originals.items():
        monkeypatch.setattr(_native, name, lambda *a, name=name, function=function, **k: calls.append(
                            name + (":compact" if k.get("denominators") is not None else "")) or function(*a, **k))
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(shape, generator=generator) for _, shape in GPT2_SPEC]
    runs = {}
    for label, foreach in (("reference", False), ("fast", True)):
        named = [(name, torch.nn.Parameter(t.clone())) for (name, _), t in zip(GPT2_SPEC, initial)]
        optimizer = AdaPM(named, rank=2, lr=1e-2, foreach=foreach, log_policy=False, **options)
        steps = torch.Generator().manual_seed(1)
        for _ in range(5):
            for _, p in named:
                p.grad = torch.randn(p.shape, generator=steps)
            optimizer.step()
        runs[label] = (named, optimizer)
    # every native entry point served the fast path (the low-rank tail only without mask and alpha; with the
    # compact v of second_moment="mini", its per-row denominators)
    if "second_moment" in options:
        expected = {"_native_alphaadam", "adapm_tail:compact"}
    else:
        expected = {"_native_alphaadam", "momentum_free_adam"} | ({"adapm_tail"} if "mask" not in options else set())
    assert set(calls) == expected
    (ref_named, reference), (fast_named, fast) = runs["reference"], runs["fast"]
    for (name, a), (_, b) in zip(ref_named, fast_named):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        for key, value in reference.state[a].items():
            torch.testing.assert_close(fast.state[b][key], value, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, key=key, name=name: f"{name} {key}: {m}")
