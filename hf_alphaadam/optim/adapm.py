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

Two code paths with one signature, :func:`adapm`: ``_single_tensor_adapm`` is the per-tensor reference (the test
oracle); ``_multi_tensor_adapm`` runs the full-momentum Adam tensors through AlphaAdam's ``torch._foreach_*`` core,
the momentum-free Adam tensors through ``_foreach_*`` ops, and the low-rank / compact tensors one at a time
(``_structured_step``). The fast path does the reference's math with fewer passes over memory (results agree to
rounding): full-size state and scratch kept in the parameter's memory order (a GPT-2 ``Conv1D`` weight is the
transpose of its canonical matrix; state saved in the other order is re-laid out on the next step), ``m~`` as one
``addmm``, bias corrections folded into scalars, no ``u`` / ``phi`` without a mask and alpha, and on the CPU the
element-wise passes run over cache-sized blocks (``CACHE_BLOCK_NUMEL``) with reusable scratch buffers. On the CPU
the low-rank / compact tensors also run side by side, whole tensors in ``tensor_threads`` worker threads with
single-threaded torch kernels each (``_tensor_threads.py``): their small matrix products do not get faster with
more MKL threads, so one tensor at a time left the second core idle.

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
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype, _get_value

from ._base import StatisticsMixin, check_adam_hyperparameters, check_dense_grad, check_param_groups
from . import _native, _tensor_threads
from ._masking import alpha_from_sums, masked_step, reported_alpha, sign_agreement, validate_mask_options
from ._policy import (
    GROUP_POLICIES,
    POLICIES,
    SECOND_MOMENTS,
    TensorPlan,
    build_plan,
    check_policy_name,
    format_table,
    normalize_regex,
)
from ._sharding import SumsReducer, dtensor_sums_reducer, is_dtensor, local, partition_sums_reducer
from ._state import compute_dtype, resolve_state_dtype, state_dtype_for
from ._state_layout import adapm_expected_state
from ._validation import describe_mismatch
from .alphaadam import alphaadam

__all__ = ["AdaPM", "adapm", "optimizer_state_memory", "compare_with_adamw"]

logger = logging.getLogger(__name__)

RESIDUALS = ("full", "none", "clip")
REGEX_OPTIONS = ("none_modules", "full_modules", "lowrank_modules", "fused_qkv_modules", "transposed_modules")
POLICY_OPTIONS = ("rank", "second_moment", "head_dim", "policy", "lm_head", "other", "dense_fallback") + REGEX_OPTIONS
MOMENTUM_KEYS = ("exp_avg", "lowrank_left", "lowrank_right")

StatisticsBucket = tuple[list[int], Tensor, Tensor]


