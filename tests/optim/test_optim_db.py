"""Generic tests over every entry of the optimizer table (``optim_db.py``).

For each optimizer x configuration: every code path against the reference loop on parameters, state and
statistics in each supported dtype, with a changing lr; the state_dict round trip through ``torch.save`` /
``torch.load(weights_only=True)`` and a bit-exact resume; the bad-argument table; the statistics; parameters
without a gradient; refusal of empty, complex and sparse inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from optim_db import (
    OPTIM_DB,
    REFERENCE,
    assert_same_state,
    lr_at,
    named_params,
    random_grads,
    run_steps,
    saved_and_loaded,
    set_grads,
    state_tensors,
    state_tensors_of,
    step_together,
)

DTYPE_IDS = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16"}
PATH_STEPS = 15  # masks flip, low-rank bases refit, AdaDiag (update_freq 3) refreshes 5 times
NONE_EVERY = 3  # each tensor skips every third step: tensors get out of step (partial refreshes, lagging counts)


def _cases(with_paths: bool = False, variants: str | None = None, paths_besides_reference: bool = False):
    """pytest params (entry, dtype[, path][, variant]) over the table. ``variants="paths"``: the entry's base
    configuration on every path, and its ``variants`` on every path but the default one (which is checked with
    the base configuration); ``variants="resume"``: the base configuration and the ``resume_variants`` on every
    path."""
    cases = []
    for entry in OPTIM_DB:
        marks = [] if entry.available() else [pytest.mark.skip(reason=f"needs {', '.join(entry.requires)}")]
        for dtype in entry.dtypes:
            paths = entry.paths_for(dtype) if with_paths else [None]
            if paths_besides_reference:
                paths = [p for p in paths if p is not REFERENCE]
            for path in paths:
                extra = {"paths": () if path is not None and path.name == "default" else entry.variants,
                         "resume": entry.resume_variants, None: ()}[variants]
                for index, variant in enumerate([{}, *extra]):
                    name = "-".join([entry.name, DTYPE_IDS[dtype]] + ([path.name] if path else [])
                                    + ([f"v{index}"] if index else []))
                    args = (entry, dtype) + ((path,) if with_paths else ()) + ((variant,) if variants else ())
                    cases.append(pytest.param(*args, id=name, marks=marks))
    return cases


def _entries():
    return [pytest.param(e, id=e.name, marks=[] if e.available() else [pytest.mark.skip(reason="missing module")])
            for e in OPTIM_DB]


def _tensors(named):
    return [p for _, p in named]


def _tensor_groups(entry, named) -> dict[str, str]:
    """Tensor name -> group name, as ``statistics(per_tensor=True)`` reports them: the parameter names, or
    ``group<g>.<position>`` for an entry built without names."""
    groups = {"decay": [n for n, p in named if p.dim() >= 2], "no_decay": [n for n, p in named if p.dim() < 2]}
    return {(name if entry.is_named else f"{group}.{position}"): group
            for group, names in groups.items() for position, name in enumerate(names)}


# ------------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("entry,dtype,path,variant", _cases(with_paths=True, variants="paths",
                                                             paths_besides_reference=True))
def test_path_matches_reference_on_params_state_and_statistics(entry, dtype, path, variant):
    ref_named, fast_named = named_params(dtype=dtype), named_params(dtype=dtype)
    reference = entry.build(ref_named, REFERENCE, **variant)
    fast = entry.build(fast_named, path, **variant)
    step_together([(reference, _tensors(ref_named)), (fast, _tensors(fast_named))], PATH_STEPS,
                  none_every=NONE_EVERY, schedule=True)
    tolerance = entry.tolerance(path, dtype)
    for (name, a), (_, b) in zip(ref_named, fast_named):
        torch.testing.assert_close(b, a, rtol=tolerance.rtol, atol=tolerance.atol, msg=lambda m: f"{name}: {m}")
    # a Kahan compensation is the rounding residual of its bf16 parameter: where the parameters land one bf16 step
    # apart, so do their compensations, while parameter + compensation agree to fp32 rounding
    assert_same_state(state_tensors(fast), state_tensors(reference), tolerance.state_rtol, tolerance.state_atol,
                      what=f"{path.name} vs reference", per_key={"compensation": (tolerance.rtol, tolerance.atol)})
    for (name, a), (_, b) in zip(ref_named, fast_named):
        if "compensation" in reference.state[a]:
            torch.testing.assert_close(b.float() + fast.state[b]["compensation"].float(),
                                       a.float() + reference.state[a]["compensation"].float(), rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{name} + compensation: {m}")
    ref_stats = reference.statistics(per_tensor=True)["tensors"]
    fast_stats = fast.statistics(per_tensor=True)["tensors"]
    assert fast_stats.keys() == ref_stats.keys()
    for name, values in ref_stats.items():
        assert fast_stats[name] == pytest.approx(values, rel=tolerance.stat_rel), name


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("entry,dtype,path,variant", _cases(with_paths=True, variants="resume"))
def test_state_dict_round_trip_keeps_dtypes_and_resumes_bit_exactly(entry, dtype, path, variant):
    straight_named = named_params(dtype=dtype)
    straight = entry.build(straight_named, path, **variant)
    run_steps(straight, _tensors(straight_named), 6, none_every=4)

    first_named = named_params(dtype=dtype)
    first = entry.build(first_named, path, **variant)
    run_steps(first, _tensors(first_named), 3, none_every=4)
    checkpoint = saved_and_loaded({"optimizer": first.state_dict(), "params": [p.detach() for _, p in first_named]})
    assert_same_state(state_tensors_of(checkpoint["optimizer"]), state_tensors(first), what="after torch.load")

    resumed_named = named_params(dtype=dtype, seed=1)  # other values: the checkpoint must bring them
    with torch.no_grad():
        for (_, param), saved in zip(resumed_named, checkpoint["params"]):
            param.copy_(saved)
    # the lr of the last saved step: a resume with other settings is refused
    resumed = entry.build(resumed_named, path, **{**variant, "lr": lr_at(2)})
    resumed.load_state_dict(checkpoint["optimizer"])
    assert_same_state(state_tensors(resumed), state_tensors(first), what="after load_state_dict")
    run_steps(resumed, _tensors(resumed_named), 3, start=3, none_every=4)
    for (name, a), (_, b) in zip(straight_named, resumed_named):
        assert torch.equal(a, b), name
    assert_same_state(state_tensors(resumed), state_tensors(straight), what="resumed vs straight")
    assert [g["name"] for g in resumed.param_groups] == ["decay", "no_decay"]


# ------------------------------------------------------------------------------------------------ bad input


def _bad_cases():
    return [pytest.param(entry, bad, id=f"{entry.name}-{'-'.join(f'{k}={v!r}' for k, v in bad.kwargs.items())}",
                         marks=[] if entry.available() else [pytest.mark.skip(reason="missing module")])
            for entry in OPTIM_DB for bad in entry.bad_args]


@pytest.mark.parametrize("entry,bad", _bad_cases())
def test_bad_argument_raises_naming_the_key(entry, bad):
    with pytest.raises(bad.error) as info:
        entry.build(named_params(dtype=torch.float32), **bad.kwargs)
    assert bad.fragment in str(info.value)
    if bad.group:  # the same value as a param-group override
        named = named_params(dtype=torch.float32)
        groups = [{"params": named[:3]}, {"params": named[3:], **bad.kwargs}]
        with pytest.raises(bad.error) as info:
            entry.cls(groups, **entry.kwargs)
        assert bad.fragment in str(info.value)


# ------------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("entry,dtype", _cases())
def test_statistics_per_tensor_and_group(entry, dtype):
    named = named_params(dtype=dtype)
    optimizer = entry.build(named)
    assert optimizer.statistics() == {"groups": {}, "tensors": {}}
    run_steps(optimizer, _tensors(named), 3)
    stats = optimizer.statistics(per_tensor=True)
    groups_of = _tensor_groups(entry, named)
    assert sorted(stats["tensors"]) == sorted(groups_of)
    for name, values in stats["tensors"].items():
        assert math.isfinite(values["alpha"]) and math.isfinite(values["mask_ratio"]), name
        assert 0.0 <= values["mask_ratio"] <= 1.0, name
        assert values["alpha"] > 0.0, name
        if entry.mask_free:
            assert values == {"alpha": 1.0, "mask_ratio": 1.0}, name
    assert set(stats["groups"]) == {"decay", "no_decay"}
    for group_name, group in stats["groups"].items():
        members = [v for n, v in stats["tensors"].items() if groups_of[n] == group_name]
        assert group["num_tensors"] == len(members)
        assert group["alpha_mean"] == pytest.approx(sum(v["alpha"] for v in members) / len(members))
        assert group["alpha_min"] == min(v["alpha"] for v in members)
        assert group["alpha_max"] == max(v["alpha"] for v in members)
        assert group["mask_ratio"] == pytest.approx(sum(v["mask_ratio"] for v in members) / len(members))
        assert group["nonfinite_tensors"] == 0
    if not entry.mask_free:  # a real mask: some tensor is masked somewhere after three steps
        assert min(v["mask_ratio"] for v in stats["tensors"].values()) < 1.0


# ------------------------------------------------------------------------------------------------ grad=None


@pytest.mark.parametrize("entry,dtype,path", _cases(with_paths=True))
def test_parameters_without_grad_are_untouched_and_get_no_state(entry, dtype, path):
    named = named_params(dtype=dtype)
    optimizer = entry.build(named, path)
    params = _tensors(named)
    idle = {1, len(params) - 1}  # a matrix and a vector that never get a gradient
    before = [p.detach().clone() for p in params]
    for step in range(3):
        set_grads(params, [None if i in idle else g for i, g in enumerate(random_grads(params, step))])
        optimizer.step()
    for index, (param, start) in enumerate(zip(params, before)):
        if index in idle:
            assert torch.equal(param, start), named[index][0]
            assert not optimizer.state[param], f"{named[index][0]} got state without a gradient"
        else:
            assert not torch.equal(param, start), named[index][0]


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("entry", _entries())
def test_parameters_without_names_are_refused_only_where_names_are_needed(entry):
    unnamed = [p for _, p in named_params(dtype=torch.float32)]
    if entry.needs_names:
        with pytest.raises(ValueError, match="needs parameter names"):
            entry.cls(unnamed, **entry.kwargs)
    else:
        optimizer = entry.cls(unnamed, **entry.kwargs)
        run_steps(optimizer, unnamed, 1)
        assert len(optimizer.statistics(per_tensor=True)["tensors"]) == len(unnamed)


@pytest.mark.parametrize("entry", _entries())
def test_empty_complex_and_sparse_inputs_are_refused(entry):
    with pytest.raises(ValueError, match="empty parameter list"):
        entry.cls([], **entry.kwargs)
    with pytest.raises(ValueError, match="empty parameter list"):
        entry.cls(iter(()), **entry.kwargs)
    complex_param = torch.zeros(3, 4, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(TypeError, match="complex parameters"):
        entry.cls([("model.layers.0.mlp.up_proj.weight", complex_param)], **entry.kwargs)

    embedding = torch.nn.Embedding(10, 4, sparse=True)
    optimizer = entry.cls([("model.embed_tokens.weight", embedding.weight)], **entry.kwargs)
    embedding(torch.tensor([1, 2])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(ValueError, match="sparse gradients"):
        optimizer.step()
    assert torch.equal(embedding.weight, before)
    assert not optimizer.state[embedding.weight]
