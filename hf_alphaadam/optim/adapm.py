"""AdaPM-style partial momentum: no, full or low-rank first moment per block, optionally a compact second moment.

Zhang, Liu, Fang, "AdaPM" (arXiv 2510.09103). The paper's Algorithm 1 is not public; this is the project's
AdaPM-*style* optimizer (``shared/docs/algorithms.md`` §3, §6). Every point the paper leaves open is an option.

Which tensor gets which momentum is chosen by parameter name (``_policy.py``): token embedding and attention output
projection get none, the value projection full, query / key / MLP matrices low-rank, 1-D tensors full; GPT-2's
fused ``c_attn`` is split into its q | k | v output slices. Pass ``model.named_parameters()``.

Per tensor (canonical matrix ``G``: one row per output feature; ``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t``)::

    none:     m_used = G                                  (bc1 := 1: no momentum, no first-moment correction)
    full:     m = beta1 m + (1 - beta1) G;  m_used = m    (AdamW)
    lowrank:  m_prev = L R                                (L: rows x r, R: r x cols, the stored factors)
              m~ = beta1 m_prev + (1 - beta1) G           (exact EMA step from the low-rank previous momentum)
              refit: the factor on the smaller side is an orthonormal basis Q, warm-started from the previous one:
                  repeat refit_iters times:  Q <- qr(X (X^T Q)).Q     (X = m~, or m~^T when rows > cols)
                  the other factor is Q^T X                (so L R = Q Q^T m~, the best fit in span(Q))
              residual="full" (default): m_used = m~ = L R + (m~ - L R)   (the whole approximation residual)
              residual="none":           m_used = L R                     (pure low-rank momentum)
              residual="clip":           m_used = L R + r min(1, residual_clip ||L R|| / ||r||),  r = m~ - L R
    v:        second_moment="adam": V = beta2 V + (1 - beta2) G^2  (element-wise)
              second_moment="mini": one value per output row (per head of ``head_dim`` rows for q / k):
                  v_b = beta2 v_b + (1 - beta2) mean_{i in b}(G_i^2);  1-D tensors keep the element-wise V
    u   = (m_used / bc1) / (sqrt(V / bc2) + eps)          # torch-style epsilon
    phi = 1(m_prev * G > 0)  (mask="async"; m_prev = L R for a low-rank block) | 1(m_used * G > 0) ("sync") | 1
          phi = 1 on rows without momentum, and everywhere at a tensor's first step with first_step="full"
    alpha, step direction: ``_masking.masked_step`` (per tensor; the AlphaAdam rules)
    W   = W (1 - lr wd) - lr alpha (phi * u)              # decoupled weight decay first; a tensor whose mask is
                                                          # empty is not moved (AlphaAdam's rule)

With ``rank >= min(rows, cols)`` the basis is square and orthogonal, ``L R = m~`` exactly (up to rounding), and a
low-rank block is AdamW -- tested in fp64. The initial basis is a seeded random orthonormal matrix (``seed`` and the
tensor's name), the other factor zero (``L R = 0 = m_0``), so a run and its resume are bit-identical.

Two code paths with one signature, :func:`adapm`: ``_single_tensor_adapm`` (``_adapm_paths.py``) is the per-tensor
reference (the test oracle); ``_multi_tensor_adapm`` (``_adapm_fast.py``, the default) does the same math with fewer
passes over memory. The class is the shared shell (``_base.py``) plus this rule, so 8-bit moments
(``state_bits=8``: the full-size ``exp_avg`` / ``exp_avg_sq`` of the element-wise blocks; factors and compact v stay
32-bit) and Kahan / stochastic bf16 updates (``bf16_update``) work as in AlphaAdam (``_precision.py``).

Distributed: blocks with full or no momentum and Adam's v are element-wise and work on FSDP2 DTensor shards and on
DeepSpeed ZeRO flat partitions (groups with ``whole_numel``). Low-rank factors and compact v need the whole matrix:
such a tensor that is a DTensor or a flat partition is refused with an error naming the way out.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import _native, _precision, _quantized
from ._adam_engine import route_for
from ._adapm_paths import adapm
from ._base import MaskedAdamBase, native_fits
from ._plans import Slot, TensorPlan
from ._policy import (
    MomentumPlan,
    build_plan,
    format_table,
)
from ._sharding import local
from ._state import resolve_state_dtype, state_dtype_for
from ._schemas import ADAPM_SCHEMA
from ._state_layout import adapm_expected_state
from ._validation import Expected, describe_mismatch

__all__ = ["AdaPM", "adapm", "optimizer_state_memory", "compare_with_adamw"]

logger = logging.getLogger(__name__)

REGEX_OPTIONS = ("none_modules", "full_modules", "lowrank_modules", "fused_qkv_modules", "transposed_modules")
POLICY_OPTIONS = ("rank", "second_moment", "head_dim", "policy", "lm_head", "other", "dense_fallback") + REGEX_OPTIONS
MOMENTUM_KEYS = ("exp_avg", "lowrank_left", "lowrank_right")


class AdaPM(MaskedAdamBase):
    r"""AdaPM-style partial momentum (see the module docstring for the rule and ``_policy.py`` for the blocks).

    Args:

    """

    OPTIONS = ADAPM_SCHEMA
    __doc__ = OPTIONS.document(__doc__, params=(
        "``(name, parameter)`` pairs (e.g. ``model.named_parameters()``), or groups with a ``param_names`` list. "
        "Names choose each tensor's momentum. Without names a group must set ``policy`` to "
        "``'none'|'full'|'lowrank'`` (one rule for all its matrices); otherwise a ValueError says how to pass names. "
        "(Shape alone cannot tell a token embedding or an o_proj from an MLP matrix, and silently giving them "
        "low-rank momentum would not be AdaPM.) Any option below may be overridden per group."))

    EMPTY_HINT = "pass model.named_parameters() (or groups with 'param_names')"
    LAYOUT_OPTIONS = ("rank", "second_moment", "head_dim", "policy", "none_modules", "full_modules",
                      "lowrank_modules", "lm_head", "other", "fused_qkv_modules", "transposed_modules",
                      "dense_fallback", "state_dtype")

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, rank: int = 16, second_moment: str = "adam",
                 head_dim: int | None = None, refit_iters: int = 1, residual: str = "full", residual_clip: float = 1.0,
                 policy: str = "auto", none_modules: str | None = None, full_modules: str | None = None,
                 lowrank_modules: str | None = None, lm_head: str = "none", other: str = "full",
                 fused_qkv_modules: str | None = "auto", transposed_modules: str | None = "auto",
                 dense_fallback: bool = True, mask: str = "none", alpha: str = "none", alpha_max: float | None = None,
                 first_step: str = "full", state_dtype: torch.dtype | str | None = None, seed: int = 0,
                 foreach: bool | None = None, maximize: bool = False, partition_group: Any = None,
                 log_policy: bool = True, tensor_threads: int | None = None, state_bits: int = 32,
                 min_8bit_size: int = _quantized.MIN_8BIT_SIZE, quantize_embeddings: bool = False,
                 bf16_update: str = "plain", adopt_changed_settings: bool = False) -> None:
        self._workspace: dict[Any, Tensor] = {}  # reusable CPU scratch of the fast path (not state)
        super().__init__(params, locals())
        self._check_regexes_match()
        if self.log_policy:
            _log_main_process("AdaPM per-tensor policy:\n" + self.policy_table())

    # ------------------------------------------------------------------------------------------------ groups

    def _group_added(self, group: dict[str, Any]) -> None:
        if not self._constructing:
            self._check_regexes_match()
            if group["params"]:
                _log_main_process("AdaPM per-tensor policy of an added group:\n"
                                  + format_table([plan.detail for plan in self._plan_cache[id(group)][1]]))

    def _plan_detail(self, group: dict[str, Any], group_index: int, position: int, name: str,
                     shape: tuple[int, ...]) -> MomentumPlan:
        """The tensor's momentum plan (``_policy.py``), from its name and whole shape."""
        named = group.get("param_names") is not None
        if not named and group["policy"] == "auto":
            raise ValueError(
                f"AdaPM needs parameter names to choose each tensor's momentum, but param group {group_index} has "
                "none. Pass (name, parameter) pairs, e.g. AdaPM(model.named_parameters()), or groups with a "
                "'param_names' list, or set policy='none'|'full'|'lowrank' for an unnamed group")
        plan = build_plan(name if named else None, shape, group)
        if not named:
            plan = MomentumPlan(name, plan.shape, plan.role, plan.reason, plan.transposed, plan.segments)
        return plan

    def _plan_route(self, group: dict[str, Any], param: Tensor, numel: int, group_numel: int,
                    detail: MomentumPlan, eight_bit: bool) -> str:
        """``"reference"`` (``foreach=False``), ``"structured"`` (low-rank / compact tensors); element-wise
        tensors: the native kernel where it fits, the compiled multi-tensor kernels on a GPU, else the foreach
        path."""
        if group["foreach"] is False:
            return "reference"
        if detail.kind == "structured":
            return "structured"
        if native_fits(param, group, eight_bit) and _native.enabled() and _native.available():
            return "native"
        return route_for(native_fits=False, whole_numel=numel, group_numel=0, foreach=None, fused=None,
                         like=local(param)) if local(param).device.type == "cuda" else "foreach"

    def _check_plan(self, group: dict[str, Any], plan: TensorPlan, param: Tensor) -> None:
        if plan.detail.kind == "structured" and plan.sharded:
            raise ValueError(_sharded_error(plan.detail, "a flat ZeRO partition ('whole_numel' group)"
                                            if plan.layout == "partition" else "an FSDP2 DTensor"))

    def _check_regexes_match(self) -> None:
        """A regex given explicitly must match at least one parameter name among the groups that use it."""
        names_by_regex: dict[tuple[str, str], list[str]] = {}
        for group in self.param_groups:
            names = [str(n) for n in group.get("param_names") or []]
            for key in REGEX_OPTIONS:
                value = group[key]
                if value is None or value == "auto":
                    continue
                names_by_regex.setdefault((key, value), []).extend(names)
        for (key, value), names in names_by_regex.items():
            if not any(re.search(value, name) for name in names):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ValueError(f"{key}={value!r} matches no parameter name (names: {shown or 'none given'}); "
                                 "give a regex (re.search, '|' between alternatives) that matches the tensors to "
                                 "override, or leave the option unset")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for attribute, value in (("_workspace", {}), ("tensor_threads", None)):
            if not hasattr(self, attribute):
                setattr(self, attribute, value)

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Expected], str]:
        plan = self.plans_of(group_index)[position]
        expected, how = adapm_expected_state(plan.detail.name, plan.shape, options, param, plan.sharded)
        return _precision.expected_with_precision(expected, param, saved), how

    def plans(self, group_index: int | None = None) -> list[MomentumPlan]:
        """The per-tensor momentum plans of one group, or of all groups in order."""
        indices = range(len(self.param_groups)) if group_index is None else [group_index]
        return [plan.detail for index in indices for plan in self.plans_of(index)]

    def policy_table(self) -> str:
        """The per-tensor policy as a text table (what is logged at construction)."""
        return format_table(self.plans())

    # ------------------------------------------------------------------------------------------------ memory

    def state_bytes(self) -> dict[str, int]:
        """Bytes of each tensor's optimizer state (moments / factors; the 4-byte step counter left out), keyed
        by parameter name. Tensors not stepped yet report what their first step will allocate."""
        result = {}
        for group_index, group in enumerate(self.param_groups):
            state_dtype = resolve_state_dtype(group["state_dtype"])
            for position, (param, plan) in enumerate(zip(group["params"], self.plans(group_index))):
                state = self.state.get(param)
                name = self.tensor_name(group, group_index, position)
                if state:
                    result[name] = sum(local(v).numel() * v.element_size() for k, v in state.items()
                                       if isinstance(v, Tensor) and k != "step")
                else:
                    size = torch.empty((), dtype=state_dtype_for(param, state_dtype)).element_size()
                    result[name] = size * sum(math.prod(s) for s in plan.state_shapes().values())
        return result

    def state_bytes_by_kind(self) -> dict[str, int]:
        """Total planned state bytes split into ``momentum`` and ``second_moment``."""
        totals = {"momentum": 0, "second_moment": 0}
        for group_index, group in enumerate(self.param_groups):
            state_dtype = resolve_state_dtype(group["state_dtype"])
            for param, plan in zip(group["params"], self.plans(group_index)):
                size = torch.empty((), dtype=state_dtype_for(param, state_dtype)).element_size()
                for key, shape in plan.state_shapes().items():
                    totals["momentum" if key in MOMENTUM_KEYS else "second_moment"] += size * math.prod(shape)
        return totals

    # ------------------------------------------------------------------------------------------------ step

    def _init_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any],
                    dtype: torch.dtype) -> None:
        momentum = plan.detail
        if momentum.kind != "structured":  # element-wise: like the parameter (a DTensor stays a DTensor)
            if momentum.kind == "adam_full":
                state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
            return
        shapes = momentum.state_shapes()
        for key, shape in shapes.items():
            if momentum.transposed and len(shape) == 2:  # full-size matrices in the parameter's canonical layout
                state[key] = torch.zeros(shape[::-1], dtype=dtype, device=param.device).mT
            else:
                state[key] = torch.zeros(shape, dtype=dtype, device=param.device)
        if "lowrank_left" in shapes:
            count, rows, rank = shapes["lowrank_left"]
            cols = shapes["lowrank_right"][2]
            seed = (group["seed"] * 1_000_003 + zlib.crc32(momentum.name.encode())) % 2**63
            basis = torch.linalg.qr(torch.randn(count, min(rows, cols), rank, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(seed))).Q
            if rows <= cols:
                state["lowrank_left"].copy_(basis)
            else:
                state["lowrank_right"].copy_(basis.mT)

    def _check_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any]) -> None:
        momentum = plan.detail
        quantized = _quantized.quantized_keys(state)
        for key, shape in momentum.state_shapes().items():
            if key in quantized:
                continue
            tensor = state.get(key)
            shape = tuple(param.shape) if plan.sharded and momentum.kind != "structured" else shape
            if (tensor is None or tuple(tensor.shape) != shape or tensor.device != param.device
                    or not tensor.is_floating_point()):
                raise ValueError(describe_mismatch(plan.name, key, tensor, shape, param.device) + (
                    f" (policy {momentum.describe_momentum()}, second moment {momentum.describe_second_moment()})"))

    def _joins_collectives(self, group: dict[str, Any], slots: list[Slot]) -> bool:
        """Only full-momentum Adam tensors issue per-tensor collectives (as AlphaAdam's)."""
        return "whole_numel" in group and self._plans(group, self.param_groups.index(group))[0].detail.kind == \
            "adam_full"

    def _update(self, group: dict[str, Any], group_index: int, slots: list[Slot]
                ) -> list[tuple[list[int], Tensor, Tensor]]:
        full = [group["params"][s.plan.position] for s in slots if s.plan.detail.kind == "adam_full"]
        numels, reduce_sums = self._sharding(group, full) if full else (None, None)
        beta1, beta2 = group["betas"]
        return adapm(
            [s.param for s in slots], [s.grad for s in slots], [s.state for s in slots],
            [s.plan.detail for s in slots], foreach=group["foreach"], lr=group["lr"], beta1=beta1, beta2=beta2,
            eps=group["eps"], weight_decay=group["weight_decay"], mask=group["mask"], alpha=group["alpha"],
            alpha_max=group["alpha_max"], first_step=group["first_step"], residual=group["residual"],
            residual_clip=group["residual_clip"], refit_iters=group["refit_iters"], maximize=group["maximize"],
            numels=numels, reduce_sums=reduce_sums, workspace=self._workspace, tensor_threads=self.tensor_threads,
            routes=[s.plan.route for s in slots])


def _sharded_error(plan: MomentumPlan, where: str) -> str:
    return (f"AdaPM: {plan.name} is {where}, but its policy ({plan.describe_momentum()}, second moment "
            f"{plan.describe_second_moment()}) needs the whole matrix (low-rank factors and per-row / per-head "
            "second moments cannot be computed shard by shard). Supported on shards: full or no momentum with "
            "second_moment='adam'. Override these tensors, e.g. full_modules='<regex>' (or policy='full' for "
            "the group) with second_moment='adam', or train with whole tensors (DDP)")


def _log_main_process(message: str) -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
    except ImportError:  # pragma: no cover
        pass
    logger.info(message)

from ._adapm_memory import compare_with_adamw, optimizer_state_memory  # noqa: E402,F401 (the public names)
