"""The state each optimizer keeps per parameter, as a load checks it, and how a resume converts it.

:func:`alphaadam_expected_state`, :func:`adapm_expected_state` and :func:`adadiag_expected_state` list the state
tensors (shape and dtype, :class:`~._validation.Expected`) that a parameter's state holds under a param group's
options; ``_resume.prepare_load`` checks every loaded entry against them. :func:`adapt_alphaadam_state` is what
adopting a new ``state_bits`` / ``state_dtype`` / ``bf16_update`` on resume does to AlphaAdam's moments.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _quantized
from ._policy import build_plan
from ._state import resolve_state_dtype, state_dtype_for
from ._validation import Expected, check_quantized_moments

# the keys bf16_update may add to any parameter's state (``_quantized.py``)
_ROUNDING_KEYS = ("compensation", "rounding_key")


def _rounding_state(shape: tuple[int, ...]) -> dict[str, Expected]:
    return {"compensation": Expected(shape, required=False),
            "rounding_key": Expected((), torch.int64, required=False)}


def alphaadam_expected_state(param: Tensor, saved: dict[str, Any]) -> tuple[dict[str, Expected], str]:
    """AlphaAdam: ``exp_avg`` / ``exp_avg_sq`` like the parameter, or (8-bit) their uint8 codes like the parameter
    and fp32 absmax per 256-element block; ``compensation`` / ``rounding_key`` where ``bf16_update`` made them."""
    shape = tuple(param.shape)
    if _quantized.is_quantized(saved):
        blocks = (_quantized.num_blocks(param.numel()),)
        expected = {f"{key}_{suffix}": Expected(shape if suffix == "codes" else blocks,
                                                torch.uint8 if suffix == "codes" else torch.float32)
                    for key in ("exp_avg", "exp_avg_sq") for suffix in ("codes", "absmax")}
    else:
        expected = {"exp_avg": Expected(shape), "exp_avg_sq": Expected(shape)}
    return {**expected, **_rounding_state(shape)}, " (exp_avg and exp_avg_sq, or their 8-bit codes and absmax)"


def adapt_alphaadam_state(saved: dict[str, Any], param: Tensor, saved_options: dict[str, Any],
                          options: dict[str, Any], name: str | None) -> dict[str, Any]:
    """AlphaAdam's state entry under the new ``options``: moments quantized or dequantized where ``state_bits``
    (or ``min_8bit_size`` / ``quantize_embeddings``) changed, cast where ``state_dtype`` changed, and the Kahan
    buffer dropped where ``bf16_update`` is no longer ``"kahan"``. Unchanged settings leave the entry as saved."""
    keys = ("state_bits", "min_8bit_size", "quantize_embeddings", "state_dtype", "bf16_update")
    if all(saved_options.get(key) == options.get(key) for key in keys):
        return saved
    entry = dict(saved)
    dtype = state_dtype_for(param, resolve_state_dtype(options["state_dtype"]))
    quantize = options["state_bits"] == 8 and _quantized.quantize_tensor(
        param, name, options["min_8bit_size"], options["quantize_embeddings"])
    if _quantized.is_quantized(entry) and not quantize:
        check_quantized_moments(name or "of the checkpoint", param, entry, _quantized.num_blocks(param.numel()))
        for key in ("exp_avg", "exp_avg_sq"):
            entry[key] = _quantized.dequantize_moment(entry, key).view(param.shape).to(dtype)
            del entry[f"{key}_codes"], entry[f"{key}_absmax"]
    elif quantize and not _quantized.is_quantized(entry):
        for key in ("exp_avg", "exp_avg_sq"):
            entry[f"{key}_codes"], entry[f"{key}_absmax"] = _quantized.quantized(entry.pop(key), key == "exp_avg")
    elif not quantize:
        for key in ("exp_avg", "exp_avg_sq"):
            entry[key] = entry[key].to(dtype)
    if options["bf16_update"] != "kahan":
        entry.pop("compensation", None)
    return entry


def adapm_expected_state(plan_name: str | None, plan_shape: tuple[int, ...], options: dict[str, Any], param: Tensor,
                         sharded: bool) -> tuple[dict[str, Expected], str]:
    """AdaPM: the tensors of the parameter's plan under ``options`` (``TensorPlan.state_shapes``); a sharded
    element-wise tensor's state has the shard's shape."""
    plan = build_plan(plan_name, plan_shape, options)
    shapes = plan.state_shapes()
    if sharded and plan.kind != "structured":
        shapes = {key: tuple(param.shape) for key in shapes}
    how = f" (policy {plan.describe_momentum()}, second moment {plan.describe_second_moment()})"
    return {key: Expected(shape) for key, shape in shapes.items()}, how


def adadiag_expected_state(left: bool, right: bool, factored: bool, param: Tensor) -> tuple[dict[str, Expected], str]:
    """AdaDiag: ``exp_avg`` like the parameter, ``exp_avg_sq`` like it (or its row / column factors for a
    rotated tensor under ``second_moment="adafactor"``), and the ``[m, m]`` / ``[n, n]`` bases of the rotated
    sides."""
    shape = tuple(param.shape)
    expected = {"exp_avg": Expected(shape)}
    if (left or right) and factored:
        expected["exp_avg_sq_row"] = Expected((shape[0],))
        expected["exp_avg_sq_col"] = Expected((shape[1],))
    else:
        expected["exp_avg_sq"] = Expected(shape)
    if left:
        expected["basis_left"] = Expected((shape[0], shape[0]))
    if right:
        expected["basis_right"] = Expected((shape[1], shape[1]))
    sides = "both sides" if left and right else "the left side" if left else "the right side" if right else "none"
    return expected, f" (rotated: {sides}; second moment {'factored' if factored and (left or right) else 'dense'})"