class AdaPM(StatisticsMixin, Optimizer):
    r"""AdaPM-style partial momentum (see the module docstring for the rule and ``_policy.py`` for the blocks).

    Args:
        params: ``(name, parameter)`` pairs (e.g. ``model.named_parameters()``), or groups with a ``param_names``
            list. Names choose each tensor's momentum. Without names a group must set ``policy`` to
            ``"none"|"full"|"lowrank"`` (one rule for all its matrices); otherwise a ValueError says how to pass
            names. (Shape alone cannot tell a token embedding or an o_proj from an MLP matrix, and silently giving
            them low-rank momentum would not be AdaPM.) Any option below may be overridden per group.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled weight decay, applied first; epsilon
            after bias correction).
        rank: rank ``r`` of low-rank momentum (int >= 1; capped at ``min(rows, cols)`` of each block). Default 16:
            the paper's value was not recovered; 16 is the largest power of two whose momentum stays <= 10 % of
            AdamW's for GPT-2 small..large (``benchmarks/memory.py``).
        second_moment: ``"adam"`` (default, element-wise) or ``"mini"`` (Adam-mini style: one value per output
            row, per head for query / key when ``head_dim`` is given; 1-D tensors keep the element-wise v).
        head_dim: attention head dimension for ``second_moment="mini"`` (``None``: per row for q / k as well).
        refit_iters: subspace-iteration steps per refit of the low-rank factors (int >= 0; default 1, one
            warm-started power-iteration step; 0 keeps the initial random basis, a GaLore-like fixed projection).
        residual: what the update uses from a low-rank block: ``"full"`` (default; ``m~``, exact for the current
            gradient, only the carried state is low-rank), ``"none"`` (the refit ``L R``) or ``"clip"`` (``L R`` plus
            the residual with its norm capped at ``residual_clip * ||L R||``). The paper's residual / clip step is
            not public: ``"full"`` is its identity-clip reading.
        residual_clip: the cap for ``residual="clip"`` (> 0; default 1.0).
        policy: ``"auto"`` (default; by name) or ``"none"|"full"|"lowrank"`` for every matrix of the group.
        none_modules, full_modules, lowrank_modules: regexes (``re.search`` on parameter names; ``|`` between
            alternatives, since the Trainer's ``optim_args`` cannot carry commas) that override the defaults, in
            this order. A regex given explicitly that matches no parameter name is an error.
        lm_head: momentum of an untied ``lm_head`` (default ``"none"``, like the token embedding).
        other: momentum of matrices no rule recognises (default ``"full"``).
        fused_qkv_modules: regex of fused q|k|v weights split into three output slices (``"auto"``: GPT-2's
            ``attn.c_attn``; ``None``: split nothing).
        transposed_modules: regex of weights stored ``(in, out)`` (``"auto"``: GPT-2's Conv1D names).
        dense_fallback: a block whose factors would hold as many numbers as the matrix (``r (rows + cols) >=
            rows cols``) gets full momentum instead (same maths, less memory). Default True.
        mask, alpha, alpha_max, first_step: the AlphaAdam mask / alpha options (``_masking.py``); default no mask.
        state_dtype: dtype of all state tensors (``None``: fp32 for bf16/fp16 parameters, else the parameter's).
        seed: seed of the initial random bases (combined with each tensor's name).
        foreach: ``True`` fast path, ``False`` per-tensor reference, ``None`` (default): fast path.
        maximize: maximize the objective.
        partition_group: process group for flat-partition (``whole_numel``) groups.
        log_policy: log the per-tensor policy table once at construction (INFO, main process only).
        tensor_threads: worker threads for the low-rank / compact tensors of the fast path on the CPU, each with
            single-threaded torch kernels (``_tensor_threads.py``; their small matrix products do not speed up
            with more MKL threads, whole tensors side by side do). ``None`` (default): ``torch.get_num_threads()``
            for CPU tensors, where the per-thread limits work; ``1``: one tensor after another. Not state.
        adopt_changed_settings: on ``load_state_dict``, continue with changed settings instead of raising (as
            AlphaAdam; ``_resume.py``). :attr:`LAYOUT_OPTIONS`, which shape the state, can never change.
    """

    LAYOUT_OPTIONS = ("rank", "second_moment", "head_dim", "policy", "none_modules", "full_modules",
                      "lowrank_modules", "lm_head", "other", "fused_qkv_modules", "transposed_modules",
                      "dense_fallback", "state_dtype")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        rank: int = 16,
        second_moment: str = "adam",
        head_dim: int | None = None,
        refit_iters: int = 1,
        residual: str = "full",
        residual_clip: float = 1.0,
        policy: str = "auto",
        none_modules: str | None = None,
        full_modules: str | None = None,
        lowrank_modules: str | None = None,
        lm_head: str = "none",
        other: str = "full",
        fused_qkv_modules: str | None = "auto",
        transposed_modules: str | None = "auto",
        dense_fallback: bool = True,
        mask: str = "none",
        alpha: str = "none",
        alpha_max: float | None = None,
        first_step: str = "full",
        state_dtype: torch.dtype | str | None = None,
        seed: int = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        partition_group: Any = None,
        log_policy: bool = True,
        tensor_threads: int | None = None,
        adopt_changed_settings: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        second_moment=second_moment, head_dim=head_dim, refit_iters=refit_iters, residual=residual,
                        residual_clip=residual_clip, policy=policy, none_modules=none_modules,
                        full_modules=full_modules, lowrank_modules=lowrank_modules, lm_head=lm_head, other=other,
                        fused_qkv_modules=fused_qkv_modules, transposed_modules=transposed_modules,
                        dense_fallback=dense_fallback, mask=mask, alpha=alpha, alpha_max=alpha_max,
                        first_step=first_step, state_dtype=_dtype_name(state_dtype), seed=seed, foreach=foreach,
                        maximize=maximize)
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of (name, tensor) pairs, tensors or dicts, got a Tensor")
        params = list(params)
        if len(params) == 0:
            raise ValueError("AdaPM got an empty parameter list: pass model.named_parameters() (or groups with "
                             "'param_names')")
        self._validate_group(defaults)
        if tensor_threads is not None and (isinstance(tensor_threads, bool) or not isinstance(tensor_threads, int)
                                           or tensor_threads < 1):
            raise ValueError(f"tensor_threads must be None or an integer >= 1, got {tensor_threads!r}")
        self.tensor_threads = tensor_threads
        if not isinstance(adopt_changed_settings, bool):
            raise ValueError(f"adopt_changed_settings must be True or False, got {adopt_changed_settings!r}")
        self.adopt_changed_settings = adopt_changed_settings
        self._plans: dict[int, list[TensorPlan]] = {}
        self._workspace: dict[Any, Tensor] = {}  # reusable CPU scratch of the fast path (not state)
        self._constructing = True
        super().__init__(params, defaults)
        self._constructing = False
        self.partition_group = partition_group
        check_param_groups(self)
        self._check_regexes_match()
        self._init_statistics()
        if log_policy:
            _log_main_process("AdaPM per-tensor policy:\n" + self.policy_table())

    # ------------------------------------------------------------------------------------------------ groups

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        check_adam_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        validate_mask_options(group["mask"], group["alpha"], group["alpha_max"], group["first_step"])
        resolve_state_dtype(group["state_dtype"])
        rank = group["rank"]
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"rank must be an integer >= 1 (the rank of low-rank momentum), got {rank!r}")
        if rank < 1:
            raise ValueError(f"rank must be an integer >= 1 (the rank of low-rank momentum), got {rank!r}")
        iters = group["refit_iters"]
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ValueError(f"refit_iters must be an integer >= 0, got {iters!r}")
        head_dim = group["head_dim"]
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1):
            raise ValueError(f"head_dim must be None or an integer >= 1, got {head_dim!r}")
        check_policy_name("second_moment", group["second_moment"], SECOND_MOMENTS)
        check_policy_name("residual", group["residual"], RESIDUALS)
        check_policy_name("policy", group["policy"], GROUP_POLICIES)
        check_policy_name("lm_head", group["lm_head"], POLICIES)
        check_policy_name("other", group["other"], POLICIES)
        clip = group["residual_clip"]
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"residual_clip must be a finite number > 0, got {clip!r}")
        for key in REGEX_OPTIONS:
            if key in ("fused_qkv_modules", "transposed_modules") and group[key] == "auto":
                continue
            group[key] = normalize_regex(key, group[key])
        seed = group["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        for key in ("dense_fallback", "maximize"):
            if not isinstance(group[key], bool):
                raise TypeError(f"{key} must be a bool, got {group[key]!r}")
        if group["foreach"] not in (None, True, False):
            raise TypeError(f"foreach must be True, False or None, got {group['foreach']!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "state_dtype" in param_group:
            param_group["state_dtype"] = _dtype_name(param_group["state_dtype"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        self._plans[id(group)] = self._build_plans(group, len(self.param_groups) - 1)
        if not getattr(self, "_constructing", False):
            self._check_regexes_match()
            if group["params"]:
                _log_main_process("AdaPM per-tensor policy of an added group:\n"
                                  + format_table(self._plans[id(group)]))

    def _build_plans(self, group: dict[str, Any], group_index: int) -> list[TensorPlan]:
        names = group.get("param_names")
        if names is None and group["policy"] == "auto":
            raise ValueError(
                f"AdaPM needs parameter names to choose each tensor's momentum, but param group {group_index} has "
                "none. Pass (name, parameter) pairs, e.g. AdaPM(model.named_parameters()), or groups with a "
                "'param_names' list, or set policy='none'|'full'|'lowrank' for an unnamed group")
        plans = []
        for position, param in enumerate(group["params"]):
            name = str(names[position]) if names is not None else None
            plan = build_plan(name, tuple(param.shape), group)
            if name is None:
                plan = TensorPlan(f"{self.group_name(group, group_index)}.{position}", plan.shape, plan.role,
                                  plan.reason, plan.transposed, plan.segments)
            if plan.kind == "structured" and ("whole_numel" in group or is_dtensor(param)):
                raise ValueError(_sharded_error(plan, "a flat ZeRO partition ('whole_numel' group)"
                                                if "whole_numel" in group else "an FSDP2 DTensor"))
            plans.append(plan)
        return plans

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
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not hasattr(self, "_statistics"):
            self._init_statistics()
        if not hasattr(self, "partition_group"):
            self.partition_group = None
        if not hasattr(self, "_plans"):
            self._plans = {}
        if not hasattr(self, "_workspace"):
            self._workspace = {}
        if not hasattr(self, "tensor_threads"):
            self.tensor_threads = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does (saved group options win), keep saved state dtypes, and rebuild the plans from the
        loaded options and the tensors' original names and shapes."""
        old = [self._plans.get(id(group)) for group in self.param_groups]
        super().load_state_dict(state_dict)
        self._plans = {}
        for group_index, (group, plans) in enumerate(zip(self.param_groups, old)):
            if plans is None:
                self._plans[id(group)] = self._build_plans(group, group_index)
                continue
            rebuilt = []
            for plan in plans:
                new = build_plan(plan.name, plan.shape, group)
                rebuilt.append(TensorPlan(plan.name, new.shape, new.role, new.reason, new.transposed, new.segments))
            self._plans[id(group)] = rebuilt

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Any], str]:
        plan = self._group_plans(self.param_groups[group_index])[position]
        sharded = "whole_numel" in options or is_dtensor(param)
        return adapm_expected_state(plan.name, plan.shape, options, param, sharded)

    def plans(self, group_index: int | None = None) -> list[TensorPlan]:
        """The per-tensor plans of one group, or of all groups in order."""
        groups = self.param_groups if group_index is None else [self.param_groups[group_index]]
        return [plan for group in groups for plan in self._group_plans(group)]

    def _group_plans(self, group: dict[str, Any]) -> list[TensorPlan]:
        plans = self._plans.get(id(group))
        if plans is None:  # a group dict replaced from outside: rebuild from its names and shapes
            plans = self._plans[id(group)] = self._build_plans(group, self.param_groups.index(group))
        return plans

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
            for position, (param, plan) in enumerate(zip(group["params"], self._group_plans(group))):
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
        for group in self.param_groups:
            state_dtype = resolve_state_dtype(group["state_dtype"])
            for param, plan in zip(group["params"], self._group_plans(group)):
                size = torch.empty((), dtype=state_dtype_for(param, state_dtype)).element_size()
                for key, shape in plan.state_shapes().items():
                    totals["momentum" if key in MOMENTUM_KEYS else "second_moment"] += size * math.prod(shape)
        return totals

    # ------------------------------------------------------------------------------------------------ step

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Any], ...]:
        params, grads, states, plans, positions = [], [], [], [], []
        state_dtype = resolve_state_dtype(group["state_dtype"])
        group_plans = self._group_plans(group)
        for position, param in enumerate(group["params"]):
            plan = group_plans[position]
            sharded = "whole_numel" in group or is_dtensor(param)
            if plan.kind == "structured" and sharded:
                raise RuntimeError(_sharded_error(plan, "sharded (a flat ZeRO partition or an FSDP2 DTensor)"))
            if not sharded and tuple(param.shape) != plan.shape:
                raise RuntimeError(
                    f"AdaPM: parameter {plan.name} was built with shape {plan.shape} but now has shape "
                    f"{tuple(param.shape)}: a flat partition (DeepSpeed ZeRO) mixes tensors, so the per-tensor policy "
                    "would be wrong. Use the Trainer plugin, which gives DeepSpeed one param group per tensor with a "
                    "'whole_numel' entry (element-wise policies only), or keep whole tensors (DDP)")
            if param.grad is None:
                continue
            check_dense_grad(self, param.grad)
            state = self.state[param]
            if len(state) == 0:
                self._init_state(param, plan, state, state_dtype_for(param, state_dtype), group["seed"])
            else:  # before any kernel writes: every state tensor as the plan needs it
                for key, shape in plan.state_shapes().items():
                    tensor = state.get(key)
                    shape = tuple(param.shape) if sharded and plan.kind != "structured" else shape
                    if (tensor is None or tuple(tensor.shape) != shape or tensor.device != param.device
                            or not tensor.is_floating_point()):
                        raise ValueError(describe_mismatch(plan.name, key, tensor, shape, param.device) + (
                            f" (policy {plan.describe_momentum()}, second moment {plan.describe_second_moment()})"))
            params.append(param)
            grads.append(param.grad)
            states.append(state)
            plans.append(plan)
            positions.append(position)
        return params, grads, states, plans, positions

    @staticmethod
    def _init_state(param: Tensor, plan: TensorPlan, state: dict[str, Any], dtype: torch.dtype, seed: int) -> None:
        state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        if plan.kind != "structured":  # element-wise: like the parameter (a DTensor stays a DTensor)
            if plan.kind == "adam_full":
                state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
            return
        shapes = plan.state_shapes()
        for key, shape in shapes.items():
            if plan.transposed and len(shape) == 2:  # full-size matrices in the parameter's canonical layout
                state[key] = torch.zeros(shape[::-1], dtype=dtype, device=param.device).mT
            else:
                state[key] = torch.zeros(shape, dtype=dtype, device=param.device)
        if "lowrank_left" in shapes:
            count, rows, rank = shapes["lowrank_left"]
            cols = shapes["lowrank_right"][2]
            generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(plan.name.encode())) % 2**63)
            basis = torch.linalg.qr(torch.randn(count, min(rows, cols), rank, generator=generator,
                                                dtype=torch.float64)).Q
            if rows <= cols:
                state["lowrank_left"].copy_(basis)
            else:
                state["lowrank_right"].copy_(basis.mT)

    def _sharding(self, group: dict[str, Any], params: list[Tensor]) -> tuple[list[int] | None, SumsReducer | None]:
        """Whole-tensor element counts and a reducer of local sums for ``params``, the group's full-momentum Adam
        tensors with a gradient (the only ones whose statistics need collectives; as AlphaAdam)."""
        if "whole_numel" in group:
            if len(group["params"]) > 1:
                raise ValueError(f"a param group with 'whole_numel' must hold exactly one tensor (a flat partition "
                                 f"of one parameter), got {len(group['params'])}")
            if self._group_plans(group)[0].kind != "adam_full":
                return None, None
            reduce_sums = partition_sums_reducer(int(group["whole_numel"]), self.partition_group)
            if group["params"] and not params:  # no gradient here: still take part in the reduction
                reduce_sums(torch.zeros(1, 3, device=group["params"][0].device), [0])
            return [int(group["whole_numel"])] * len(params), reduce_sums
        return dtensor_sums_reducer(params)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step (see the module docstring for the update rule)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            validate_mask_options(group["mask"], group["alpha"], group["alpha_max"], group["first_step"])
            params, grads, states, plans, positions = self._init_group(group)
            numels, reduce_sums = self._sharding(group, [p for p, plan in zip(params, plans)
                                                         if plan.kind == "adam_full"])
            if not params:
                continue
            self._begin_statistics(group)
            beta1, beta2 = group["betas"]
            buckets = adapm(
                params, grads, states, plans, foreach=group["foreach"], lr=group["lr"], beta1=beta1, beta2=beta2,
                eps=group["eps"], weight_decay=group["weight_decay"], mask=group["mask"], alpha=group["alpha"],
                alpha_max=group["alpha_max"], first_step=group["first_step"], residual=group["residual"],
                residual_clip=group["residual_clip"], refit_iters=group["refit_iters"], maximize=group["maximize"],
                numels=numels, reduce_sums=reduce_sums, workspace=self._workspace,
                tensor_threads=self.tensor_threads,
            )
            for bucket_positions, alpha_values, mask_ratio in buckets:
                self._record_statistics(group, [positions[i] for i in bucket_positions], alpha_values, mask_ratio)
        return loss


