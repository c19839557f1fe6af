"""The shell every optimizer of the package shares; each optimizer adds only its math.

:class:`MaskedAdamBase` does, once for AlphaAdam, AdaPM and AdaDiag:

- construction and group checks (``_validate_group``, the subclass's option checks), ``add_param_group``,
  ``__setstate__``, the dtype-keeping, validated ``load_state_dict`` and the writer-recording ``state_dict``;
- the **per-tensor plans** (``_plans.py``): built once per param group and cached, rebuilt when the group's tensors
  change (e.g. Accelerate swapping parameters for DTensors), read by ``step()``;
- the step around the math: gradients gathered, state created on first use (then checked before any write), the
  8-bit moments and the bf16-update masters (``_precision.py``), and the statistics recorded per plan;
- the sharding hooks: whole-tensor element counts and the reducer of per-tensor sums (``_sharding.py``).

A subclass sets ``OPTIONS`` (its option schema, ``_schemas.py``: every option's check, default and doc) and
implements ``_plan_detail`` (what its math needs to know per tensor), ``_init_state`` / ``_check_state`` (its
state), ``_update`` (the step over a list of :class:`~._plans.Slot`) and ``_expected_state`` (what a load checks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype

from . import _native, _precision, _quantized
from ._options import OptionSchema
from ._plans import Slot, TensorPlan, build_plans, plans_current
from ._resume import prepare_load, record_writer
from ._sharding import SumsReducer, dtensor_sums_reducer, local, partition_sums_reducer
from ._state import resolve_state_dtype, restore_saved_dtypes, state_dtype_for
from ._statistics import StatisticsMixin
from ._validation import Expected

# the options a tensor's route depends on (``_adam_engine.route_for``)
ROUTE_OPTIONS = ("foreach", "fused", "state_dtype", "bf16_update")


def check_param_groups(optimizer: Optimizer) -> None:
    """Reject parameters the update rules are not defined for (complex tensors, non-floating tensors)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if torch.is_complex(param):
                raise TypeError(f"{type(optimizer).__name__} does not support complex parameters "
                                f"(got a {param.dtype} tensor of shape {tuple(param.shape)}); "
                                "pass real parameters, e.g. torch.view_as_real(p)")
            if not param.is_floating_point():
                raise TypeError(f"{type(optimizer).__name__} needs floating-point parameters, got {param.dtype}")


def check_dense_grad(optimizer: Optimizer, grad: Tensor) -> None:
    if grad.is_sparse:
        raise ValueError(f"{type(optimizer).__name__} does not support sparse gradients (the sign mask and the "
                         "moments need every coordinate); use a dense embedding (sparse=False) "
                         "or torch.optim.SparseAdam for that parameter")


def native_fits(param: Tensor, group: dict[str, Any], eight_bit: bool) -> bool:
    """Whether the native kernel can take the tensor's math: fp32 CPU values and gradients -- an fp32 parameter, or
    an fp16 one whose fp32 master gets an fp32 copy of the gradient (``bf16_update``; a bf16 gradient stays bf16) --
    with fp32 moments (8-bit moments are dequantized to fp32)."""
    tensor = local(param)
    master = tensor.dtype == torch.float16 and group.get("bf16_update", "plain") != "plain"
    if tensor.device.type != "cpu" or not (tensor.dtype == torch.float32 or master) or tensor.is_sparse:
        return False
    return eight_bit or state_dtype_for(param, resolve_state_dtype(group["state_dtype"])) == torch.float32


