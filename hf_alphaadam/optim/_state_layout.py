"""AdaPM's and AdaDiag's state as a load checks it.

:func:`adapm_expected_state` and :func:`adadiag_expected_state` list the fp32 state tensors (shape and dtype,
:class:`~._validation.Expected`) that a parameter's state holds under a param group's options (AlphaAdam's two
moments are listed in its class); ``_precision.expected_with_precision`` adds the 8-bit and bf16-update keys, and
``_resume.prepare_load`` checks every loaded entry against the result.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._policy import build_plan
from ._validation import Expected

def adapm_expected_state(plan_name: str | None, plan_shape: tuple[int, ...], options: dict[str, Any], param: Tensor,
                         sharded: bool) -> tuple[dict[str, Expected], str]:
    """AdaPM: the tensors of the parameter's plan under ``options`` (``MomentumPlan.state_shapes``); a sharded
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