def _sharded_error(plan: TensorPlan, where: str) -> str:
    return (f"AdaPM: {plan.name} is {where}, but its policy ({plan.describe_momentum()}, second moment "
            f"{plan.describe_second_moment()}) needs the whole matrix (low-rank factors and per-row / per-head "
            "second moments cannot be computed shard by shard). Supported on shards: full or no momentum with "
            "second_moment='adam'. Override these tensors, e.g. full_modules='<regex>' (or policy='full' for "
            "the group) with second_moment='adam', or train with whole tensors (DDP)")


def _dtype_name(state_dtype: torch.dtype | str | None) -> str | None:
    resolved = resolve_state_dtype(state_dtype)
    return None if resolved is None else str(resolved).removeprefix("torch.")


def _log_main_process(message: str) -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
    except ImportError:  # pragma: no cover
        pass
    logger.info(message)


# ---------------------------------------------------------------------------------------------------------------
# functional core


def adapm(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    plans: list[TensorPlan],
    *,
    foreach: bool | None = None,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    residual: str,
    residual_clip: float,
    refit_iters: int,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
    workspace: dict[Any, Tensor] | None = None,
    tensor_threads: int | None = 1,
) -> list[StatisticsBucket]:
    """Functional AdaPM step (updates ``params`` and the state dicts in place).

    ``states[i]`` holds tensor ``i``'s state as :class:`AdaPM` allocates it for ``plans[i]``. ``numels`` and
    ``reduce_sums`` (sharded tensors) apply to the ``"adam_full"`` tensors only: ``numels[k]`` and index ``k`` of
    ``reduce_sums`` refer to the k-th ``"adam_full"`` tensor of the lists passed here. Returns
    ``(positions, alpha, mask_ratio)`` statistics buckets. ``workspace``: a dict the fast path may keep reusable
    CPU scratch buffers in between calls (one per optimizer; not state, never saved). ``tensor_threads``: worker
    threads for the fast path's low-rank / compact tensors (:class:`AdaPM`; ``None``: automatic, ``1``: serial).
    """
    if foreach is None:
        foreach = True
    func = _multi_tensor_adapm if foreach else _single_tensor_adapm
    return func(params, grads, states, plans, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                mask=mask, alpha=alpha, alpha_max=alpha_max, first_step=first_step, residual=residual,
                residual_clip=residual_clip, refit_iters=refit_iters, maximize=maximize, numels=numels,
                reduce_sums=reduce_sums, workspace=workspace, tensor_threads=tensor_threads)


