"""8-bit moments and bf16 / fp16 updates are the shell's (``_precision.py``), so AdaPM and AdaDiag have them too:
which state is quantized, that the paths agree with the reference loop, and that a checkpoint resumes exactly.
(AlphaAdam's are in ``test_8bit.py`` / ``test_bf16_update.py``; every configuration is also a row of the table.)"""

from __future__ import annotations

import io

import pytest
import torch

from hf_alphaadam import AdaDiag, AdaPM
from hf_alphaadam.optim import _quantized

pytest.importorskip("bitsandbytes")

SHAPES = {"model.embed_tokens.weight": (40, 16), "layers.0.self_attn.q_proj.weight": (16, 16),
          "layers.0.self_attn.v_proj.weight": (16, 16), "layers.0.self_attn.o_proj.weight": (16, 16),
          "layers.0.mlp.up_proj.weight": (24, 16), "layers.0.input_layernorm.weight": (16,)}


def named(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(name, torch.randn(shape, generator=generator).to(dtype).requires_grad_())
            for name, shape in SHAPES.items()]


def run(build, params, steps, start=0):
    optimizer = build(params)
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(100 + step)
        for _, p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        optimizer.step()
    return optimizer


def adapm(params, **kwargs):
    return AdaPM(params, **{"lr": 1e-2, "rank": 2, "log_policy": False, "state_bits": 8, "min_8bit_size": 64,
                            **kwargs})


def adadiag(params, **kwargs):
    return AdaDiag(params, **{"lr": 1e-2, "update_freq": 2, "state_bits": 8, "min_8bit_size": 64, **kwargs})


def test_adapm_quantizes_the_full_size_moments_only():
    params = named()
    optimizer = run(adapm, params, 3)
    state = {name: optimizer.state[p] for name, p in params}
    # v_proj (full momentum): both moments 8-bit; o_proj (no momentum): its v
    assert _quantized.quantized_keys(state["layers.0.self_attn.v_proj.weight"]) == ["exp_avg", "exp_avg_sq"]
    assert _quantized.quantized_keys(state["layers.0.self_attn.o_proj.weight"]) == ["exp_avg_sq"]
    # low-rank q / MLP: the factors stay fp32, their full-size v is 8-bit
    for name in ("layers.0.self_attn.q_proj.weight", "layers.0.mlp.up_proj.weight"):
        assert state[name]["lowrank_left"].dtype == torch.float32
        assert _quantized.quantized_keys(state[name]) == ["exp_avg_sq"]
        assert state[name]["exp_avg_sq_codes"].dtype == torch.uint8
    # the embedding keeps 32-bit moments (quantize_embeddings off), the norm is below min_8bit_size
    assert not _quantized.is_quantized(state["model.embed_tokens.weight"])
    assert not _quantized.is_quantized(state["layers.0.input_layernorm.weight"])


def test_adadiag_quantizes_moments_and_keeps_bases_fp32():
    params = [(n, p) for n, p in named() if "proj" in n]
    optimizer = run(adadiag, params, 3)
    for _, p in params:
        state = optimizer.state[p]
        assert _quantized.quantized_keys(state) == ["exp_avg", "exp_avg_sq"]
        bases = [state[key] for key in ("basis_left", "basis_right") if key in state]
        assert len(bases) == 1 and bases[0].dtype == torch.float32  # one-sided, on the smaller side


@pytest.mark.parametrize("build", [adapm, adadiag], ids=["adapm", "adadiag"])
def test_8bit_paths_match_and_track_32_bit(build):
    reference, fast = named(), named()
    run(lambda ps: build(ps, foreach=False), reference, 5)
    quantized = run(build, fast, 5)
    for (_, a), (_, b) in zip(reference, fast):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    full = named()
    dense = run(lambda ps: build(ps, state_bits=32), full, 5)
    for (name, a), (_, b) in zip(full, fast):  # the codes hold the moments the 32-bit run keeps
        for key in _quantized.quantized_keys(quantized.state[b]):
            value = _quantized.dequantize_moment(quantized.state[b], key)
            expected = dense.state[a][key]
            assert (value - expected).norm() < 0.05 * expected.norm(), (name, key)
    start = named()
    for (_, a), (_, b), (_, s) in zip(full, fast, start):  # 8-bit moments move the weights as 32-bit ones do
        moved = (a - s).norm()
        assert (b - a).norm() < 0.1 * moved


@pytest.mark.parametrize("build", [adapm, adadiag], ids=["adapm", "adadiag"])
@pytest.mark.parametrize("bf16_update", ["kahan", "stochastic"])
def test_8bit_and_bf16_updates_resume_exactly(build, bf16_update):
    uninterrupted = named(torch.bfloat16)
    run(lambda ps: build(ps, bf16_update=bf16_update), uninterrupted, 6)
    resumed = named(torch.bfloat16)
    first = run(lambda ps: build(ps, bf16_update=bf16_update), resumed, 3)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    second = build(resumed, bf16_update=bf16_update)
    second.load_state_dict(saved)
    for _, p in resumed:
        state = second.state[p]
        if bf16_update == "kahan":
            assert state["compensation"].dtype == torch.bfloat16
        else:
            assert state["rounding_key"].dtype == torch.int64
    for step in range(3, 6):
        generator = torch.Generator().manual_seed(100 + step)
        for _, p in resumed:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        second.step()
    for (_, a), (_, b) in zip(uninterrupted, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [AdaPM, AdaDiag])
def test_kahan_updates_match_the_reference_loop(cls):
    kwargs = dict(lr=1e-3, bf16_update="kahan", **({"rank": 2, "log_policy": False} if cls is AdaPM else {}))
    reference, fast = named(torch.bfloat16), named(torch.bfloat16)
    ref = run(lambda ps: cls(ps, foreach=False, **kwargs), reference, 4)
    opt = run(lambda ps: cls(ps, **kwargs), fast, 4)
    for (_, a), (_, b) in zip(reference, fast):
        exact_a = a.float() + ref.state[a]["compensation"].float()
        exact_b = b.float() + opt.state[b]["compensation"].float()
        torch.testing.assert_close(exact_b, exact_a, rtol=1e-4, atol=1e-5)
        assert ref.state[a]["exp_avg_sq"].dtype == torch.float32  # the moments of a bf16 parameter stay fp32


def test_8bit_refused_on_a_flat_partition():
    (name, param), = [(n, p) for n, p in named() if "v_proj" in n]
    optimizer = AdaPM([{"params": [param], "param_names": [name], "whole_numel": param.numel()}], state_bits=8,
                      log_policy=False)
    param.grad = torch.randn_like(param)
    with pytest.raises(NotImplementedError, match="state_bits=8 is not supported"):
        optimizer.step()
