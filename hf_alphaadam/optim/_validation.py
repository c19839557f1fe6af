"""Checks of optimizer state against its parameters, before anything is written.

Two moments need them:

- **every step**, before a kernel writes memory: the C kernel and bitsandbytes trust the element counts they
  are given, so a moment smaller than its parameter corrupts the heap and truncated 8-bit codes are read out of
  bounds. :func:`check_step_inputs` and :func:`check_quantized_moments` compare shapes, dtypes and devices (plain
  attribute reads, no tensor math) and raise a ``ValueError`` naming the parameter, the saved shape and the
  expected one.
- **every load** (:func:`check_saved_state`): each incoming state tensor has the expected key, shape and dtype,
  its values are finite, second moments are non-negative, and ``step`` is a finite number >= 0. This one reads
  the values (once per load).

Non-contiguous tensors are allowed: the native and compiled paths work on contiguous copies and write them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ._sharding import local

# state keys whose values cannot be negative (second moments, an EMA of g^2 and its factors, and the 8-bit
# blocks' absolute maxima): a negative value is damage
NON_NEGATIVE_KEYS = ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_absmax", "exp_avg_sq_absmax")


def _shape(tensor: Any) -> tuple[int, ...] | str:
    return tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__


def check_step_inputs(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                      state_steps: list[Tensor], name_of: Callable[[int], str] | None = None) -> None:
    """Before an AlphaAdam kernel runs: the lists have one entry per parameter, and each gradient and moment has
    its parameter's shape and device and a floating dtype. ``name_of(i)`` names tensor ``i`` in the error."""
    count = len(params)
    for label, values in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                          ("state_steps", state_steps)):
        if len(values) != count:
            raise ValueError(f"AlphaAdam step: {label} has {len(values)} entries but params has {count}: "
                             "pass one entry per parameter")
    for index, param in enumerate(params):
        shape, device = param.shape, param.device  # read once: each read builds a new object
        for key, tensor in (("grad", grads[index]), ("exp_avg", exp_avgs[index]), ("exp_avg_sq", exp_avg_sqs[index])):
            if not (isinstance(tensor, Tensor) and tensor.shape == shape and tensor.device == device
                    and tensor.is_floating_point()):
                name = name_of(index) if name_of is not None else f"tensor {index} of the step"
                raise ValueError(describe_mismatch(name, key, tensor, tuple(shape), device))


def describe_mismatch(name: str, key: str, tensor: Any, expected_shape: tuple[int, ...], device: torch.device,
                      dtype: torch.dtype | None = None) -> str:
    """The error message for a state tensor that does not fit its parameter."""
    where = f"state {key!r} of parameter {name}" if key != "grad" else f"the gradient of parameter {name}"
    if not isinstance(tensor, Tensor):
        return f"{where} is {_shape(tensor)}, expected a tensor of shape {expected_shape}"
    if tuple(tensor.shape) != tuple(expected_shape):
        return (f"{where} has shape {tuple(tensor.shape)}, expected {tuple(expected_shape)}: the state was saved "
                "for a different model (or is damaged); load the checkpoint into the model it was saved with")
    if tensor.device != device:
        return f"{where} is on {tensor.device}, expected {device} (the parameter's device)"
    wanted = str(dtype).removeprefix("torch.") if dtype is not None else "a floating-point dtype"
    return f"{where} has dtype {str(tensor.dtype).removeprefix('torch.')}, expected {wanted}"


def check_quantized_moments(name: str, param: Tensor, state: dict[str, Any], blocks: int,
                            keys: tuple[str, ...] = ("exp_avg", "exp_avg_sq")) -> None:
    """Before bitsandbytes reads 8-bit moments ``keys``: codes are ``uint8`` of the parameter's shape, absmax
    ``float32`` of ``[blocks]``, both contiguous on the parameter's device."""
    for key in keys:
        for suffix, shape, dtype in (("codes", tuple(param.shape), torch.uint8), ("absmax", (blocks,), torch.float32)):
            tensor = state.get(f"{key}_{suffix}")
            if (not isinstance(tensor, Tensor) or tensor.shape != shape or tensor.dtype != dtype
                    or tensor.device != param.device):
                raise ValueError(describe_mismatch(name, f"{key}_{suffix}", tensor, shape, param.device, dtype))
            if not tensor.is_contiguous():
                raise ValueError(f"state {key}_{suffix!r} of parameter {name} is not contiguous (bitsandbytes "
                                 "reads it as one block of memory); store it with .contiguous()")


@dataclass(frozen=True)
class Expected:
    """One state tensor the optimizer expects: its shape, and its dtype (``None``: any floating dtype)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None
    required: bool = True


def check_step_count(name: str, value: Any) -> None:
    """``step`` is a finite number >= 0 (a Python number or a one-element tensor)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"state 'step' of parameter {name} has shape {tuple(value.shape)}, expected one number")
        number = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"state 'step' of parameter {name} is {value!r}, expected a number >= 0")
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"state 'step' of parameter {name} is {number}, expected a finite number >= 0")


def check_saved_state(name: str, saved: dict[str, Any], expected: dict[str, Expected], optimizer: str,
                      how: str = "") -> None:
    """A loaded state entry of one parameter against what the optimizer keeps for it (see the module docstring).

    ``how`` says in words which options determine ``expected`` (for the error on unexpected or missing keys).
    """
    if not isinstance(saved, dict):
        raise ValueError(f"the saved state of parameter {name} is a {type(saved).__name__}, expected a dict")
    allowed = set(expected) | {"step"}
    unexpected = sorted(set(saved) - allowed)
    missing = sorted(key for key, spec in expected.items() if spec.required and key not in saved)
    if unexpected or missing or "step" not in saved:
        problems = []
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if missing or "step" not in saved:
            problems.append(f"missing keys {missing + ([] if 'step' in saved else ['step'])}")
        raise ValueError(f"the saved state of parameter {name} (keys {sorted(saved)}) is not the state {optimizer} "
                         f"keeps{how} ({'; '.join(problems)}): it was written by another optimizer or other "
                         "options")
    check_step_count(name, saved["step"])
    for key, spec in expected.items():
        if key not in saved:
            continue
        tensor = saved[key]
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != spec.shape:
            raise ValueError(describe_mismatch(name, key, tensor, spec.shape, getattr(tensor, "device", None)))
        if (spec.dtype is not None and tensor.dtype != spec.dtype) or (spec.dtype is None
                                                                      and not tensor.is_floating_point()):
            raise ValueError(describe_mismatch(name, key, tensor, spec.shape, tensor.device, spec.dtype))
        values = local(tensor)
        if values.is_floating_point() and values.numel():
            if not bool(torch.isfinite(values).all()):
                raise ValueError(f"state {key!r} of parameter {name} holds NaN or Inf values: the saved run had "
                                 "diverged (or the file is damaged); resume from an earlier checkpoint")
            if key in NON_NEGATIVE_KEYS and bool((values < 0).any()):
                raise ValueError(f"state {key!r} of parameter {name} holds negative values ({float(values.min())}),"
                                 " but it is a second moment or an absolute maximum (>= 0): the state is damaged")