def _canonical(tensor: Tensor, plan: TensorPlan) -> Tensor:
    """The tensor as its canonical matrix (one row per output): a view (transposed for ``(in, out)`` weights)."""
    if plan.transposed:
        return tensor.mT
    return tensor.reshape(plan.canonical_shape)


def _refit(target: Tensor, left: Tensor, right: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Refit ``(L, R)`` to ``target`` (``[rows, cols]`` or batched ``[S, rows, cols]``) by warm-started subspace
    iteration.

    The factor on the smaller side is an orthonormal basis ``Q``: ``Q <- qr(X (X^T Q)).Q`` ``iters`` times, with
    ``X = target`` (rows <= cols; ``Q = L``) or ``target^T`` (``Q = R^T``); the other factor is ``Q^T X``.
    """
    rows, cols = target.shape[-2:]
    if rows <= cols:
        basis = left
        for _ in range(iters):
            basis = torch.linalg.qr(target @ (target.mT @ basis)).Q
        return basis, basis.mT @ target
    basis = right.mT
    for _ in range(iters):
        basis = torch.linalg.qr(target.mT @ (target @ basis)).Q
    return target @ basis, basis.mT


def _residual_momentum(target: Tensor, approx: Tensor, residual: str, residual_clip: float) -> Tensor:
    """The momentum the update uses from a low-rank block (``[S, rows, cols]``)."""
    if residual == "full":
        return target
    if residual == "none":
        return approx
    rest = target - approx
    rest_norm = torch.linalg.matrix_norm(rest, keepdim=True)
    limit = residual_clip * torch.linalg.matrix_norm(approx, keepdim=True)
    scale = torch.where(rest_norm > limit, limit / rest_norm.clamp_min(torch.finfo(rest.dtype).tiny),
                        torch.ones_like(rest_norm))
    return approx + scale * rest


def _single_tensor_adapm(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    plans: list[TensorPlan],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    residual: str,
    residual_clip: float,
    refit_iters: int,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
    workspace: dict[Any, Tensor] | None = None,
    tensor_threads: int | None = 1,
) -> list[StatisticsBucket]:
    """The reference loop: one tensor, one row segment at a time, written as the algorithm box reads."""
    alphas, ratios = [], []
    full_index = -1  # position among the "adam_full" tensors (numels / reduce_sums are indexed by it)
    for param, grad, state, plan in zip(params, grads, states, plans):
        dtype = compute_dtype(param)
        p = local(param).to(dtype)
        g = local(grad).to(dtype)
        g = -g if maximize else g
        step_t = state["step"]
        step_t += 1
        step = _get_value(step_t)
        bc1 = 1 - beta1**step
        bc2 = 1 - beta2**step
        unmasked = mask == "none" or (first_step == "full" and step == 1)

        numel, reducer = None, None
        if plan.kind in ("adam_full", "adam_none"):
            v = local(state["exp_avg_sq"]).to(dtype)
            v = v * beta2 + (1 - beta2) * g * g
            denom = v.sqrt() / math.sqrt(bc2) + eps
            if plan.kind == "adam_full":
                full_index += 1
                m_prev = local(state["exp_avg"]).to(dtype)
                m = m_prev.lerp(g, 1 - beta1)
                u = (m / bc1) / denom
                phi = (torch.ones_like(u) if unmasked else
                       sign_agreement(m_prev if mask == "async" else m, g))
                local(state["exp_avg"]).copy_(m)
                if numels:
                    numel = numels[full_index]
                if reduce_sums is not None:
                    reducer = (lambda sums, i=full_index: reduce_sums(sums, [i]))
            else:
                u = g / denom
                phi = torch.ones_like(u)  # no momentum, nothing to agree with: never masked
            local(state["exp_avg_sq"]).copy_(v)
        else:
            G = _canonical(g, plan)
            U = torch.empty_like(G)
            phi = torch.ones_like(G)
            full_m = state["exp_avg"].to(dtype) if "exp_avg" in state else None
            full_offset, lowrank_index = 0, 0
            if all(s.rows_per_v == 0 for s in plan.segments):
                V = state["exp_avg_sq"].to(dtype) * beta2 + (1 - beta2) * G * G
                denom = V.sqrt() / math.sqrt(bc2) + eps
                state["exp_avg_sq"].copy_(V)
            else:
                v = state["exp_avg_sq"].to(dtype)
                denoms, offset = [], 0
                for seg in plan.segments:
                    count = seg.rows // seg.rows_per_v
                    mean_sq = G[seg.start:seg.stop].square().reshape(count, -1).mean(dim=1)
                    v[offset:offset + count] = v[offset:offset + count] * beta2 + (1 - beta2) * mean_sq
                    row_denom = v[offset:offset + count].sqrt() / math.sqrt(bc2) + eps
                    denoms.append(row_denom.repeat_interleave(seg.rows_per_v))
                    offset += count
                denom = torch.cat(denoms).unsqueeze(1)
                state["exp_avg_sq"].copy_(v)
            for seg in plan.segments:
                rows = slice(seg.start, seg.stop)
                Gs = G[rows]
                if seg.momentum == "none":
                    m_prev, used, correction = None, Gs, 1.0
                elif seg.momentum == "full":
                    m_prev = full_m[full_offset:full_offset + seg.rows].clone()
                    used = m_prev.lerp(Gs, 1 - beta1)
                    full_m[full_offset:full_offset + seg.rows] = used
                    full_offset += seg.rows
                    correction = bc1
                else:
                    L = state["lowrank_left"][lowrank_index].to(dtype)
                    R = state["lowrank_right"][lowrank_index].to(dtype)
                    m_prev = L @ R
                    target = beta1 * m_prev + (1 - beta1) * Gs
                    L, R = _refit(target.unsqueeze(0), L.unsqueeze(0), R.unsqueeze(0), refit_iters)
                    used = _residual_momentum(target.unsqueeze(0), L @ R, residual, residual_clip)[0]
                    state["lowrank_left"][lowrank_index].copy_(L[0])
                    state["lowrank_right"][lowrank_index].copy_(R[0])
                    lowrank_index += 1
                    correction = bc1
                seg_denom = denom[rows]
                U[rows] = (used / correction) / seg_denom
                if m_prev is not None and not unmasked:
                    phi[rows] = sign_agreement(m_prev if mask == "async" else used, Gs)
            if full_m is not None:
                state["exp_avg"].copy_(full_m)
            u = U
            p = _canonical(p, plan)

        direction, alpha_t, mask_ratio = masked_step(u, phi, alpha, alpha_max, numel=numel, reduce_sums=reducer)
        moved = (mask_ratio > 0).to(dtype)  # an empty mask: not moved, weight decay included
        p = p * (1 - lr * weight_decay * moved) - lr * direction
        if plan.kind == "structured":
            p = p.mT if plan.transposed else p.reshape(plan.shape)
        local(param).copy_(p)
        alphas.append(alpha_t)
        ratios.append(mask_ratio)
    if not params:
        return []
    return [(list(range(len(params))), torch.stack([a.float() for a in alphas]),
             torch.stack([r.float() for r in ratios]))]


def _multi_tensor_adapm(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    plans: list[TensorPlan],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    residual: str,
    residual_clip: float,
    refit_iters: int,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
    workspace: dict[Any, Tensor] | None = None,
    tensor_threads: int | None = 1,
) -> list[StatisticsBucket]:
    """The fast path: AlphaAdam's core for full-momentum Adam tensors (its native C kernel for fp32 CPU tensors, else
    its foreach path), the native kernel or foreach ops for momentum-free Adam tensors, and a per-tensor routine
    with stacked row slices for low-rank / compact tensors."""
    buckets: list[StatisticsBucket] = []
    full = [i for i, plan in enumerate(plans) if plan.kind == "adam_full"]
    none = [i for i, plan in enumerate(plans) if plan.kind == "adam_none"]
    structured = [i for i, plan in enumerate(plans) if plan.kind == "structured"]
    if full:
        full_tensors = ([local(params[i]) for i in full], [local(grads[i]) for i in full],
                        [local(states[i]["exp_avg"]) for i in full], [local(states[i]["exp_avg_sq"]) for i in full])
        # AlphaAdam's native kernel where it applies (fp32 CPU), its foreach path elsewhere (never a compilation)
        native = _native.applies(*full_tensors)
        full_buckets = alphaadam(
            *full_tensors, [states[i]["step"] for i in full], foreach=None if native else True, lr=lr,
            beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, mask=mask, alpha=alpha, alpha_max=alpha_max, first_step=first_step,
            maximize=maximize, numels=numels, reduce_sums=reduce_sums)
        for positions, alpha_values, ratio in full_buckets:
            buckets.append(([full[i] for i in positions], alpha_values.float(), ratio.float()))
    if none:
        none_tensors = ([local(params[i]) for i in none], [local(grads[i]) for i in none],
                        [local(states[i]["exp_avg_sq"]) for i in none], [states[i]["step"] for i in none])
        momentum_free = _foreach_momentum_free
        if _native.applies(*none_tensors[:3]):
            momentum_free = _native.momentum_free_adam
        momentum_free(*none_tensors, lr=lr, beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)
        ones = torch.ones(len(none), device=params[none[0]].device)
        buckets.append((none, ones, ones.clone()))
    if structured:
        threads = _tensor_threads.resolve_threads(tensor_threads, [params[i] for i in structured])

        def step_one(k: int, share: int) -> tuple[Tensor, Tensor]:
            i = structured[k]  # each worker (share) has its own scratch buffers
            scratch = workspace if workspace is None or threads == 1 else workspace.setdefault(("share", share), {})
            return _structured_step(
                params[i], grads[i], states[i], plans[i], lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                weight_decay=weight_decay, mask=mask, alpha=alpha, alpha_max=alpha_max, first_step=first_step,
                residual=residual, residual_clip=residual_clip, refit_iters=refit_iters, maximize=maximize,
                workspace=scratch)

        results = _tensor_threads.map_tensors(step_one, len(structured),
                                              [params[i].numel() for i in structured], threads)
        buckets.append((structured, torch.stack([a.float() for a, _ in results]),
                        torch.stack([r.float() for _, r in results])))
    return buckets


def _foreach_momentum_free(params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor],
                           state_steps: list[Tensor], *, lr: float | Tensor, beta2: float, eps: float,
                           weight_decay: float, maximize: bool) -> None:
    """``p = p (1 - lr wd) - lr g / (sqrt(v / bc2) + eps)`` with ``v`` Adam's EMA of ``g^2``, per (device, dtype).

    Written as ``p (1 - lr wd) - (lr sqrt(bc2)) g / (sqrt(v) + eps sqrt(bc2))`` (the same number, up to rounding) so
    that the bias correction folds into the scalars. On the CPU the ops run over cache-sized pieces of the tensors
    (:func:`_cache_batches`; element-wise, so the result is the same), not each op over all of memory in turn."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, exp_avg_sqs, state_steps])
    for (device_params, device_grads, device_v, device_steps), _ in grouped.values():
        dtype = compute_dtype(device_params[0])
        torch._foreach_add_(device_steps, 1)
        bc2_sqrt = [math.sqrt(1 - beta2 ** _get_value(s)) for s in device_steps]
        for batch in _cache_batches([device_params, device_grads, device_v]):
            indices, (p_orig, g_orig, v_orig) = batch
            p = [t if t.dtype == dtype else t.to(dtype) for t in p_orig]
            g = [t if t.dtype == dtype else t.to(dtype) for t in g_orig]
            v = [t if t.dtype == dtype else t.to(dtype) for t in v_orig]
            scales = [bc2_sqrt[i] for i in indices]
            if maximize:
                g = torch._foreach_neg(g)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, [eps * b for b in scales])
            if weight_decay != 0:
                torch._foreach_mul_(p, 1 - lr * weight_decay)
            if isinstance(lr, Tensor):
                direction = torch._foreach_div(g, denom)
                torch._foreach_mul_(direction, scales)
                torch._foreach_mul_(direction, -lr)
                torch._foreach_add_(p, direction)
            else:
                torch._foreach_addcdiv_(p, g, denom, [-lr * b for b in scales])
            for originals, computed in ((p_orig, p), (v_orig, v)):
                pairs = [(o, c) for o, c in zip(originals, computed) if o is not c]
                if pairs:
                    torch._foreach_copy_([o for o, _ in pairs], [c for _, c in pairs])


