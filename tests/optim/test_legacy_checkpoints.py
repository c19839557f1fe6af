"""Checkpoints written by an earlier commit still load and resume (``tests/fixtures/legacy_checkpoints/``).

The files were written by ``tests/fixtures/make_legacy_checkpoints.py`` at commit 3121490 (before the optimizer
restructuring of issue 15): a tiny named model stepped 3 times on the reference loop, its optimizer state_dict, the
gradients of 2 more steps, and the parameters and state after those steps. Today's code must load each file with
``weights_only=True``, keep every state tensor's dtype and value, and take the same 2 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_alphaadam.optim import AdaDiag, AdaPM, AlphaAdam
from optim_db import assert_same_state, state_tensors, state_tensors_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_checkpoints"
CLASSES = {"AlphaAdam": AlphaAdam, "AdaPM": AdaPM, "AdaDiag": AdaDiag}
CONFIGURATIONS = ["alphaadam", "cautious_adamw", "alphaadam_8bit", "alphaadam_bf16_kahan",
                  "alphaadam_bf16_stochastic", "adapm", "adapm_mini", "adadiag", "adadiag_pp"]
# The default paths (native C kernel for fp32 AlphaAdam, AdaPM's fast path, AdaDiag's batched path) do the
# reference's math in another order: over two steps from the same state they differ by a few fp32 ulps of each
# value (1e-5 relative; 1e-6 absolute for values near zero). A bf16 parameter written back from fp32 values that
# differ in the last bits can land one bf16 step (2^-8 relative) apart. The 8-bit moments are requantized each
# step, so such a difference may also move a code by one step (at most 1/127 of the block's absmax, about 2e-2 of
# the largest |m| of these tiny blocks).
DEFAULT_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2**-7, atol=1e-6)}


def load(stem: str) -> dict:
    return torch.load(FIXTURES / f"{stem}.pt", weights_only=True)


def resume(checkpoint: dict, foreach: bool | None):
    """The saved model and a fresh optimizer built by today's code, loaded from the checkpoint."""
    config = checkpoint["config"]
    model = {name: tensor.clone().requires_grad_() for name, tensor in checkpoint["model"].items()}
    optimizer = CLASSES[config["optimizer"]](list(model.items()), foreach=foreach, **config["kwargs"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return model, optimizer


def resume_and_step(stem: str, foreach: bool | None):
    """Resume from the fixture and take its saved steps; returns the model, the optimizer and the checkpoint."""
    if stem.endswith("8bit"):
        pytest.importorskip("bitsandbytes")
    checkpoint = load(stem)
    model, optimizer = resume(checkpoint, foreach)
    for grads in checkpoint["grads"]:
        for name, param in model.items():
            param.grad = None if grads[name] is None else grads[name].clone()
        optimizer.step()
    return model, optimizer, checkpoint


def test_every_configuration_has_a_fixture():
    assert sorted(p.stem for p in FIXTURES.glob("*.pt")) == sorted(CONFIGURATIONS)
    assert sum(p.stat().st_size for p in FIXTURES.glob("*.pt")) < 500_000


@pytest.mark.parametrize("stem", CONFIGURATIONS)
def test_legacy_checkpoint_loads_keeping_every_state_tensor(stem):
    if stem.endswith("8bit"):
        pytest.importorskip("bitsandbytes")
    checkpoint = load(stem)
    _, optimizer = resume(checkpoint, foreach=False)
    saved = state_tensors_of(checkpoint["optimizer"])
    assert_same_state(state_tensors(optimizer), saved, what=f"{stem} after load_state_dict")
    assert any(v.dtype != torch.float32 for s in saved.values() for v in s.values()) == (
        stem in ("alphaadam_8bit", "alphaadam_bf16_kahan", "alphaadam_bf16_stochastic"))


@pytest.mark.parametrize("stem", CONFIGURATIONS)
def test_legacy_checkpoint_resumes_exactly_on_the_reference_loop(stem):
    model, optimizer, checkpoint = resume_and_step(stem, foreach=False)
    for name, param in model.items():
        expected = checkpoint["expected"]["model"][name]
        assert param.dtype == expected.dtype and torch.equal(param.detach(), expected), name
    assert_same_state(state_tensors(optimizer), checkpoint["expected"]["state"], what=stem)


@pytest.mark.parametrize("stem", CONFIGURATIONS)
def test_legacy_checkpoint_resumes_on_the_default_path(stem):
    model, optimizer, checkpoint = resume_and_step(stem, foreach=None)
    for name, param in model.items():
        expected = checkpoint["expected"]["model"][name]
        torch.testing.assert_close(param.detach(), expected, **DEFAULT_TOLERANCE[expected.dtype],
                                   msg=lambda m: f"{name}: {m}")
    expected_state = checkpoint["expected"]["state"]
    state = state_tensors(optimizer)
    assert state.keys() == expected_state.keys()
    for index, entries in expected_state.items():
        assert state[index].keys() == entries.keys(), index
        for key, value in entries.items():
            got = state[index][key]
            assert got.dtype == value.dtype, (index, key)
            if value.dtype == torch.uint8:  # 8-bit codes: at most one code step apart
                assert (got.int() - value.int()).abs().max() <= 1, (index, key)
            elif value.is_floating_point():  # fp32 moments / absmax, bf16 Kahan compensation
                tolerance = DEFAULT_TOLERANCE[torch.bfloat16 if value.dtype == torch.bfloat16 else torch.float32]
                torch.testing.assert_close(got, value, **tolerance, msg=lambda m: f"parameter {index} {key}: {m}")
            else:
                assert torch.equal(got, value), (index, key)
