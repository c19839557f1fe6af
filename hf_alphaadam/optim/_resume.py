"""Loading a state dict: who wrote it, which settings differ, and what adopting a new setting means.

``torch.optim.Optimizer.load_state_dict`` replaces every option of a param group with the saved one, so a resume
with other settings (another ``mask``, ``alpha_max=1``, 8-bit moments) silently continues with the old ones. The
optimizers of this package instead record, in each saved param group, who wrote it (:data:`RECORD_KEY`: the class
name) and on load compare the saved options with the current ones. :func:`prepare_load` validates the whole
incoming state and returns the state dict torch should load, before anything is changed: a refused load leaves
the optimizer exactly as it was.

What a difference means (each row tested in ``tests/hardening/test_resume_settings.py``):

=========================================================  =====================  ================================
setting changed on resume                                  by default             with ``adopt_changed_settings``
=========================================================  =====================  ================================
optimizer class (AlphaAdam / AdaPM / AdaDiag)              ValueError             ValueError (another state layout)
``lr``, ``weight_decay``, ``alpha_max``, ``betas``,        ValueError naming      the new value; moments kept
``eps``, ``alpha``, ``first_step``, ``maximize``, ...      each difference
``mask``                                                   ValueError             the new mask; moments kept
``state_bits``, ``min_8bit_size``, ``quantize_embeddings`` ValueError             moments converted (8 <-> 32 bit)
``state_dtype`` (AlphaAdam)                                ValueError             moments cast to the new dtype
``bf16_update``                                            ValueError             new mode (a Kahan buffer starts
                                                                                  at 0 / is dropped)
layout options (:attr:`LAYOUT_OPTIONS`, e.g. AdaPM's       ValueError             ValueError (the state's shapes
``rank``, ``policy``; AdaDiag's ``two_sided``, ``side``)                          depend on them)
``foreach``, ``fused`` (which kernel runs)                 the new value          the new value
=========================================================  =====================  ================================

The learning rate a scheduler changes every step is running state, not a setting: where the saved group carries
``initial_lr`` (a scheduler was built), that base rate is compared with the current ``initial_lr`` (or ``lr``),
otherwise ``lr`` with ``lr``; without a difference the saved, scheduled ``lr`` is loaded as torch does. A state dict without the record (written before it existed, or by
plain torch) loads as before: saved options win, and only the state tensors are checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ._validation import check_saved_state

# the entry of each saved param group that names the optimizer class that wrote it
RECORD_KEY = "hf_alphaadam.optimizer"
# options that choose a kernel, not the math: a resume always takes the current value
EXECUTION_OPTIONS = ("foreach", "fused")
_LR_KEYS = ("lr", "initial_lr")


def record_writer(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Add :data:`RECORD_KEY` to every saved param group of ``state_dict`` (the groups are fresh dicts)."""
    for group in state_dict["param_groups"]:
        group[RECORD_KEY] = type(optimizer).__name__
    return state_dict