#: elements per piece of the cache-blocked element-wise passes (CPU): a few arrays of this many floats stay in
#: the L2 / L3 cache between the passes of one piece (2^17 measured best on GPT-2-small-sized tensors)
CACHE_BLOCK_NUMEL = 1 << 17


def _cache_batches(tensor_lists: list[list[Tensor]]) -> list[tuple[list[int], list[list[Tensor]]]]:
    """Parallel lists of same-shape tensors cut into batches of about :data:`CACHE_BLOCK_NUMEL` elements: small
    tensors grouped, large contiguous ones split into 1-D pieces. Each batch is ``(tensor indices, lists)``. Off the
    CPU (where one fused kernel per op is better) one batch holds everything."""
    first = tensor_lists[0]
    if not first or first[0].device.type != "cpu":
        return [(list(range(len(first))), tensor_lists)]
    batches: list[tuple[list[int], list[list[Tensor]]]] = []
    indices: list[int] = []
    lists: list[list[Tensor]] = [[] for _ in tensor_lists]
    size = 0

    def flush() -> None:
        nonlocal indices, lists, size
        if indices:
            batches.append((indices, lists))
        indices, lists, size = [], [[] for _ in tensor_lists], 0

    for i in range(len(first)):
        tensors = [values[i] for values in tensor_lists]
        numel = tensors[0].numel()
        if numel > CACHE_BLOCK_NUMEL and all(t.is_contiguous() for t in tensors):
            flush()
            flat = [t.view(-1) for t in tensors]
            for start in range(0, numel, CACHE_BLOCK_NUMEL):
                batches.append(([i], [[t[start:start + CACHE_BLOCK_NUMEL]] for t in flat]))
            continue
        indices.append(i)
        for values, t in zip(lists, tensors):
            values.append(t)
        size += numel
        if size >= CACHE_BLOCK_NUMEL:
            flush()
    flush()
    return batches


