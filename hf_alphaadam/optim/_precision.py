"""State precision around any optimizer's math: 8-bit moments and bf16 / fp16 parameter updates.

The shell (``_base.py``) runs every optimizer's math on fp32 values; this module is where that is arranged, once
for AlphaAdam, AdaPM and AdaDiag (the number formats themselves are in ``_quantized.py``):

- ``state_bits=8``: the full-size moments (``exp_avg`` / ``exp_avg_sq`` where the optimizer keeps them shaped like
  the parameter) of each tensor whose plan says so are stored as 8-bit codes. A step dequantizes one such tensor's
  moments into an fp32 view of its state, runs the math on that tensor alone, and requantizes them, so the
  transient memory is one tensor's fp32 moments. Factored or compact moments, AdaPM's low-rank factors, partial-row
  moments and AdaDiag's bases are small or must stay exact, and stay in 32 bits.
- ``bf16_update="kahan"`` / ``"stochastic"``: the math updates an fp32 master copy of a bf16 / fp16 parameter,
  written back with Kahan compensation or stochastic rounding.

Sharded tensors (FSDP2 DTensors, ZeRO flat partitions) keep 32-bit moments: ``state_bits=8`` is refused there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from . import _quantized
from ._plans import Slot, TensorPlan
from ._sharding import local
from ._state import resolve_state_dtype, state_dtype_for
from ._validation import Expected, check_quantized_moments, describe_mismatch

if TYPE_CHECKING:
    from ._base import MaskedAdamBase

_ROUNDING_KEYS = ("compensation", "rounding_key")
# the options that decide which tensors keep 8-bit moments (part of every plan)
PLAN_OPTIONS = ("state_bits", "min_8bit_size", "quantize_embeddings")


def check_plan(group: dict[str, Any], plan: TensorPlan) -> None:
    """Refuse ``state_bits=8`` for a sharded tensor (its blockwise codes would follow the local shard)."""
    if group.get("state_bits", 32) == 8 and plan.sharded:
        raise NotImplementedError(
            "state_bits=8 is not supported for DTensor (FSDP2) parameters or flat ZeRO partitions "
            "('whole_numel' groups): bitsandbytes' blockwise quantization works on plain local tensors and "
            "the sharded checkpoint formats expect moments shaped like the parameter. Use state_bits=32, or "
            "state_dtype='bf16' to halve the moments' memory")


def full_size_moments(state: dict[str, Any], param: Tensor) -> tuple[str, ...]:
    """The moments of a new state that 8 bits may hold: the fp32 ``exp_avg`` / ``exp_avg_sq`` shaped like the
    parameter."""
    return tuple(key for key in _quantized.MOMENT_KEYS
                 if isinstance(state.get(key), Tensor) and state[key].shape == param.shape)


def quantize_new_state(state: dict[str, Any], param: Tensor) -> None:
    """Replace a new (zero) state's full-size moments by their 8-bit form."""
    keys = full_size_moments(state, param)
    for key in keys:
        del state[key]
    _quantized.init_quantized_state(state, param, keys)


def is_quantized(state: dict[str, Any]) -> bool:
    return _quantized.is_quantized(state)


def check_quantized_state(name: str, param: Tensor, state: dict[str, Any]) -> None:
    """Before bitsandbytes reads a tensor's codes: their shapes, dtypes, devices and layout."""
    check_quantized_moments(name, param, state, _quantized.num_blocks(param.numel()),
                            tuple(_quantized.quantized_keys(state)))


