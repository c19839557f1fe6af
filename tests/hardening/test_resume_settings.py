"""Resuming with changed settings: every row of the table in ``hf_alphaadam/optim/_resume.py``, the scheduler's
running learning rate, old state dicts without the record, and a refused load leaving the optimizer untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_alphaadam import AdaDiag, AdaPM, AlphaAdam
from hf_alphaadam.optim import _quantized

ROWS = 512  # 8192 elements: above min_8bit_size, so state_bits=8 quantizes the weight's moments


def model() -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(ROWS, 16, generator=generator)),
            torch.nn.Parameter(torch.randn(16, generator=generator))]


def train(optimizer, params, steps: int = 3, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()


def checkpoint(**options) -> dict:
    params = model()
    optimizer = AlphaAdam(params, lr=1e-2, **options)
    train(optimizer, params)
    return copy.deepcopy(optimizer.state_dict())


def snapshot(optimizer) -> tuple:
    state = {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
             for p, s in optimizer.state.items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return state, copy.deepcopy(groups)


def assert_same_snapshot(a, b) -> None:
    assert a[1] == b[1]
    assert a[0].keys() == b[0].keys()
    for key in a[0]:
        assert a[0][key].keys() == b[0][key].keys()
        for name, value in a[0][key].items():
            other = b[0][key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_same_settings_load_silently_and_resume_exactly():
    params = model()
    optimizer = AlphaAdam(params, lr=1e-2)
    train(optimizer, params, steps=2)
    saved = copy.deepcopy(optimizer.state_dict())
    assert all(group["hf_alphaadam.optimizer"] == "AlphaAdam" for group in saved["param_groups"])
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = AlphaAdam(resumed_params, lr=1e-2)
    resumed.load_state_dict(saved)
    train(optimizer, params, seed=5)
    train(resumed, resumed_params, seed=5)
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)
    assert "hf_alphaadam.optimizer" not in resumed.param_groups[0]


@pytest.mark.parametrize("change", [dict(lr=2e-2), dict(alpha_max=1.0), dict(weight_decay=0.1), dict(mask="sync"),
                                    dict(betas=(0.8, 0.99)), dict(alpha="count"), dict(state_bits=8),
                                    dict(state_dtype="bf16"), dict(bf16_update="kahan")])
def test_a_changed_setting_is_an_error_naming_it(change):
    saved = checkpoint()
    optimizer = AlphaAdam(model(), **{"lr": 1e-2, **change})
    before = snapshot(optimizer)
    (key, value), = change.items()
    with pytest.raises(ValueError, match=rf"{key} .*\(saved\) -> .*\(now\).*adopt_changed_settings=True"):
        optimizer.load_state_dict(saved)
    assert_same_snapshot(before, snapshot(optimizer))  # a refused load changes nothing


def test_the_error_names_every_difference():
    saved = checkpoint()
    optimizer = AlphaAdam(model(), lr=1e-2, mask="sync", alpha_max=2.0)
    with pytest.raises(ValueError) as error:
        optimizer.load_state_dict(saved)
    assert "mask 'async' (saved) -> 'sync' (now)" in str(error.value)
    assert "alpha_max None (saved) -> 2.0 (now)" in str(error.value)


@pytest.mark.parametrize("change", [dict(lr=2e-2), dict(alpha_max=1.0), dict(weight_decay=0.1), dict(mask="sync"),
                                    dict(mask="none", alpha="none")])
def test_adopted_settings_take_effect_and_keep_the_moments(change):
    saved = checkpoint()
    params = model()
    optimizer = AlphaAdam(params, **{"lr": 1e-2, **change}, adopt_changed_settings=True)
    optimizer.load_state_dict(saved)
    group = optimizer.param_groups[0]
    for key, value in change.items():
        assert group[key] == value
    for position, p in enumerate(params):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], saved["state"][position][key])
    # the next step is the new optimizer's step from the saved moments
    reference = AlphaAdam([torch.nn.Parameter(p.detach().clone()) for p in params], **{"lr": 1e-2, **change},
                          foreach=False)
    reference.load_state_dict(_with_settings(saved, {"lr": 1e-2, **change}))
    train(optimizer, params, steps=1)
    train(reference, reference.param_groups[0]["params"], steps=1)
    for a, b in zip(params, reference.param_groups[0]["params"]):
        torch.testing.assert_close(a, b)


def _with_settings(state: dict, settings: dict) -> dict:
    state = copy.deepcopy(state)
    for group in state["param_groups"]:
        group.update(settings)
    return state


def test_adopting_state_bits_8_quantizes_the_moments_and_back():
    saved = checkpoint()
    params = model()
    eight = AlphaAdam(params, lr=1e-2, state_bits=8, adopt_changed_settings=True)
    eight.load_state_dict(saved)
    state = eight.state[params[0]]
    assert "exp_avg" not in state and state["exp_avg_codes"].dtype == torch.uint8
    for key in ("exp_avg", "exp_avg_sq"):
        value = _quantized.dequantize_moment(state, key)
        original = saved["state"][0][key]
        assert (value - original).abs().max() <= 0.02 * original.abs().max()  # 8-bit blockwise precision
    assert "exp_avg" in eight.state[params[1]]  # 16 elements: below min_8bit_size, stays 32-bit
    train(eight, params, steps=1)

    back_params = model()
    back = AlphaAdam(back_params, lr=1e-2, adopt_changed_settings=True)
    back.load_state_dict(copy.deepcopy(eight.state_dict()))
    state = back.state[back_params[0]]
    assert "exp_avg_codes" not in state and state["exp_avg"].dtype == torch.float32
    assert state["exp_avg"].shape == (ROWS, 16)
    train(back, back_params, steps=1)


def test_adopting_state_dtype_casts_the_moments():
    saved = checkpoint()
    params = model()
    optimizer = AlphaAdam(params, lr=1e-2, state_dtype="bf16", adopt_changed_settings=True)
    optimizer.load_state_dict(saved)
    assert optimizer.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    assert torch.equal(optimizer.state[params[0]]["exp_avg"], saved["state"][0]["exp_avg"].bfloat16())


def test_adopting_bf16_update_plain_drops_the_kahan_buffer():
    params = [torch.nn.Parameter(p.detach().bfloat16()) for p in model()]
    optimizer = AlphaAdam(params, lr=1e-2, bf16_update="kahan")
    train(optimizer, params)
    saved = copy.deepcopy(optimizer.state_dict())
    assert "compensation" in saved["state"][0]
    plain = AlphaAdam(params, lr=1e-2, adopt_changed_settings=True)
    plain.load_state_dict(saved)
    assert "compensation" not in plain.state[params[0]]
    kahan_again = AlphaAdam(params, lr=1e-2, bf16_update="stochastic", adopt_changed_settings=True)
    kahan_again.load_state_dict(copy.deepcopy(plain.state_dict()))
    train(kahan_again, params, steps=1)
    assert "rounding_key" in kahan_again.state[params[0]]


def test_a_change_of_optimizer_kind_is_refused_even_when_adopting():
    params = [("layers.0.mlp.up_proj.weight", model()[0])]
    adapm = AdaPM(params, lr=1e-2, policy="lowrank", rank=2, log_policy=False)
    train(adapm, [params[0][1]])
    for target in (AlphaAdam([params[0][1]], adopt_changed_settings=True),
                   AdaDiag(params, adopt_changed_settings=True)):
        with pytest.raises(ValueError, match="written by AdaPM.*cannot be adopted"):
            target.load_state_dict(copy.deepcopy(adapm.state_dict()))


@pytest.mark.parametrize("cls, change", [(AdaPM, dict(rank=3)), (AdaPM, dict(second_moment="mini")),
                                         (AdaDiag, dict(two_sided=True))])
def test_layout_options_are_refused_even_when_adopting(cls, change):
    params = [("layers.0.mlp.up_proj.weight", model()[0])]
    extra = dict(policy="lowrank", rank=2, log_policy=False) if cls is AdaPM else {}
    source = cls(params, lr=1e-2, **extra)
    train(source, [params[0][1]])
    target = cls(params, lr=1e-2, **{**extra, **change}, adopt_changed_settings=True)
    (key, _), = change.items()
    with pytest.raises(ValueError, match=rf"{key} .*determine the shapes .*cannot change on resume"):
        target.load_state_dict(copy.deepcopy(source.state_dict()))


@pytest.mark.parametrize("cls", [AdaPM, AdaDiag])
def test_adapm_and_adadiag_adopt_a_new_mask(cls):
    params = [("layers.0.mlp.up_proj.weight", model()[0])]
    extra = dict(policy="lowrank", rank=2, log_policy=False) if cls is AdaPM else {}
    source = cls(params, lr=1e-2, **extra)
    train(source, [params[0][1]])
    saved = copy.deepcopy(source.state_dict())
    with pytest.raises(ValueError, match="mask 'none' \\(saved\\) -> 'sync'"):
        cls(params, lr=1e-2, mask="sync", **extra).load_state_dict(saved)
    target = cls(params, lr=1e-2, mask="sync", **extra, adopt_changed_settings=True)
    target.load_state_dict(saved)
    assert target.param_groups[0]["mask"] == "sync"
    train(target, [params[0][1]], steps=1)


def test_kernel_choice_is_not_a_setting():
    saved = checkpoint(foreach=True)
    optimizer = AlphaAdam(model(), lr=1e-2, foreach=False)
    optimizer.load_state_dict(saved)  # no error
    assert optimizer.param_groups[0]["foreach"] is False  # the current choice, not the saved one


def test_a_scheduled_learning_rate_is_running_state_not_a_setting():
    def run(params, optimizer, scheduler, steps):
        for _ in range(steps):
            train(optimizer, params, steps=1)
            scheduler.step()

    params = model()
    optimizer = AlphaAdam(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    run(params, optimizer, scheduler, 3)
    saved = copy.deepcopy(optimizer.state_dict())
    assert saved["param_groups"][0]["lr"] != 1e-2
    resumed = AlphaAdam(model(), lr=1e-2)
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 1 / (1 + step))
    resumed.load_state_dict(saved)  # same base learning rate: loads, with the scheduled lr
    assert resumed.param_groups[0]["lr"] == saved["param_groups"][0]["lr"]
    other = AlphaAdam(model(), lr=5e-2)
    torch.optim.lr_scheduler.LambdaLR(other, lambda step: 1 / (1 + step))
    with pytest.raises(ValueError, match=r"lr 0.01 \(saved\) -> 0.05 \(now\)"):
        other.load_state_dict(saved)


def test_a_state_dict_without_the_record_loads_as_before():
    saved = checkpoint(mask="sync")
    for group in saved["param_groups"]:
        del group["hf_alphaadam.optimizer"]
    optimizer = AlphaAdam(model(), lr=1e-2)  # mask="async"
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["mask"] == "sync"  # torch's rule for old checkpoints: saved options win


def test_a_refused_state_check_leaves_the_optimizer_as_it_was():
    params = model()
    optimizer = AlphaAdam(params, lr=1e-2)
    train(optimizer, params)
    bad = copy.deepcopy(optimizer.state_dict())
    bad["state"][1]["exp_avg_sq"] = -bad["state"][1]["exp_avg_sq"] - 1  # the last tensor: after the first passed
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match="negative"):
        optimizer.load_state_dict(bad)
    assert_same_snapshot(before, snapshot(optimizer))


def test_adopting_another_setting_keeps_the_scheduled_learning_rate():
    params = model()
    optimizer = AlphaAdam(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    for _ in range(3):
        train(optimizer, params, steps=1)
        scheduler.step()
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = AlphaAdam(model(), lr=1e-2, mask="sync", adopt_changed_settings=True)
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 1 / (1 + step))
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["mask"] == "sync"
    assert resumed.param_groups[0]["lr"] == saved["param_groups"][0]["lr"] == 1e-2 / 4  # running, not the initial