def _canonical_blocks(plan: TensorPlan, device: torch.device) -> list[tuple[slice, slice]]:
    """``(rows, cols)`` slices tiling the canonical matrix in contiguous pieces of about
    :data:`CACHE_BLOCK_NUMEL` elements (column ranges of a transposed weight, row ranges otherwise); one block
    off the CPU."""
    rows, cols = plan.canonical_shape
    everything = slice(0, rows), slice(0, cols)
    if device.type != "cpu" or rows * cols <= CACHE_BLOCK_NUMEL:
        return [everything]
    if plan.transposed:
        width = max(1, CACHE_BLOCK_NUMEL // max(rows, 1))
        return [(slice(0, rows), slice(c, min(c + width, cols))) for c in range(0, cols, width)]
    height = max(1, CACHE_BLOCK_NUMEL // max(cols, 1))
    return [(slice(r, min(r + height, rows)), slice(0, cols)) for r in range(0, rows, height)]


def _empty_canonical(rows: int, cols: int, plan: TensorPlan, like: Tensor,
                     workspace: dict[Any, Tensor] | None = None, slot: str = "") -> Tensor:
    """An uninitialised ``(rows, cols)`` canonical matrix laid out like the parameter's canonical view (column-major
    for a transposed ``(in, out)`` weight), so that element-wise ops between it, the gradient and the parameter run
    over memory in one order (mixing the two layouts makes every element-wise pass several times slower).

    With a ``workspace`` (CPU only) the matrix is a view of a buffer kept there under ``slot`` and reused by every
    tensor and step: a fresh multi-MiB allocation is returned to the OS when freed, and its first touch every step
    costs page faults (GPU allocators cache blocks anyway)."""
    if workspace is not None and like.device.type == "cpu":
        key = (slot, like.dtype, like.device)
        flat = workspace.get(key)
        if flat is None or flat.numel() < rows * cols:
            flat = workspace[key] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
        if plan.transposed:
            return flat[:rows * cols].view(cols, rows).mT
        return flat[:rows * cols].view(rows, cols)
    if plan.transposed:
        return torch.empty(cols, rows, dtype=like.dtype, device=like.device).mT
    return torch.empty(rows, cols, dtype=like.dtype, device=like.device)


def _in_layout(state: dict[str, Any], key: str, plan: TensorPlan) -> Tensor:
    """``state[key]`` (a 2-D full-size state matrix), re-laid out once in place of the stored one if it is not in
    the parameter's canonical layout (state saved by an older version, or moved by hand); values unchanged."""
    value = state[key]
    if plan.transposed and value.dim() == 2 and value.shape[0] > 1 and value.stride(0) != 1:
        relaid = torch.empty(value.shape[1], value.shape[0], dtype=value.dtype, device=value.device).mT
        relaid.copy_(value)
        state[key] = value = relaid
    return value


def _product_into(left: Tensor, right: Tensor, out: Tensor) -> Tensor:
    """``out = left @ right`` written into ``out`` (any BLAS-compatible layout, e.g. a column-major view)."""
    return torch.mm(left, right, out=out)


def _compact_mean_squares(G: Tensor, plan: TensorPlan) -> Tensor:
    """Adam-mini's ``mean(G_b^2)`` for every block ``b`` of ``rows_per_v`` canonical rows (segment by segment, in
    order), over cache-sized pieces of ``G`` (no full-size ``G^2``): whole heads at a time, or column blocks of a
    transposed weight whose partial sums are added up."""
    cols = plan.canonical_shape[1]
    means = []
    for seg in plan.segments:
        per = seg.rows_per_v
        count = seg.rows // per
        Gs = G[seg.start:seg.stop]
        if plan.transposed:  # a view in this layout: the row split keeps each head's rows together
            sums = None
            for _, cs in _canonical_blocks(plan, G.device):
                part = Gs[:, cs].square().reshape(count, per, -1).sum(dim=(1, 2))
                sums = part if sums is None else sums.add_(part)
            sums = sums if sums is not None else Gs.new_zeros(count)
        else:
            heads = max(1, CACHE_BLOCK_NUMEL // max(per * cols, 1)) if G.device.type == "cpu" else max(count, 1)
            sums = torch.cat([Gs[h * per:min(h + heads, count) * per].square().reshape(-1, per * cols).sum(dim=1)
                              for h in range(0, count, heads)]) if count else Gs.new_zeros(0)
        means.append(sums.div_(per * cols))
    return torch.cat(means)


def _structured_step(param: Tensor, grad: Tensor, state: dict[str, Any], plan: TensorPlan, *, lr: float | Tensor,
                     beta1: float, beta2: float, eps: float, weight_decay: float, mask: str, alpha: str,
                     alpha_max: float | None, first_step: str, residual: str, residual_clip: float,
                     refit_iters: int, maximize: bool, workspace: dict[Any, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor]:
    """One low-rank / compact tensor, the reference's math with fewer passes over memory.

    Everything full-size is kept in the parameter's canonical layout (see :func:`_empty_canonical`); a low-rank
    block's ``m~ = beta1 L R + (1 - beta1) G`` is one ``addmm`` into its buffer; the bias corrections are folded
    into scalars (``u = (s / c) m / (sqrt(V) + eps s)`` with ``s = sqrt(bc2)`` for Adam's V, or ``s = 1`` with the
    compact V's per-row denominator). The element-wise tail runs block by block (:func:`_canonical_blocks`): V's
    update, the denominator and, without a mask and with ``alpha="none"`` (AdaPM's default), the step as one
    ``addcdiv_`` per row segment straight from each segment's momentum (no ``u``, no ``phi``). Otherwise pass 1
    writes ``phi * u`` and the three sums of ``_masking.masked_step`` block by block, alpha comes from
    ``alpha_from_sums``, and pass 2 applies ``W (1 - lr wd moved) - (lr alpha) (phi * u)``.
    """
    dtype = compute_dtype(param)
    G = _canonical(grad if grad.dtype == dtype else grad.to(dtype), plan)
    if maximize:
        G = torch.neg(G)
    step_t = state["step"]
    step_t += 1
    step = _get_value(step_t)
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    unmasked = mask == "none" or (first_step == "full" and step == 1)
    simple = unmasked and alpha == "none" and not isinstance(lr, Tensor)
    segments = plan.segments
    rows, cols = plan.canonical_shape

    # second moment -> denominator (rows x cols, or rows x 1) and the scale it leaves out
    elementwise_v = all(s.rows_per_v == 0 for s in segments)
    V: Tensor | None = None
    denom: Tensor | None = None
    if elementwise_v:
        stored_v = _in_layout(state, "exp_avg_sq", plan)
        V = stored_v if stored_v.dtype == dtype else stored_v.to(dtype)
        scale = bc2_sqrt  # V is updated block by block with the step below
    else:
        v = state["exp_avg_sq"] if state["exp_avg_sq"].dtype == dtype else state["exp_avg_sq"].to(dtype)
        v.mul_(beta2).add_(_compact_mean_squares(G, plan), alpha=1 - beta2)
        repeats = [torch.full((seg.rows // seg.rows_per_v,), seg.rows_per_v, dtype=torch.long) for seg in segments]
        if v is not state["exp_avg_sq"]:
            state["exp_avg_sq"].copy_(v)
        row_denom = v.sqrt().div_(bc2_sqrt).add_(eps)
        denom = row_denom.repeat_interleave(torch.cat(repeats).to(row_denom.device)).unsqueeze(1)
        scale = 1.0

    # momentum of each row segment: (segment, momentum used, first-moment correction, mask or None)
    parts: list[tuple[Any, Tensor, float, Tensor | None]] = []
    lowrank = plan.lowrank_segments()
    if lowrank:
        seg_rows = lowrank[0].rows
        buffer = _empty_canonical(len(lowrank) * seg_rows, cols, plan, G, workspace, "target")
        lefts = state["lowrank_left"] if state["lowrank_left"].dtype == dtype else state["lowrank_left"].to(dtype)
        rights = state["lowrank_right"] if state["lowrank_right"].dtype == dtype else state["lowrank_right"].to(dtype)
        for k, seg in enumerate(lowrank):
            Gs = G[seg.start:seg.stop]
            target = buffer[k * seg_rows:(k + 1) * seg_rows]
            phi_k = None
            if not unmasked and mask == "async":
                m_prev = _product_into(lefts[k], rights[k], target)
                phi_k = sign_agreement(m_prev, Gs)
                target.mul_(beta1).add_(Gs, alpha=1 - beta1)
            else:  # m~ = beta1 L R + (1 - beta1) G in one pass
                torch.addmm(Gs, lefts[k], rights[k], beta=1 - beta1, alpha=beta1, out=target)
            L, R = _refit(target, lefts[k], rights[k], refit_iters)
            state["lowrank_left"][k].copy_(L)
            state["lowrank_right"][k].copy_(R)
            if residual == "none":
                _product_into(L, R, target)
            elif residual == "clip":
                approx = _product_into(L, R, _empty_canonical(seg_rows, cols, plan, G, workspace, "approx"))
                rest = target.sub_(approx)
                rest_norm = torch.linalg.matrix_norm(rest)
                limit = residual_clip * torch.linalg.matrix_norm(approx)
                clip = torch.where(rest_norm > limit, limit / rest_norm.clamp_min(torch.finfo(rest.dtype).tiny),
                                   torch.ones_like(rest_norm))
                rest.mul_(clip).add_(approx)
            if not unmasked and mask == "sync":
                phi_k = sign_agreement(target, Gs)
            parts.append((seg, target, bc1, phi_k))
    full_segments = plan.full_segments()
    if full_segments:
        stored = _in_layout(state, "exp_avg", plan)
        M = stored if stored.dtype == dtype else stored.to(dtype)
        offset = 0
        for seg in full_segments:
            Ms, Gs = M[offset:offset + seg.rows], G[seg.start:seg.stop]
            phi_k = sign_agreement(Ms, Gs) if not unmasked and mask == "async" else None
            Ms.lerp_(Gs, 1 - beta1)
            if not unmasked and mask == "sync":
                phi_k = sign_agreement(Ms, Gs)
            parts.append((seg, Ms, bc1, phi_k))
            offset += seg.rows
        if M is not stored:
            stored.copy_(M)
    for seg in segments:
        if seg.momentum == "none":  # no momentum, no first-moment correction, never masked
            parts.append((seg, G[seg.start:seg.stop], 1.0, None))

    in_place = param.dtype == dtype and (plan.transposed or param.is_contiguous())
    P = (param.mT if plan.transposed else param.view(plan.canonical_shape)) if in_place else \
        _canonical(param.to(dtype), plan)
    blocks = _canonical_blocks(plan, G.device)

    def block_denominator(rs: slice, cs: slice) -> Tensor:
        """Update V on one block, return its denominator (``sqrt(bc2)``-scaled for Adam's V)."""
        if V is None:
            return denom[rs]
        V_b = V[rs, cs]
        V_b.mul_(beta2).addcmul_(G[rs, cs], G[rs, cs], value=1 - beta2)
        return V_b.sqrt().add_(eps * bc2_sqrt)  # = sqrt(bc2) * (sqrt(V / bc2) + eps)

    def pieces(rs: slice):
        """The parts (segments) meeting the rows ``rs``: (part, rows in the part, rows in the block)."""
        for part in parts:
            seg = part[0]
            lo, hi = max(seg.start, rs.start), min(seg.stop, rs.stop)
            if lo < hi:
                yield part, slice(lo - seg.start, hi - seg.start), slice(lo - rs.start, hi - rs.start)

    if simple:  # phi = 1, alpha = 1: W = W (1 - lr wd) - lr u
        # fp32 on the CPU: one native pass over the row segments; else torch ops over cache-sized blocks
        decay = 1 - lr * weight_decay if weight_decay != 0 else 1.0
        if V is not None:  # Adam's v, updated in the same pass
            native = _native.applies([P, G, V], [part[1] for part in parts]) and _native.adapm_tail(
                [(P[seg.start:seg.stop], G[seg.start:seg.stop], V[seg.start:seg.stop], used, -lr * scale / correction)
                 for seg, used, correction, _ in parts], decay=decay, eps_scaled=eps * bc2_sqrt, beta2=beta2)
        else:  # the compact v's per-row denominators, computed above
            native = _native.applies([P, denom], [part[1] for part in parts]) and _native.adapm_tail(
                [(P[seg.start:seg.stop], None, None, used, -lr * scale / correction)
                 for seg, used, correction, _ in parts], decay=decay, eps_scaled=0.0, beta2=beta2,
                denominators=[denom[seg.start:seg.stop] for seg, _, _, _ in parts])
        for rs, cs in ([] if native else blocks):
            denom_b = block_denominator(rs, cs)
            P_b = P[rs, cs]
            if weight_decay != 0:
                P_b.mul_(1 - lr * weight_decay)
            for (_, used, correction, _), in_part, in_block in pieces(rs):
                P_b[in_block].addcdiv_(used[in_part, cs], denom_b[in_block], value=-lr * scale / correction)
        count = torch.tensor(float(rows * cols), dtype=dtype, device=G.device)
        alpha_t, mask_ratio = torch.ones((), dtype=dtype, device=G.device), count / count
    else:
        # pass 1 (per block): V, u = phi * u into U, and the sums (sum u^2, sum (phi u)^2, sum phi) of
        # ``_masking.masked_step``; then alpha; pass 2: W = W (1 - lr wd moved) - (lr alpha) (phi * u)
        U = _empty_canonical(rows, cols, plan, G, workspace, "u")
        want_norms = alpha == "norm"
        sq_u: list[Tensor] = []
        sq_masked: list[Tensor] = []
        counts: list[Tensor] = []
        unmasked_count = 0
        for rs, cs in blocks:
            denom_b = block_denominator(rs, cs)
            U_b = U[rs, cs]
            for (_, used, correction, phi_k), in_part, in_block in pieces(rs):
                u = U_b[in_block]
                torch.mul(used[in_part, cs], scale / correction, out=u)
                u.div_(denom_b[in_block])
                square = u.square().sum() if want_norms else None
                if phi_k is None:  # phi = 1 here
                    unmasked_count += u.numel()
                    if square is not None:
                        sq_u.append(square)
                        sq_masked.append(square)
                    continue
                phi_b = phi_k[in_part, cs]
                counts.append(phi_b.sum())
                u.mul_(phi_b)
                if square is not None:
                    sq_u.append(square)
                    sq_masked.append(u.square().sum())
        zero = torch.zeros((), dtype=dtype, device=G.device)
        count = torch.stack(counts).sum() + unmasked_count if counts else zero + unmasked_count
        sums = torch.stack([torch.stack(sq_u).sum() if sq_u else zero, torch.stack(sq_masked).sum() if sq_masked
                            else zero, count]).unsqueeze(0)
        whole = torch.tensor([rows * cols], dtype=sums.dtype, device=sums.device)
        alpha_t = alpha_from_sums(sums, whole, alpha, alpha_max)[0]
        mask_ratio = sums[0, 2] / whole[0]
        moved = (mask_ratio > 0).to(dtype)
        decay = 1 - lr * weight_decay * moved
        step_scale = (-lr * alpha_t).to(dtype)
        for rs, cs in blocks:
            P_b = P[rs, cs]
            P_b.mul_(decay).addcmul_(U[rs, cs], step_scale)
        alpha_t = reported_alpha(sums, alpha_t.reshape(1), alpha)[0]
    if V is not None and V is not stored_v:
        stored_v.copy_(V)
    if not in_place:
        param.copy_(P.mT if plan.transposed else P.reshape(plan.shape))
    return alpha_t, mask_ratio


from ._adapm_memory import compare_with_adamw, optimizer_state_memory  # noqa: E402,F401 (the public names)
