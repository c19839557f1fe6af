"""AlphaAdam against the formula and against torch.optim.AdamW; its rules for empty masks, the first step and
statistics. The paths against the reference loop, resume, bad arguments and refusals are the table's
(``optim_db.py``, ``test_optim_db.py``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hf_alphaadam import AlphaAdam
from optim_db import make_params, random_grads, saved_and_loaded, set_grads, step_together

MODES = list(itertools.product(["async", "sync", "none"], ["norm", "count", "none"]))


def adam_direction(state, beta1, beta2, eps):
    """u = (m / bc1) / (sqrt(v / bc2) + eps) from a tensor's state after its step."""
    step = float(state["step"])
    m, v = state["exp_avg"].double(), state["exp_avg_sq"].double()
    return (m / (1 - beta1**step)) / (v.sqrt() / math.sqrt(1 - beta2**step) + eps)


# ---------------------------------------------------------------------------------------------------------
# AdamW equivalence


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_no_mask_no_alpha_equals_adamw(foreach, maximize, weight_decay):
    ours, theirs = make_params(), make_params()
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3, "weight_decay": 0.5 * weight_decay}]
    optimizer = AlphaAdam(groups(ours), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay,
                          mask="none", alpha="none", foreach=foreach, maximize=maximize)
    reference = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.8, 0.95), eps=1e-6,
                                  weight_decay=weight_decay, amsgrad=False, maximize=maximize)
    def same_params():
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)

    step_together([(optimizer, ours), (reference, theirs)], 25, none_every=4, each_step=same_params)
    for a, b in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(optimizer.state[a][key], reference.state[b][key], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# the mask and alpha against the formula


def _one_step_records(mask, alpha, steps=12, foreach=True, **kwargs):
    """Run with weight_decay=0 and yield, per step and tensor, what the formula needs."""
    params = make_params(torch.float64)
    optimizer = AlphaAdam(params, lr=1e-2, weight_decay=0.0, mask=mask, alpha=alpha, foreach=foreach, **kwargs)
    for step in range(steps):
        grads = random_grads(params, step)
        before = [p.detach().clone() for p in params]
        m_prev = [optimizer.state[p]["exp_avg"].clone() if optimizer.state[p] else torch.zeros_like(p)
                  for p in params]
        set_grads(params, grads)
        optimizer.step()
        stats = optimizer.statistics(per_tensor=True)["tensors"]
        for index, (param, grad) in enumerate(zip(params, grads)):
            state = optimizer.state[param]
            yield dict(step=step + 1, delta=(param.detach() - before[index]), grad=grad, m_prev=m_prev[index],
                       m=state["exp_avg"], u=adam_direction(state, 0.9, 0.999, 1e-8),
                       stats=stats[f"group0.{index}"])


def test_async_mask_is_previous_momentum_sign_agreement_and_subset_of_sync():
    checked = 0
    for record in _one_step_records("async", "norm"):
        moved = record["delta"] != 0
        sync = record["m"] * record["grad"] > 0
        if record["step"] == 1:
            assert moved.all(), "the first step must be unmasked"
            continue
        expected = record["m_prev"] * record["grad"] > 0
        assert torch.equal(moved, expected)
        assert not (moved & ~sync).any(), "async mask must be a subset of the sync mask"
        assert record["stats"]["mask_ratio"] == pytest.approx(expected.double().mean().item())
        checked += 1
    assert checked > 0


def test_sync_mask_is_current_momentum_sign_agreement():
    for record in _one_step_records("sync", "count"):
        if record["step"] == 1:
            continue
        assert torch.equal(record["delta"] != 0, record["m"] * record["grad"] > 0)


def test_norm_alpha_restores_the_adam_step_norm():
    for record in _one_step_records("async", "norm"):
        alpha = record["stats"]["alpha"]
        assert alpha >= 1.0
        # delta = -lr * alpha * phi * u, so ||delta|| / lr == ||u|| exactly when alpha is the norm ratio
        assert record["delta"].norm().item() / 1e-2 == pytest.approx(record["u"].norm().item(), rel=1e-9)


def test_count_alpha_matches_cautious_rule():
    for record in _one_step_records("sync", "count"):
        phi = (record["delta"] != 0).double() if record["step"] > 1 else torch.ones_like(record["u"])
        alpha = phi.numel() / (phi.sum().item() + 1)
        assert record["stats"]["alpha"] == pytest.approx(alpha, rel=1e-6)
        torch.testing.assert_close(record["delta"], -1e-2 * alpha * phi * record["u"], rtol=1e-9, atol=1e-15)


def test_alpha_max_clamps():
    records = list(_one_step_records("async", "norm", alpha_max=1.05))
    assert max(r["stats"]["alpha"] for r in records) <= 1.05 + 1e-12
    unclamped = [r for r in _one_step_records("async", "norm") if r["stats"]["alpha"] > 1.05]
    assert unclamped, "the test data must exercise the clamp"


def test_first_step_masked_option_does_not_move_async():
    params = make_params(torch.float64)
    before = [p.detach().clone() for p in params]
    optimizer = AlphaAdam(params, lr=1e-2, weight_decay=0.1, first_step="masked")
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    for param, old in zip(params, before):
        assert torch.equal(param.detach(), old), "m_0 = 0 gives an empty async mask: nothing moves"
    assert all(v["alpha"] == 1.0 and v["mask_ratio"] == 0.0
               for v in optimizer.statistics(per_tensor=True)["tensors"].values())


@pytest.mark.parametrize("foreach", [False, True])
def test_empty_mask_tensor_is_not_moved_even_by_weight_decay(foreach):
    param = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    other = torch.ones(5, dtype=torch.float64, requires_grad=True)
    optimizer = AlphaAdam([param, other], lr=1e-2, weight_decay=0.5, foreach=foreach)
    set_grads([param, other], [torch.ones(4, 3, dtype=torch.float64), torch.ones(5, dtype=torch.float64)])
    optimizer.step()
    after_first = param.detach().clone()
    # gradient of opposite sign everywhere for `param`: m_{t-1} * g < 0, so its async mask is empty
    set_grads([param, other], [-torch.ones(4, 3, dtype=torch.float64), torch.ones(5, dtype=torch.float64)])
    optimizer.step()
    assert torch.equal(param.detach(), after_first)
    stats = optimizer.statistics(per_tensor=True)["tensors"]
    assert stats["group0.0"] == {"alpha": 1.0, "mask_ratio": 0.0}
    assert stats["group0.1"]["mask_ratio"] == 1.0


def test_all_aligned_alphaadam_equals_adamw():
    ours, theirs = make_params(), make_params()
    optimizer = AlphaAdam(ours, lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    for step in range(10):
        grads = [torch.full_like(p, 0.3 + 0.1 * step) for p in ours]  # same sign every step: mask full
        set_grads(ours, grads)
        set_grads(theirs, grads)
        optimizer.step()
        reference.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# precision and state


def test_bf16_params_keep_fp32_states_by_default_and_bf16_on_request():
    params = make_params(torch.bfloat16)
    default = AlphaAdam(params[:1])
    compact = AlphaAdam(params[1:], state_dtype="bf16")
    set_grads(params, random_grads(params, 0))
    default.step()
    compact.step()
    assert default.state[params[0]]["exp_avg"].dtype == torch.float32
    assert compact.state[params[1]]["exp_avg_sq"].dtype == torch.bfloat16


def test_state_dict_holds_only_tensors_and_plain_values():
    params = make_params(torch.bfloat16)
    optimizer = AlphaAdam(params, state_dtype=torch.bfloat16)
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    loaded = saved_and_loaded(optimizer.state_dict())
    assert loaded["param_groups"][0]["state_dtype"] == "bfloat16"


# ---------------------------------------------------------------------------------------------------------
# statistics


def test_statistics_are_tensors_until_read():
    params = make_params(torch.float32)
    optimizer = AlphaAdam(params)
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    (positions, alpha, ratio, tensors), = optimizer._statistics[id(optimizer.param_groups[0])][1]
    assert isinstance(alpha, torch.Tensor) and isinstance(ratio, torch.Tensor)
    assert positions == [0, 1, 2]
    assert all(t is p for t, p in zip(tensors, params))  # the stepped tensors, read for NaN / Inf by statistics()


# ---------------------------------------------------------------------------------------------------------
# training on a real task


@pytest.mark.parametrize("mask,alpha", MODES)
def test_training_reduces_loss_in_every_mode(char_task, mask, alpha):
    model = char_task.model(seed=0)
    optimizer = AlphaAdam(model.parameters(), lr=3e-3, mask=mask, alpha=alpha)
    initial, final = char_task.train_and_evaluate(model, optimizer, 150)
    assert final < initial - 1.0, (initial, final)
    assert final < 3.0  # a uniform guess over the ~60 characters would be ~4.1 nats


def test_statistics_merge_groups_that_share_a_name():
    params = make_params(torch.float64)
    optimizer = AlphaAdam([{"params": [params[0]], "name": "decay", "param_names": ["a"]},
                           {"params": [params[1]], "name": "no_decay", "param_names": ["b"], "weight_decay": 0.0},
                           {"params": [params[2]], "name": "decay", "param_names": ["c"]}])
    for step in range(4):
        set_grads(params, random_grads(params, step))
        optimizer.step()
    stats = optimizer.statistics(per_tensor=True)
    assert stats["groups"]["decay"]["num_tensors"] == 2
    assert stats["groups"]["decay"]["alpha_max"] == max(stats["tensors"]["a"]["alpha"], stats["tensors"]["c"]["alpha"])
    assert stats["groups"]["no_decay"]["num_tensors"] == 1


def test_flat_partition_check_survives_load_state_dict():
    params = make_params(torch.float64)
    optimizer = AlphaAdam(params)
    set_grads(params, random_grads(params, 0))
    optimizer.step()
    optimizer.load_state_dict(optimizer.state_dict())
    flat = torch.cat([p.detach().reshape(-1) for p in params]).requires_grad_()
    flat.grad = torch.ones_like(flat)
    optimizer.param_groups[0]["params"] = [flat]  # what DeepSpeed ZeRO-1/2 does to a multi-tensor group
    with pytest.raises(RuntimeError, match="flat partition"):
        optimizer.step()
