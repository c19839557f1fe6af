"""Worker threads for AdaPM's low-rank tensors (``_tensor_threads.py``): single-threaded torch kernels in the workers
only, balanced shares, results in order, errors raised, a forked child gets its own pool, and AdaPM stepped with
workers equals AdaPM stepped serially (parameters and state, several steps, statistics)."""

from __future__ import annotations

import multiprocessing
import sys
import threading

import pytest
import torch

from hf_alphaadam import AdaPM
from hf_alphaadam.optim import _tensor_threads

from optim_db import named_params, random_grads, set_grads, step_together

# every kind of tensor the fast path meets: transposed Conv1D (fused q|k|v, c_fc), plain low-rank (tall, wide),
# a momentum-free and a full-momentum matrix and a vector
SPEC = [
    ("h.0.attn.c_attn.weight", (8, 24)),
    ("h.0.mlp.c_fc.weight", (8, 32)),
    ("h.0.mlp.c_proj.weight", (32, 8)),
    ("layers.0.self_attn.q_proj.weight", (12, 10)),
    ("layers.0.mlp.down_proj.weight", (10, 20)),
    ("layers.0.mlp.up_proj.weight", (20, 10)),
    ("layers.0.self_attn.o_proj.weight", (10, 10)),
    ("layers.0.self_attn.v_proj.weight", (6, 10)),
    ("layers.0.input_layernorm.weight", (10,)),
]


def test_per_thread_limits_work_with_this_torch():
    """The CI's torch (CPU wheel, MKL and GNU OpenMP) has the per-thread controls: the workers are used there."""
    if sys.platform != "linux" or not torch.backends.mkl.is_available():
        pytest.skip("the per-thread controls are looked up in torch's Linux MKL / libgomp libraries")
    assert _tensor_threads.available()


def test_workers_are_single_threaded_and_the_caller_keeps_its_threads():
    if not _tensor_threads.available():
        pytest.skip("no per-thread thread limits in this torch build (covered by the test above on Linux)")
    before = torch.get_num_threads()
    meet = threading.Barrier(2, timeout=30)  # both shares at once: two workers run side by side

    def probe(i, share):
        if i < 2:
            meet.wait()
        return torch.get_num_threads(), threading.get_ident()

    seen = _tensor_threads.map_tensors(probe, 6, [3.0, 3.0, 1.0, 1.0, 1.0, 1.0], threads=2)
    assert [n for n, _ in seen] == [1] * 6
    assert len({ident for _, ident in seen} - {threading.get_ident()}) == 2  # two workers, not the caller
    assert torch.get_num_threads() == before


def test_results_in_order_grad_mode_carried_and_errors_raised():
    results = _tensor_threads.map_tensors(lambda i, share: (i, torch.is_grad_enabled()), 5, [5, 1, 4, 2, 3], 2)
    assert [i for i, _ in results] == list(range(5)) and all(enabled for _, enabled in results)
    with torch.no_grad():
        results = _tensor_threads.map_tensors(lambda i, share: torch.is_grad_enabled(), 4, [1] * 4, 2)
    assert results == [False] * 4

    def failing(i, share):
        if i == 3:
            raise RuntimeError("tensor 3 failed")
        return i

    with pytest.raises(RuntimeError, match="tensor 3 failed"):
        _tensor_threads.map_tensors(failing, 6, [1] * 6, 2)


