"""Per-tensor plans: what a step needs to know of each parameter, decided once per param group.

A :class:`TensorPlan` holds, for one parameter of a group:

- its name (the group's ``param_names`` entry, else ``<group name>.<position>``), the **whole** tensor's shape and
  element count as the optimizer was built (a DeepSpeed ZeRO flat partition no longer knows them), and its shard
  layout: ``"whole"``, ``"dtensor"`` (an FSDP2 ``Shard``/``Replicate`` DTensor) or ``"partition"`` (a flat ZeRO
  partition of one tensor, a group with ``whole_numel``);
- whether ``state_bits=8`` keeps its full-size moments in 8 bits (decided from the whole tensor, so that every
  rank decides alike);
- its route: the path its math takes (``_adam_engine.route_for``: ``"native"``, ``"compiled"``, ``"foreach"`` or
  ``"reference"``; AdaPM's low-rank / compact tensors ``"structured"``, AdaDiag's rotated ones ``"batched"``);
- the optimizer's own detail: AdaPM's momentum plan (``_policy.MomentumPlan``), AdaDiag's rotation sides, nothing
  for AlphaAdam.

Plans are built when a group is added and cached. They are rebuilt when the group's tensors change -- Accelerate
or FSDP2 swapping parameters for DTensors, DeepSpeed for flat partitions, ``load_state_dict`` replacing the group
dicts -- keeping the whole shapes recorded at construction. A step reads them and decides nothing again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ._quantized import quantize_tensor
from ._sharding import is_dtensor

if TYPE_CHECKING:
    from ._base import MaskedAdamBase

LAYOUTS = ("whole", "dtensor", "partition")


@dataclass(frozen=True)
class TensorPlan:
    """One parameter's plan (see the module docstring)."""

    position: int
    name: str
    shape: tuple[int, ...]
    numel: int
    layout: str
    eight_bit: bool
    route: str
    detail: Any
    # the tensor the plan was built for (id, dtype, device): another tensor in its place, or this one moved or cast,
    # rebuilds the plans
    tensor_key: tuple

    @property
    def sharded(self) -> bool:
        return self.layout != "whole"


@dataclass
class Slot:
    """One tensor of a step: its plan, the tensor the math updates (the parameter, or an fp32 master of it), its
    gradient and its state (the state dict itself, or a view holding fp32 moments of 8-bit ones)."""

    plan: TensorPlan
    param: Tensor
    grad: Tensor
    state: dict[str, Any]


def whole_shape(param: Tensor) -> tuple[int, ...]:
    """The parameter's logical shape: DeepSpeed ZeRO-3 keeps it as ``ds_shape`` on a placeholder tensor; a DTensor's
    shape is the global one."""
    shape = getattr(param, "ds_shape", None)
    return tuple(shape) if shape is not None else tuple(param.shape)


def tensor_key(param: Tensor) -> tuple:
    return id(param), param.dtype, param.device


def plans_current(plans: list[TensorPlan], group: dict[str, Any]) -> bool:
    """Whether ``plans`` were built for the tensors the group holds now."""
    params = group["params"]
    return len(plans) == len(params) and all(plan.tensor_key == tensor_key(p) for plan, p in zip(plans, params))


def build_plans(optimizer: MaskedAdamBase, group: dict[str, Any], group_index: int,
                previous: list[TensorPlan] | None, rebuild_details: bool = False) -> list[TensorPlan]:
    """The plans of ``group``. With ``previous`` (the plans of the tensors the group held before), each tensor keeps
    its recorded whole shape and, unless ``rebuild_details``, its detail; a group whose tensors can no longer be
    matched to the ones it was built with (a multi-tensor group turned into one flat partition) is refused."""
    params = group["params"]
    partition = "whole_numel" in group
    if partition and len(params) > 1:
        raise ValueError(f"a param group with 'whole_numel' must hold exactly one tensor (a flat partition "
                         f"of one parameter), got {len(params)}")
    if previous is not None and not partition and not any(is_dtensor(p) for p in params):
        built = [plan.shape for plan in previous]
        current = [whole_shape(p) for p in params]
        if current != built:
            raise RuntimeError(optimizer._layout_change_message(previous, current))
    names = group.get("param_names")
    shapes = [previous[k].shape if previous is not None and k < len(previous) else whole_shape(p)
              for k, p in enumerate(params)]
    group_numel = int(group["whole_numel"]) if partition else sum(math.prod(shape) for shape in shapes)
    plans = []
    for position, param in enumerate(params):
        name = (str(names[position]) if names is not None and position < len(names)
                else f"{optimizer.group_name(group, group_index)}.{position}")
        before = previous[position] if previous is not None and position < len(previous) else None
        shape = shapes[position]
        layout = "partition" if partition else "dtensor" if is_dtensor(param) else "whole"
        numel = int(group["whole_numel"]) if partition else math.prod(shape)
        if before is not None and not rebuild_details:
            detail = before.detail
        else:
            detail = optimizer._plan_detail(group, group_index, position, name, shape)
        eight_bit = group.get("state_bits", 32) == 8 and quantize_tensor(
            numel, name if names is not None else None, group["min_8bit_size"], group["quantize_embeddings"])
        route = optimizer._plan_route(group, param, numel, group_numel, detail, eight_bit)
        plan = TensorPlan(position, name, shape, numel, layout, eight_bit, route, detail, tensor_key(param))
        optimizer._check_plan(group, plan, param)
        plans.append(plan)
    return plans
