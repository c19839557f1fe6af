"""AlphaAdam with 8-bit (bitsandbytes blockwise) moments: layout, memory, accuracy against 32-bit, refusals.

The paths against the reference loop, resume and bad arguments are the table's (``optim_db.py``)."""

from __future__ import annotations

import sys

import pytest
import torch

from hf_alphaadam import AlphaAdam
from hf_alphaadam.optim import _quantized

pytest.importorskip("bitsandbytes")


def char_model_named(task, seed=0, dtype=torch.float32):
    model = task.model(seed, dtype)
    return model, list(model.named_parameters())


def train(task, optimizer, model, steps, seed=0):
    losses = []
    for batch in task.batches(steps, seed=seed):
        loss = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def state_bytes(optimizer):
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for k, v in state.items()
               if isinstance(v, torch.Tensor) and k != "step")


# ---------------------------------------------------------------------------------------------------------
# layout and memory


def test_large_tensors_get_uint8_codes_small_ones_and_embeddings_keep_fp32():
    embedding = torch.nn.Embedding(512, 16)  # 8192 elements, but an embedding
    big = torch.nn.Linear(128, 64)  # 8192 + 64
    named = [("model.embed_tokens.weight", embedding.weight), ("layer.weight", big.weight), ("layer.bias", big.bias)]
    optimizer = AlphaAdam(named, state_bits=8)
    for _, param in named:
        param.grad = torch.randn_like(param)
    optimizer.step()
    quantized = optimizer.state[big.weight]
    assert set(quantized) == {"step", *_quantized.QUANTIZED_KEYS}
    assert quantized["exp_avg_codes"].dtype == torch.uint8 and quantized["exp_avg_codes"].shape == big.weight.shape
    assert quantized["exp_avg_sq_codes"].dtype == torch.uint8
    assert quantized["exp_avg_absmax"].dtype == torch.float32 and quantized["exp_avg_absmax"].shape == (8192 // 256,)
    for param in (embedding.weight, big.bias):
        assert set(optimizer.state[param]) == {"step", "exp_avg", "exp_avg_sq"}
        assert optimizer.state[param]["exp_avg"].dtype == torch.float32

    everything = AlphaAdam([(n, torch.nn.Parameter(p.detach().clone())) for n, p in named], state_bits=8,
                           quantize_embeddings=True, min_8bit_size=0)
    for param in everything.param_groups[0]["params"]:
        param.grad = torch.randn_like(param)
    everything.step()
    assert all(_quantized.is_quantized(s) for s in everything.state.values())


def test_state_memory_is_two_bytes_per_parameter_plus_block_absmax():
    shapes = [(768, 768), (3072, 768), (1000, 7)]  # the last is not a multiple of the block size
    params = [torch.zeros(shape, requires_grad=True) for shape in shapes]
    small = torch.zeros(100, requires_grad=True)
    eight = AlphaAdam(params + [small], state_bits=8)
    full = AlphaAdam([p.detach().clone().requires_grad_() for p in params + [small]])
    for optimizer in (eight, full):
        for param in optimizer.param_groups[0]["params"]:
            param.grad = torch.randn_like(param)
        optimizer.step()
    numels = [p.numel() for p in params]
    expected = sum(2 * n + 8 * -(-n // 256) for n in numels) + 8 * small.numel()
    assert state_bytes(eight) == expected == sum(map(_quantized.quantized_state_bytes, numels)) + 8 * 100
    assert state_bytes(full) == 8 * (sum(numels) + 100)
    assert state_bytes(eight) / state_bytes(full) < 0.26  # ~2.03 / 8 bytes per parameter


# ---------------------------------------------------------------------------------------------------------
# accuracy against the 32-bit optimizer on a real task


def test_8bit_tracks_32bit_over_100_steps(char_task):
    """100 steps of next-character prediction: every training loss within 1% (relative) of the 32-bit run,
    validation loss within 0.5%, and each tensor's distance to the 32-bit parameters under 10% of how far the
    32-bit run moved it (observed: 0.1%, <0.1%, 1-4%)."""
    init = dict(char_task.model(0).named_parameters())
    runs = {}
    for bits in (32, 8):
        model, named = char_model_named(char_task)
        optimizer = AlphaAdam(named, lr=3e-3, weight_decay=0.01, state_bits=bits)
        runs[bits] = (model, optimizer, train(char_task, optimizer, model, 100))
    (model32, opt32, losses32), (model8, opt8, losses8) = runs[32], runs[8]
    assert sum(_quantized.is_quantized(s) for s in opt8.state.values()) == 2  # the two large Linear weights
    assert losses32[-1] < losses32[0] - 1.0  # it trained
    for a, b in zip(losses32, losses8):
        assert abs(a - b) <= 0.01 * a
    with torch.no_grad():
        valid32, valid8 = char_task.loss(model32, char_task.valid), char_task.loss(model8, char_task.valid)
    assert abs(valid8 - valid32) <= 0.005 * valid32
    for (name, p32), (_, p8) in zip(model32.named_parameters(), model8.named_parameters()):
        moved = (p32 - init[name]).norm()
        assert (p8 - p32).norm() <= 0.1 * moved, name
    stats32, stats8 = opt32.statistics()["groups"]["group0"], opt8.statistics()["groups"]["group0"]
    assert stats8["mask_ratio"] == pytest.approx(stats32["mask_ratio"], abs=0.02)


def test_async_mask_equals_32bit_mask_wherever_the_quantized_sign_is_right():
    """From one state (32-bit m_{t-1}, and its 8-bit quantization) and one gradient, the coordinates each
    optimizer moves are the same wherever sign(dequantized m) == sign(m); those are nearly all of them."""
    generator = torch.Generator().manual_seed(0)
    shape = (64, 256)
    m_prev = torch.randn(shape, generator=generator) * torch.rand(shape, generator=generator) ** 3
    v_prev = torch.randn(shape, generator=generator).square() + 0.1
    grad = torch.randn(shape, generator=generator)
    start = torch.randn(shape, generator=generator)
    moved = {}
    for bits in (32, 8):
        param = torch.nn.Parameter(start.clone())
        optimizer = AlphaAdam([param], lr=1e-2, weight_decay=0.0, state_bits=bits)
        param.grad = torch.zeros(shape)
        optimizer.step()  # creates the state (a zero gradient does not move the parameter at step 1... by lr*0)
        state = optimizer.state[param]
        state["step"].fill_(5.0)
        if bits == 32:
            state["exp_avg"].copy_(m_prev)
            state["exp_avg_sq"].copy_(v_prev)
        else:
            _quantized.quantize_moment_(state, "exp_avg", m_prev)
            _quantized.quantize_moment_(state, "exp_avg_sq", v_prev)
            dequantized_sign = _quantized.dequantize_moment(state, "exp_avg").sign()
        param.data.copy_(start)
        param.grad = grad.clone()
        optimizer.step()
        moved[bits] = param.detach() != start
    agree = dequantized_sign == m_prev.sign()
    assert agree.float().mean() > 0.99
    assert torch.equal(moved[8][agree], moved[32][agree])
    assert 0.3 < moved[8].float().mean() < 0.7  # a real mask, neither empty nor full


# ---------------------------------------------------------------------------------------------------------
# errors


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"pip install hf-alphaadam\[bnb\]"):
        AlphaAdam([torch.zeros(3, requires_grad=True)], state_bits=8)
    AlphaAdam([torch.zeros(3, requires_grad=True)])  # 32-bit needs no bitsandbytes


def test_flat_zero_partition_group_refused():
    param = torch.zeros(8192, requires_grad=True)
    optimizer = AlphaAdam([{"params": [param], "whole_numel": 16384}], state_bits=8)
    param.grad = torch.randn_like(param)
    with pytest.raises(NotImplementedError, match="state_bits=8 is not supported"):
        optimizer.step()


def test_dtensor_params_refused(single_process_mesh):
    weight = single_process_mesh.parameter(torch.randn(64, 128), torch.randn(64, 128))
    with pytest.raises(NotImplementedError, match="DTensor"):
        AlphaAdam([weight], state_bits=8).step()
    AlphaAdam([weight], state_bits=32).step()  # the 32-bit optimizer still handles it