class MaskedAdamBase(StatisticsMixin, Optimizer):
    """The common shell (see the module docstring). Not used directly."""

    # options whose change on resume is refused even with adopt_changed_settings (the state's shapes follow them)
    LAYOUT_OPTIONS: tuple[str, ...] = ()
    # what an empty parameter list is told to pass instead
    EMPTY_HINT = "pass at least one parameter"
    # every option: its checks, defaults and docs (``_schemas.py``)
    OPTIONS: OptionSchema

    def __init__(self, params: Iterable[Any], arguments: dict[str, Any]) -> None:
        """``arguments``: the subclass constructor's arguments (its ``locals()``). ``OPTIONS`` checks them and splits
        them into the param groups' defaults and the settings that are not group entries (``partition_group``,
        ``adopt_changed_settings``, ...), which become attributes."""
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, (name, tensor) pairs or dicts, got a Tensor")
        params = list(params)
        if len(params) == 0:
            raise ValueError(f"{type(self).__name__} got an empty parameter list: {self.EMPTY_HINT}")
        defaults, settings = self.OPTIONS.check_arguments(
            {key: value for key, value in arguments.items() if key not in ("self", "params", "__class__")})
        self._validate_group(defaults)
        for key, value in settings.items():
            setattr(self, key, value)
        # id(group) -> (the plan-shaping options they were built with, the group's plans)
        self._plan_cache: dict[int, tuple[tuple, list[TensorPlan]]] = {}
        self._constructing = True
        super().__init__(params, defaults)
        self._constructing = False
        check_param_groups(self)
        self._init_statistics()

    # ---------------------------------------------------------------------------------------------- groups

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check and normalise every option of ``group`` (``OPTIONS``); 8-bit moments need bitsandbytes."""
        self.OPTIONS.check_group(group)
        if group.get("state_bits") == 8:
            _quantized.require_bitsandbytes()  # fail at construction, not at the first step

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        if hasattr(self, "_plan_cache"):  # the plans record each tensor's whole shape as built
            self._plan_cache[id(group)] = (self._plan_options(group),
                                           build_plans(self, group, len(self.param_groups) - 1, None))
        self._group_added(group)

    def _group_added(self, group: dict[str, Any]) -> None:
        """Hook: a group was added (after its checks and plans)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not hasattr(self, "_statistics"):
            self._init_statistics()
        for attribute, value in (("partition_group", None), ("_plan_cache", {})):
            if not hasattr(self, attribute):
                setattr(self, attribute, value)

    # ---------------------------------------------------------------------------------------------- plans

    def _plan_detail(self, group: dict[str, Any], group_index: int, position: int, name: str,
                     shape: tuple[int, ...]) -> Any:
        """What the optimizer's math needs to know of one tensor, from its whole shape and name (default none)."""
        return None

    def _plan_route(self, group: dict[str, Any], param: Tensor, numel: int, group_numel: int, detail: Any,
                    eight_bit: bool) -> str:
        """The path of the tensor's math (``_adam_engine.route_for`` for an element-wise Adam tensor)."""
        raise NotImplementedError

    def _check_plan(self, group: dict[str, Any], plan: TensorPlan, param: Tensor) -> None:
        """Hook: refuse a tensor whose layout the optimizer's math cannot take (whenever plans are built)."""

    def _layout_change_message(self, plans: list[TensorPlan], shapes: list[tuple[int, ...]]) -> str:
        """The error for a group whose tensors (built as ``plans``) were replaced by tensors of other ``shapes``."""
        return (f"a param group that held tensors of shapes {[plan.shape for plan in plans]} now holds tensors of "
                f"shapes {shapes}: a flat partition (DeepSpeed ZeRO) mixes tensors, so per-tensor alpha, mask ratios "
                "and policies would be wrong. Use the Trainer plugin (optim='alphaadam', ...), which gives DeepSpeed "
                "one param group per tensor, or build such groups yourself with a 'whole_numel' entry")

    def _check_step(self, group: dict[str, Any], plan: TensorPlan, param: Tensor) -> None:
        """Hook: refuse, at the step, a tensor the optimizer's math cannot take (e.g. a sharded rotated matrix)."""

    def plans_of(self, group_index: int) -> list[TensorPlan]:
        """The per-tensor plans of param group ``group_index``."""
        return self._plans(self.param_groups[group_index], group_index)

    def _plan_options(self, group: dict[str, Any]) -> tuple:
        """The group's values of the options plans depend on (a change rebuilds the plans' details)."""
        return (*(group.get(key) for key in (*self.LAYOUT_OPTIONS, *_precision.PLAN_OPTIONS, *ROUTE_OPTIONS)),
                _native.enabled())

    def _plans(self, group: dict[str, Any], group_index: int) -> list[TensorPlan]:
        options, plans = self._plan_cache.get(id(group), (None, None))
        current = self._plan_options(group)
        if plans is None or options != current or not plans_current(plans, group):
            plans = build_plans(self, group, group_index, plans, rebuild_details=options != current)
            self._plan_cache[id(group)] = (current, plans)
        return plans

    # ---------------------------------------------------------------------------------------------- state

    def _init_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any],
                    dtype: torch.dtype) -> None:
        """Create the state of a tensor's first step (moments in ``dtype``; ``step`` is created by the shell)."""
        raise NotImplementedError

    def _check_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any]) -> None:
        """Check an existing state before any write (a ValueError naming the tensor and the mismatch)."""

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Expected], str]:
        """The state tensors this optimizer keeps for ``param`` under ``options`` (the saved group's), and the
        options that decide it in words, for :func:`~._validation.check_saved_state`."""
        raise NotImplementedError

    def _adapt_loaded_state(self, saved: dict[str, Any], param: Tensor, saved_options: dict[str, Any],
                            options: dict[str, Any], group_index: int, position: int) -> dict[str, Any]:
        """The state entry to load when the settings change from ``saved_options`` to ``options``: 8-bit moments
        converted where ``state_bits`` changed, cast where ``state_dtype`` changed, the Kahan buffer dropped."""
        plan = self.plans_of(group_index)[position]
        return _precision.adapt_loaded_state(saved, param, saved_options, options, plan.name)

    def state_dict(self) -> dict[str, Any]:
        """``Optimizer.state_dict`` plus, in each param group, the name of the optimizer class that wrote it."""
        return record_writer(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict`` that first validates the whole incoming state and the settings it was
        written with (``_resume.prepare_load``: a refused load changes nothing), then keeps each saved state
        tensor's dtype (torch casts them to the parameter's dtype, which would round fp32 moments of a bf16
        parameter to bf16). The plans (and the whole shapes they record) carry over to the loaded groups."""
        state_dict = prepare_load(self, state_dict)
        previous = [self._plan_cache.get(id(group), (None, None))[1] for group in self.param_groups]
        super().load_state_dict(state_dict)
        restore_saved_dtypes(self, state_dict)
        self._plan_cache = {}
        for group_index, (group, plans) in enumerate(zip(self.param_groups, previous)):
            self._plan_cache[id(group)] = (self._plan_options(group),
                                           build_plans(self, group, group_index, plans, rebuild_details=True))
        self._init_statistics()

    # ---------------------------------------------------------------------------------------------- step

    def _update(self, group: dict[str, Any], group_index: int, slots: list[Slot]
                ) -> list[tuple[list[int], Tensor, Tensor]]:
        """The optimizer's math over ``slots`` (fp32 moments; bf16 parameters replaced by fp32 masters where the
        group's ``bf16_update`` asks for it). Returns ``(indices into slots, alpha [k], mask ratio [k])``."""
        raise NotImplementedError

    def _gather(self, group: dict[str, Any], group_index: int) -> list[Slot]:
        """The group's tensors that have a gradient, their state created on first use or checked before any
        write."""
        slots = []
        state_dtype = resolve_state_dtype(group["state_dtype"])
        for plan in self._plans(group, group_index):
            param = group["params"][plan.position]
            if param.grad is None:
                continue
            check_dense_grad(self, param.grad)
            _precision.check_plan(group, plan)
            self._check_step(group, plan, param)
            state = self.state[param]
            if len(state) == 0:  # lazy: parameters may have been re-wrapped (FSDP2, DeepSpeed) after __init__
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                self._init_state(group, plan, param, state, state_dtype_for(param, state_dtype))
                if plan.eight_bit:
                    _precision.quantize_new_state(state, param)
            else:
                if _precision.is_quantized(state):
                    _precision.check_quantized_state(plan.name, param, state)
                self._check_state(group, plan, param, state)
            _precision.prepare_rounding_state(group, group_index, plan, param, state)
            slots.append(Slot(plan, param, param.grad, state))
        return slots

    def _sharding(self, group: dict[str, Any], params: list[Tensor]) -> tuple[list[int] | None, SumsReducer | None]:
        """Whole-tensor element counts and a reducer of local per-tensor sums for ``params`` (tensors of
        ``group`` with a gradient, in the order the math passes them).

        - A group with ``whole_numel`` holds one parameter that DeepSpeed ZeRO replaces by a flat partition: sums
          are added over ``partition_group``. A rank whose partition has no gradient still joins the collective
          (with zeros), so every rank issues the same collectives.
        - DTensor parameters (FSDP2): sums are added over each parameter's shard groups.
        """
        if "whole_numel" in group:
            reduce_sums = partition_sums_reducer(int(group["whole_numel"]), self.partition_group)
            if group["params"] and not params:  # no gradient here: still take part in the reduction
                reduce_sums(torch.zeros(1, 3, device=group["params"][0].device), [0])
            return [int(group["whole_numel"])] * len(params), reduce_sums
        return dtensor_sums_reducer(params)

    def _joins_collectives(self, group: dict[str, Any], slots: list[Slot]) -> bool:
        """Whether the group's math issues per-tensor collectives for a flat partition even without a gradient
        here (default: yes for a ``whole_numel`` group)."""
        return "whole_numel" in group

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step (see the class docstring for the update rule)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group_index, group in enumerate(self.param_groups):
            # a group's options may have been edited since construction: an unknown mode must not reach a kernel
            for key in ("mask", "alpha", "alpha_max", "first_step"):
                self.OPTIONS.check(key, group[key])
            slots = self._gather(group, group_index)
            if not slots:
                if group["params"] and self._joins_collectives(group, slots):
                    self._sharding(group, [])
                continue  # statistics keep this group's last step (ZeRO-3 steps one group per call)
            self._begin_statistics(group)
            for call in _precision.calls(slots):
                with _precision.fp32_view(self, group, call) as view:
                    buckets = self._update(group, group_index, view)
                for indices, alpha_values, mask_ratio in buckets:
                    self._record_statistics(group, [call[k].plan.position for k in indices], alpha_values,
                                            mask_ratio)
        return loss