def _comparable(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    return value


def _lr_difference(saved: dict[str, Any], group: dict[str, Any]) -> tuple[Any, Any] | None:
    """(saved, current) base learning rates if they differ (see the module docstring), else None."""
    if "initial_lr" in saved:
        old = saved["initial_lr"]
        new = group["initial_lr"] if "initial_lr" in group else group["lr"]
    else:
        old, new = saved.get("lr"), group["lr"]
    return None if _comparable(old) == _comparable(new) else (old, new)


def setting_differences(optimizer: Any, saved: dict[str, Any], group: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{option: (saved value, current value)}`` for every option of ``group`` that differs from ``saved``."""
    differences = {}
    lr = _lr_difference(saved, group)
    if lr is not None:
        differences["lr"] = lr
    for key in optimizer.defaults:
        if key in _LR_KEYS or key in EXECUTION_OPTIONS:
            continue
        old = saved.get(key, optimizer.defaults[key])
        if _comparable(old) != _comparable(group.get(key)):
            differences[key] = (old, group.get(key))
    return differences


def _loaded_group(saved: dict[str, Any], group: dict[str, Any], adopted: Iterable[str] = ()) -> dict[str, Any]:
    """The group dict torch loads: the saved one (with its running, scheduled ``lr``), with the current execution
    options and the current value of each ``adopted`` setting."""
    loaded = {key: value for key, value in saved.items() if key != RECORD_KEY}
    for key in EXECUTION_OPTIONS:
        if key in group:
            loaded[key] = group[key]
    for key in adopted:
        loaded[key] = group[key]
        if key == "lr" and ("initial_lr" in loaded or "initial_lr" in group):
            loaded["initial_lr"] = group.get("initial_lr", group["lr"])
    return loaded


def _group_label(optimizer: Any, group: dict[str, Any], index: int) -> str:
    return f"param group {optimizer.group_name(group, index)!r}"


def prepare_load(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Validate ``state_dict`` for ``optimizer`` and return the state dict torch's ``load_state_dict`` should load.

    Raises ValueError, before anything changes, when the structure does not match, the writer is another
    optimizer class, a setting differs (unless ``optimizer.adopt_changed_settings``; layout options always), a
    saved option is out of range, or a state tensor does not fit (see ``_validation.check_saved_state``).
    """
    kind = type(optimizer).__name__
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(f"{kind}.load_state_dict expects a dict with 'state' and 'param_groups' (from "
                         f"optimizer.state_dict()), got {type(state_dict).__name__}"
                         + (f" with keys {sorted(state_dict)}" if isinstance(state_dict, dict) else ""))
    saved_groups, groups = state_dict["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise ValueError(f"the state dict has {len(saved_groups)} param groups but this {kind} has {len(groups)}: "
                         "it was saved for another model or another grouping of its parameters")
    for index, (saved, group) in enumerate(zip(saved_groups, groups)):
        if len(saved.get("params", ())) != len(group["params"]):
            raise ValueError(f"{_group_label(optimizer, group, index)}: the state dict has "
                             f"{len(saved.get('params', ()))} parameters, this optimizer {len(group['params'])}")
    writers = {saved.get(RECORD_KEY) for saved in saved_groups} - {None}
    if writers and writers != {kind}:
        raise ValueError(f"the state dict was written by {', '.join(sorted(writers))}, but this optimizer is a {kind}:"
                         " a change of optimizer kind cannot be adopted on resume (each keeps a different state). "
                         "Resume with the optimizer that wrote the checkpoint, or start this one from fresh state")
    recorded = bool(writers) and all(RECORD_KEY in saved for saved in saved_groups)

    differences: list[str] = []
    refused: list[str] = []
    loaded_groups = []
    for index, (saved, group) in enumerate(zip(saved_groups, groups)):
        label = _group_label(optimizer, group, index)
        try:
            optimizer._validate_group({**optimizer.defaults, **_loaded_group(saved, group)})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{label} of the state dict has an option out of range: {error}") from None
        changed = setting_differences(optimizer, saved, group) if recorded else {}
        for key, (old, new) in changed.items():
            text = f"{label}: {key} {old!r} (saved) -> {new!r} (now)"
            (refused if key in optimizer.LAYOUT_OPTIONS else differences).append(text)
        loaded_groups.append(_loaded_group(saved, group, adopted=changed))
    if refused:
        raise ValueError(f"resuming with other settings than the checkpoint's: {'; '.join(refused + differences)}. "
                         f"{', '.join(sorted(optimizer.LAYOUT_OPTIONS))} determine the shapes of {kind}'s state and "
                         "cannot change on resume (not even with adopt_changed_settings=True)")
    if differences and not optimizer.adopt_changed_settings:
        raise ValueError(f"resuming with other settings than the checkpoint's: {'; '.join(differences)}. Resume "
                         "with the saved settings, or pass adopt_changed_settings=True (optim_args "
                         "'adopt_changed_settings=true' in the Trainer) to continue with the new ones (lr, "
                         "weight decay and alpha_max simply change, a new mask keeps the moments, a new state_bits "
                         "converts them; see the README's 'Checkpoints' section)")

    saved_state = state_dict["state"]
    loaded_state = dict(saved_state)
    for index, (saved, group, loaded) in enumerate(zip(saved_groups, groups, loaded_groups)):
        options = {**optimizer.defaults, **{k: v for k, v in saved.items() if k != RECORD_KEY}}
        for position, (param_id, param) in enumerate(zip(saved["params"], group["params"])):
            if param_id not in saved_state:
                continue
            name = optimizer.tensor_name(group, index, position)
            expected, how = optimizer._expected_state(options, index, position, param, saved_state[param_id])
            check_saved_state(name, saved_state[param_id], expected, kind, how)
            loaded_state[param_id] = optimizer._adapt_loaded_state(saved_state[param_id], param, options,
                                                                   {**optimizer.defaults, **loaded}, index, position)
    return {**state_dict, "state": loaded_state, "param_groups": loaded_groups}