def test_balanced_shares():
    shares = _tensor_threads.balanced_shares([10, 1, 9, 2, 8, 3], 2)
    assert sorted(i for share in shares for i in share) == list(range(6))
    loads = [sum([10, 1, 9, 2, 8, 3][i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= 1
    assert all(share == sorted(share) for share in shares)
    assert _tensor_threads.balanced_shares([1.0], 4) == [[0]]  # no empty shares


def test_resolve_threads():
    cpu = [torch.zeros(2)] * 3
    assert _tensor_threads.resolve_threads(1, cpu) == 1
    assert _tensor_threads.resolve_threads(8, cpu) in (1, 3)  # capped at the tensor count
    meta = [torch.empty(2, device="meta")] * 3
    assert _tensor_threads.resolve_threads(None, meta) == 1  # automatic: CPU tensors only
    if _tensor_threads.available():
        assert _tensor_threads.resolve_threads(None, cpu) == min(torch.get_num_threads(), 3)


def _step_pair(threads_a, threads_b, steps=6, dtype=torch.float32, **options):
    a, b = named_params(SPEC, dtype=dtype), named_params(SPEC, dtype=dtype)
    kwargs = dict(rank=3, lr=1e-2, **options)
    first, second = AdaPM(a, tensor_threads=threads_a, **kwargs), AdaPM(b, tensor_threads=threads_b, **kwargs)
    step_together([(first, [p for _, p in a]), (second, [p for _, p in b])], steps, none_every=4)
    return first, second, a, b


@pytest.mark.parametrize("options", [
    dict(),
    dict(second_moment="mini", head_dim=2),
    dict(mask="async", alpha="norm", residual="clip", residual_clip=0.5),
])
def test_adapm_with_workers_equals_serial(monkeypatch, options):
    """fp32 on the CPU (the native tails included): worker threads change nothing but GEMM rounding."""
    calls = []
    real = _tensor_threads.map_tensors
    monkeypatch.setattr(_tensor_threads, "map_tensors",
                        lambda function, count, weights, threads: calls.append(threads) or
                        real(function, count, weights, threads))
    threaded, serial, a, b = _step_pair(3, 1, **options)
    expected = 3 if _tensor_threads.available() else 1
    assert calls and set(calls) == {expected, 1}
    for (_, p), (_, q) in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key, value in threaded.state[p].items():
            torch.testing.assert_close(value, serial.state[q][key], rtol=1e-4, atol=1e-5, msg=key)
    first, second = threaded.statistics(per_tensor=True)["tensors"], serial.statistics(per_tensor=True)["tensors"]
    assert first.keys() == second.keys() and len(first) >= len(SPEC) - 2  # tensors without a gradient: none
    for name, values in first.items():
        assert values["alpha"] == pytest.approx(second[name]["alpha"], rel=1e-4), name
        assert values["mask_ratio"] == pytest.approx(second[name]["mask_ratio"], abs=1e-6), name


def test_adapm_workers_fp64_match_serial_tightly():
    threaded, serial, a, b = _step_pair(2, 1, dtype=torch.float64)
    for (_, p), (_, q) in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-12)


def test_tensor_threads_validation():
    params = named_params(SPEC[:1])
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"tensor_threads must be None or an integer >= 1, got"):
            AdaPM(params, tensor_threads=bad)


def _child_step(queue):
    torch.set_num_threads(1)  # as DataLoader workers do: GNU OpenMP cannot start a thread team in a forked child
    a = named_params(SPEC, dtype=torch.float32)
    optimizer = AdaPM(a, rank=3, tensor_threads=2, log_policy=False)
    set_grads([p for _, p in a], random_grads([p for _, p in a], 0))
    optimizer.step()
    queue.put(float(sum(p.detach().abs().sum() for _, p in a)))


def test_forked_child_gets_its_own_pool():
    """A DataLoader-style fork after the parent used its workers: the child's step (with two workers asked for)
    must not wait on threads that the fork did not copy."""
    _step_pair(2, 2, steps=1)  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_step, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child's AdaPM step hung")
    assert child.exitcode == 0
    assert queue.get(timeout=10) > 0


def test_workers_are_joined_before_a_fork():
    """No idle worker threads are left running when the process forks (the next step starts new ones)."""
    _step_pair(2, 2, steps=1)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=len, args=([],))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("hf_alphaadam")]
    threaded, serial, a, b = _step_pair(2, 1, steps=2)  # and the workers come back
    if _tensor_threads.available():
        assert [t for t in threading.enumerate() if t.name.startswith("hf_alphaadam")]
    for (_, p), (_, q) in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