def prepare_rounding_state(group: dict[str, Any], group_index: int, plan: TensorPlan, param: Tensor,
                           state: dict[str, Any]) -> None:
    """The Kahan buffer / stochastic-rounding key of a bf16 / fp16 parameter, created on first use, checked after."""
    mode = group.get("bf16_update", "plain")
    if mode == "plain" or not _quantized.is_low_precision(param):
        return
    if mode == "kahan" and "compensation" not in state:
        state["compensation"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    compensation = state.get("compensation")
    if compensation is not None and (compensation.shape != param.shape or compensation.dtype != param.dtype
                                     or compensation.device != param.device):
        raise ValueError(describe_mismatch(plan.name, "compensation", compensation, tuple(param.shape),
                                           param.device, param.dtype))
    if mode == "stochastic":
        key = state.get("rounding_key")
        if key is None:
            state["rounding_key"] = _quantized.rounding_key(group_index, plan.position)
        elif key.device.type != "cpu":  # load_state_dict moves it to the parameter's device
            state["rounding_key"] = key.cpu()


def calls(slots: list[Slot]) -> list[list[Slot]]:
    """Tensors with fp32 (or bf16) moments step together; tensors with 8-bit moments one at a time."""
    dense = [slot for slot in slots if not _quantized.is_quantized(slot.state)]
    return ([dense] if dense else []) + [[slot] for slot in slots if _quantized.is_quantized(slot.state)]


@contextlib.contextmanager
def fp32_view(optimizer: MaskedAdamBase, group: dict[str, Any], call: list[Slot]) -> Iterator[list[Slot]]:
    """The slots the math runs on: 8-bit moments dequantized into a view of the state, bf16 / fp16 parameters
    replaced by fp32 masters (``bf16_update`` other than ``"plain"``); written back when the math is done."""
    mode = group.get("bf16_update", "plain")
    if mode != "plain":
        _quantized.note_unaffected_params(optimizer, group, [slot.param for slot in call])
    view = []
    for slot in call:
        state = slot.state
        keys = _quantized.quantized_keys(state)
        if keys:
            state = dict(state)
            for key in keys:
                state[key] = _quantized.dequantize_moment(slot.state, key)
        param, grad = slot.param, slot.grad
        if mode != "plain" and _quantized.is_low_precision(param):
            compensation = slot.state.get("compensation") if mode == "kahan" else None
            param = _quantized.master_copy(local(param), None if compensation is None else local(compensation))
            if grad.dtype == torch.float16:  # the fp32 paths take fp32 masters with fp32 (or bf16) gradients
                grad = grad.float()
        view.append(Slot(slot.plan, param, grad, state))
    yield view
    for slot, used in zip(call, view):
        if used.param is not slot.param:
            state = slot.state
            compensation = state.get("compensation") if mode == "kahan" else None
            generator = None
            if mode == "stochastic":
                generator = _rounding_generator(optimizer, used.param.device)
                generator.manual_seed(_quantized.rounding_seed(state["rounding_key"], _get_value(state["step"])))
            _quantized.write_back_(local(slot.param), used.param, mode,
                                   None if compensation is None else local(compensation), generator)
        if used.state is not slot.state:
            for key in _quantized.quantized_keys(slot.state):
                _quantized.quantize_moment_(slot.state, key, used.state[key])


def _rounding_generator(optimizer: MaskedAdamBase, device: torch.device) -> torch.Generator:
    """One generator per device, reseeded for every tensor and step (its state is never saved)."""
    generators = optimizer.__dict__.setdefault("_generators", {})
    if device not in generators:
        generators[device] = torch.Generator(device=device)
    return generators[device]


# ------------------------------------------------------------------------------------------------------ loading


def expected_with_precision(expected: dict[str, Expected], param: Tensor, saved: dict[str, Any]
                            ) -> dict[str, Expected]:
    """What a load checks, given the optimizer's fp32 layout ``expected``: saved 8-bit moments as codes shaped
    like the parameter plus an fp32 absmax per block, and the keys ``bf16_update`` may add."""
    shape = tuple(param.shape)
    result = dict(expected)
    for key in _quantized.quantized_keys(saved):
        result.pop(key, None)
        result[f"{key}_codes"] = Expected(shape, torch.uint8)
        result[f"{key}_absmax"] = Expected((_quantized.num_blocks(param.numel()),), torch.float32)
    result["compensation"] = Expected(shape, required=False)
    result["rounding_key"] = Expected((), torch.int64, required=False)
    return result


def adapt_loaded_state(saved: dict[str, Any], param: Tensor, saved_options: dict[str, Any],
                       options: dict[str, Any], name: str | None) -> dict[str, Any]:
    """A state entry under new ``options``: full-size moments quantized or dequantized where ``state_bits`` (or
    ``min_8bit_size`` / ``quantize_embeddings``) changed, cast where ``state_dtype`` changed, and the Kahan buffer
    dropped where ``bf16_update`` is no longer ``"kahan"``. Unchanged settings leave the entry as saved."""
    keys = ("state_bits", "min_8bit_size", "quantize_embeddings", "state_dtype", "bf16_update")
    if all(saved_options.get(key) == options.get(key) for key in keys):
        return saved
    entry = dict(saved)
    dtype = state_dtype_for(param, resolve_state_dtype(options.get("state_dtype")))
    quantize = options.get("state_bits", 32) == 8 and _quantized.quantize_tensor(
        param.numel(), name, options["min_8bit_size"], options["quantize_embeddings"])
    quantized = _quantized.quantized_keys(entry)
    if quantized and not quantize:
        check_quantized_moments(name or "of the checkpoint", param, entry, _quantized.num_blocks(param.numel()),
                                tuple(quantized))
        for key in quantized:
            entry[key] = _quantized.dequantize_moment(entry, key).view(param.shape).to(dtype)
            del entry[f"{key}_codes"], entry[f"{key}_absmax"]
    elif quantize and not quantized:
        for key in full_size_moments(entry, param):
            entry[f"{key}_codes"], entry[f"{key}_absmax"] = _quantized.quantized(entry.pop(key), key == "exp_avg")
    elif not quantize:
        for key in full_size_moments(entry, param):
            entry[key] = entry[key].to(dtype)
    if options.get("bf16_update", "plain") != "kahan":
        entry.pop("compensation", None)
    return entry
