"""AdaDiag / AdaDiag++: AdamW in a basis that makes the gradient (nearly) diagonal.

Nguyen, Liu, Chen, Liu, "Improving Adaptive Moment Optimization via Preconditioner Diagonalization"
(arXiv 2502.07488, AISTATS 2025). No official code is public; the rule below follows
``shared/docs/algorithms.md`` §2 and §6, and every point the paper leaves open is an option.

Per 2-D weight ``W`` (m x n) with gradient ``G`` at step ``t`` (``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t``)::

    if (t - 1) % update_freq == 0:                # refresh at t = 1, 1 + T, 1 + 2T, ...: each basis serves T steps
        U, S, V^T = svd(G)                        # in fp32 (fp64 for fp64 weights), full rank
        P = U, Q = V                              # two_sided (AdaDiag++); one-sided keeps one of them (below)
        align_signs: flip each new column to agree with the previous basis (the first with the identity)
        reproject:   M <- R_P M R_Q^T,  V <- (R_P o R_P) V (R_Q o R_Q)^T   with R_P = P_new^T P_old, ...
    G~ = P^T G Q                                  # rotate (a missing side is the identity)
    at a refresh, the entries of G~ that are exactly zero in exact arithmetic (off-diagonal when two-sided;
    rows / columns past min(m, n) when one-sided on the larger side) are set to 0: Adam's normalisation would
    turn their rounding noise into O(1) steps (e.g. +-lr in every off-diagonal direction at step 1)
    moment_space="rotated":   M = beta1 M + (1 - beta1) G~          (M lives in the rotated basis; M~ = M)
    moment_space="original":  M = beta1 M + (1 - beta1) G           (SOAP-style: M in the original space)
                              M~ = beta1 P^T M_{t-1} Q + (1 - beta1) G~   (= P^T M_t Q in exact arithmetic)
    second_moment="adam":      V = beta2 V + (1 - beta2) G~^2
    second_moment="adafactor": r = beta2 r + (1 - beta2) rowmean(G~^2), c = ... colmean,  V = r c^T / mean(r)
    N = (M~ / bc1) / (sqrt(V / bc2) + eps)        # torch-style epsilon (after bias correction)
    mask / alpha (optional, ``_masking.py``) on N, or on P N Q^T when the momentum lives in the original space
    W = W (1 - lr wd) - lr P N Q^T                # decoupled weight decay first, as AlphaAdam

Which tensors are rotated, and on which side:

- ``rotate="auto"`` (default): every 2-D tensor except embeddings. An embedding is recognised by its name (a
  ``param_names`` entry matching :data:`EMBEDDING_PATTERN`, e.g. ``model.embed_tokens.weight``,
  ``transformer.wte.weight``); pass ``(name, parameter)`` pairs to give names. Without names the decision is
  from the shape alone, so an unnamed ``nn.Embedding`` weight is rotated like any matrix -- give names, or
  put embeddings in a group with ``rotate=False``. ``rotate=True``: every 2-D tensor; ``rotate=False``: none
  (the group is AdamW); a string: a regex, rotating the 2-D tensors whose name it matches (``re.search``).
  Tensors of any other rank (biases, norms, conv kernels) always get AdamW.
- One-sided (``two_sided=False``, AdaDiag) rotates along the smaller dimension by default (``side="auto"``:
  ``P = U`` if m <= n, else ``Q = V``), so the basis is min(m, n)^2 and an economy SVD suffices;
  ``side="left"`` / ``"right"`` force one. Two-sided (AdaDiag++) keeps both ``P`` (m x m) and ``Q`` (n x n).
- ``max_dim`` guards against huge bases: a side longer than ``max_dim`` is not rotated (a 50k-vocab x 768
  output layer keeps only its 768-side basis under AdaDiag++); if no side is left the tensor gets AdamW.

Untouched tensors follow AlphaAdam's functional core (``alphaadam.py``) with the same ``mask`` / ``alpha`` options,
i.e. AdamW when ``mask="none"``. The mask is the sign agreement of the momentum and the gradient *in the space where
the momentum lives* (rotated: ``M~_{t-1}`` vs ``G~``; original: ``M_{t-1}`` vs ``G``), and it is applied to the
direction in that same space (``N``, or ``P N Q^T``); since the rotation is orthogonal, alpha="norm" restores the
norm of the unmasked step either way. Without a mask, and with a mask on rotated moments, AdaDiag++ is rotation
equivariant (optimizing ``f(A W B)`` for orthogonal A, B gives rotated iterates); a mask taken in the original
space is not.

Two code paths with one signature, :func:`adadiag`: ``_single_tensor_adadiag`` is the plain per-tensor reference
(the test oracle); ``_multi_tensor_adadiag`` stacks same-shaped matrices (one batched ``torch.linalg.svd``, batched
matmuls and element-wise ops per bucket) and runs the AdamW part with ``torch._foreach_*``; it is the default.

Distributed: the SVD needs the whole matrix. A rotated parameter that is a DTensor sharded by FSDP2, or a flat
ZeRO partition of a 2-D weight, is refused with an error naming the way out (``rotate=False`` for those groups,
or a data-parallel setup that keeps whole matrices); a flat partition is never rotated. Tensors that are not
rotated are handled as AlphaAdam handles them (per-tensor sums reduced over the shards).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype, _get_value

from ._base import StatisticsMixin, check_adam_hyperparameters, check_dense_grad, check_param_groups
from ._masking import alpha_from_sums, masked_step, reported_alpha, sign_agreement, validate_mask_options
from ._sharding import SumsReducer, dtensor_sums_reducer, is_dtensor, local, partition_sums_reducer
from ._state import compute_dtype, resolve_state_dtype, state_dtype_for
from ._rotation import _aligned, _exact_zeros, _factored_second_moment, _rotate, _svd_bases, _unrotate
from ._state_layout import adadiag_expected_state
from ._validation import describe_mismatch
from .alphaadam import alphaadam

__all__ = ["AdaDiag", "adadiag", "EMBEDDING_PATTERN"]

#: ``rotate="auto"`` leaves tensors whose name matches this (``re.search``) to AdamW: token / position
#: embeddings of Llama, GPT-2, BERT/RoBERTa, Qwen, T5 (``shared``) naming.
EMBEDDING_PATTERN = r"embed|(^|\.)(wte|wpe|shared)(\.|$)"

SIDES = ("auto", "left", "right")
MOMENT_SPACES = ("rotated", "original")
SECOND_MOMENTS = ("adam", "adafactor")

StatisticsBucket = tuple[list[int], Tensor, Tensor]


class AdaDiag(StatisticsMixin, Optimizer):
    r"""AdaDiag (one-sided) and AdaDiag++ (``two_sided=True``): Adam in an SVD-rotated basis.

    Args:
        params: parameters, param groups, or ``(name, parameter)`` pairs. Names label statistics and drive
            ``rotate`` (embeddings are recognised by name). Any option below can be overridden per group.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled weight decay, applied first; epsilon
            after bias correction).
        update_freq: ``T``, steps between basis refreshes (int >= 1). A tensor's basis is recomputed from its
            current gradient at its steps 1, 1 + T, 1 + 2T, ... The paper's value was not recovered (GaLore
            uses 200, SOAP 10); the default 10 is SOAP's (see ``benchmarks/adadiag.py`` for the sweep).
        two_sided: ``False``: AdaDiag (one basis); ``True``: AdaDiag++ (left and right bases).
        side: one-sided only: ``"auto"`` (default, the smaller dimension), ``"left"`` or ``"right"``.
        moment_space: ``"rotated"`` (default; the first moment lives in the rotated basis, as the paper's
            description) or ``"original"`` (SOAP-style: kept in the original space and rotated every step,
            two extra matmuls). The second moment always lives in the rotated basis.
        second_moment: ``"adam"`` (default, dense) or ``"adafactor"`` (row / column EMAs of the rotated squared
            gradient, ``V = r c^T / mean(r)``; m + n numbers instead of m n).
        reproject: at a refresh, carry the moments into the new basis (``M`` exactly; ``V`` through the squared
            rotation, which is exact for the diagonal of a covariance). Default ``False``: the moments are reused
            as they are (GaLore-like), as the paper's description reads. Costs only at refresh steps.
        align_signs: default ``True``: at a refresh, flip each new singular vector whose overlap with the
            corresponding old basis vector is negative (the first basis is aligned with the identity). An SVD fixes
            singular vectors only up to sign, so without this, moments reused across a refresh may see some of
            their rows/columns negated at random; with it the run is also independent of the LAPACK / cuSOLVER
            sign convention. No effect on the math within one basis period.
        rotate: ``"auto"`` (default), ``True``, ``False`` or a regex over parameter names (see the module doc).
        max_dim: a side longer than this is not rotated (default 8192; ``None``: no limit).
        mask, alpha, alpha_max, first_step: the AlphaAdam mask / alpha options (``_masking.py``); default
            ``mask="none", alpha="none"``: no mask.
        state_dtype: dtype of the moments (``None``: fp32 for bf16/fp16 parameters, else the parameter's dtype).
            Bases are always kept in the compute dtype (fp32, or fp64 for fp64 parameters).
        foreach: ``True`` for the batched path, ``False`` for the per-tensor reference; ``None`` (default):
            batched.
        maximize: maximize the objective.
        partition_group: process group for flat-partition groups (``whole_numel``) of non-rotated tensors.
        adopt_changed_settings: on ``load_state_dict``, continue with changed settings instead of raising (as
            AlphaAdam; ``_resume.py``). :attr:`LAYOUT_OPTIONS`, which shape the state, can never change.

    After each ``step()`` per-tensor alpha and mask ratio are kept as tensors (both 1 without a mask);
    :meth:`statistics` reads them.
    """

    LAYOUT_OPTIONS = ("two_sided", "side", "moment_space", "second_moment", "rotate", "max_dim", "state_dtype")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        update_freq: int = 10,
        two_sided: bool = False,
        side: str = "auto",
        moment_space: str = "rotated",
        second_moment: str = "adam",
        reproject: bool = False,
        align_signs: bool = True,
        rotate: bool | str = "auto",
        max_dim: int | None = 8192,
        mask: str = "none",
        alpha: str = "none",
        alpha_max: float | None = None,
        first_step: str = "full",
        state_dtype: torch.dtype | str | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
        partition_group: Any = None,
        adopt_changed_settings: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, update_freq=update_freq,
                        two_sided=two_sided, side=side, moment_space=moment_space, second_moment=second_moment,
                        reproject=reproject, align_signs=align_signs, rotate=rotate, max_dim=max_dim, mask=mask,
                        alpha=alpha, alpha_max=alpha_max, first_step=first_step,
                        state_dtype=_dtype_name(state_dtype), foreach=foreach, maximize=maximize)
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, (name, tensor) pairs or dicts, got a Tensor")
        params = list(params)
        if len(params) == 0:
            raise ValueError("AdaDiag got an empty parameter list: pass at least one parameter")
        self._validate_group(defaults)
        if not isinstance(adopt_changed_settings, bool):
            raise ValueError(f"adopt_changed_settings must be True or False, got {adopt_changed_settings!r}")
        self.adopt_changed_settings = adopt_changed_settings
        self._layouts: dict[int, list[tuple[tuple[int, ...], tuple[bool, bool]]]] = {}
        super().__init__(params, defaults)
        self.partition_group = partition_group
        check_param_groups(self)
        self._init_statistics()

    # ------------------------------------------------------------------------------------------------ groups

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        check_adam_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        update_freq = group["update_freq"]
        if isinstance(update_freq, bool) or not isinstance(update_freq, int):
            raise TypeError(f"update_freq must be an integer >= 1 (steps between basis refreshes), "
                            f"got {update_freq!r}")
        if update_freq < 1:
            raise ValueError(f"update_freq must be an integer >= 1 (steps between basis refreshes), "
                             f"got {update_freq!r}")
        for key in ("two_sided", "reproject", "align_signs", "maximize"):
            if not isinstance(group[key], bool):
                raise TypeError(f"{key} must be a bool, got {group[key]!r}")
        for key, allowed in (("side", SIDES), ("moment_space", MOMENT_SPACES), ("second_moment", SECOND_MOMENTS)):
            if group[key] not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {group[key]!r}")
        rotate = group["rotate"]
        if isinstance(rotate, str):
            if rotate != "auto":
                try:
                    re.compile(rotate)
                except re.error as error:
                    raise ValueError(f"rotate={rotate!r} is not a valid regular expression: {error}") from None
        elif not isinstance(rotate, bool):
            raise TypeError(f"rotate must be 'auto', True, False or a regex over parameter names, got {rotate!r}")
        max_dim = group["max_dim"]
        if max_dim is not None and (isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 1):
            raise ValueError(f"max_dim must be None or an integer >= 1, got {max_dim!r}")
        validate_mask_options(group["mask"], group["alpha"], group["alpha_max"], group["first_step"])
        resolve_state_dtype(group["state_dtype"])
        if group["foreach"] not in (None, True, False):
            raise TypeError(f"foreach must be True, False or None, got {group['foreach']!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "state_dtype" in param_group:
            param_group["state_dtype"] = _dtype_name(param_group["state_dtype"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        # the shapes (DeepSpeed ZeRO-3's ds_shape where present) and rotation sides as built, to recognise a
        # rotated tensor that a ZeRO flat partition replaced later
        self._layouts[id(group)] = [(_whole_shape(p), self.rotation_sides(group, i, _whole_shape(p)))
                                    for i, p in enumerate(group["params"])]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not hasattr(self, "_statistics"):
            self._init_statistics()
        if not hasattr(self, "partition_group"):
            self.partition_group = None
        if not hasattr(self, "_layouts"):
            self._layouts = {}

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Any], str]:
        left, right = self.rotation_sides({**options, "param_names": self.param_groups[group_index].get(
            "param_names")}, position, tuple(param.shape))
        return adadiag_expected_state(left, right, options["second_moment"] == "adafactor", local(param))

    @staticmethod
    def rotation_sides(group: dict[str, Any], position: int, shape: tuple[int, ...]) -> tuple[bool, bool]:
        """``(left, right)``: which bases the tensor at ``position`` of ``group`` (of this shape) gets."""
        if len(shape) != 2:
            return False, False
        rotate = group["rotate"]
        names = group.get("param_names")
        name = str(names[position]) if names is not None and position < len(names) else None
        if rotate is False:
            return False, False
        if rotate == "auto":
            if name is not None and re.search(EMBEDDING_PATTERN, name):
                return False, False
        elif isinstance(rotate, str):
            if name is None:
                raise ValueError(f"rotate={rotate!r} selects tensors by name, but this param group has no names: "
                                 "pass (name, parameter) pairs (e.g. model.named_parameters()) or a 'param_names' "
                                 "list in the group")
            if not re.search(rotate, name):
                return False, False
        m, n = shape
        limit = group["max_dim"] if group["max_dim"] is not None else math.inf
        if group["two_sided"]:
            return m <= limit, n <= limit
        side = group["side"]
        if side == "auto":
            side = "left" if m <= n else "right"
        return (side == "left" and m <= limit), (side == "right" and n <= limit)

    # ------------------------------------------------------------------------------------------------ state

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Any], ...]:
        lists: tuple[list[Any], ...] = tuple([] for _ in range(10))
        (params, grads, exp_avgs, exp_avg_sqs, rows, cols, lefts, rights, steps, positions) = lists
        state_dtype = resolve_state_dtype(group["state_dtype"])
        factored = group["second_moment"] == "adafactor"
        for position, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            check_dense_grad(self, param.grad)
            left, right = self.rotation_sides(group, position, tuple(param.shape))
            if (left or right) and is_dtensor(param) and not _whole_on_every_rank(param):
                raise NotImplementedError(
                    f"AdaDiag needs the whole matrix for the SVD, but parameter {self._name(group, position)} "
                    f"(shape {tuple(param.shape)}) is sharded ({param.placements}). Under FSDP2 give such "
                    "tensors rotate=False (AdamW) in their param group, or train with DDP / replicated weights")
            state = self.state[param]
            rotated = left or right
            if len(state) == 0:  # lazy: parameters may have been re-wrapped (FSDP2, DeepSpeed) after __init__
                tensor = local(param)
                dtype = state_dtype_for(param, state_dtype)
                basis_dtype = compute_dtype(param)
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(tensor, dtype=dtype, memory_format=torch.preserve_format)
                if rotated and factored:
                    state["exp_avg_sq_row"] = torch.zeros(tensor.shape[0], dtype=dtype, device=tensor.device)
                    state["exp_avg_sq_col"] = torch.zeros(tensor.shape[1], dtype=dtype, device=tensor.device)
                else:
                    state["exp_avg_sq"] = torch.zeros_like(tensor, dtype=dtype, memory_format=torch.preserve_format)
                if left:
                    state["basis_left"] = torch.eye(tensor.shape[0], dtype=basis_dtype, device=tensor.device)
                if right:
                    state["basis_right"] = torch.eye(tensor.shape[1], dtype=basis_dtype, device=tensor.device)
            expected = {"basis_left": left, "basis_right": right, "exp_avg_sq_row": rotated and factored,
                        "exp_avg_sq": not (rotated and factored)}
            wrong = [key for key, wanted in expected.items() if (key in state) != wanted]
            for key, spec in adadiag_expected_state(left, right, factored, local(param))[0].items():
                tensor = state.get(key)  # before any write: every state tensor of the shape the step assumes
                if tensor is not None and (tensor.shape != spec.shape or tensor.device != param.device):
                    raise ValueError(describe_mismatch(self._name(group, position), key, tensor, spec.shape,
                                                       param.device))
            if wrong:
                raise ValueError(
                    f"the optimizer state of {self._name(group, position)} (keys {sorted(state)}) does not match "
                    f"the group's options (two_sided={group['two_sided']}, side={group['side']!r}, "
                    f"second_moment={group['second_moment']!r}, rotate={group['rotate']!r}): these options cannot "
                    "change once a tensor has state")
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state.get("exp_avg_sq"))
            rows.append(state.get("exp_avg_sq_row"))
            cols.append(state.get("exp_avg_sq_col"))
            lefts.append(state.get("basis_left"))
            rights.append(state.get("basis_right"))
            steps.append(state["step"])
            positions.append(position)
        return lists

    def _name(self, group: dict[str, Any], position: int) -> str:
        index = next((i for i, g in enumerate(self.param_groups) if g is group), 0)
        return self.tensor_name(group, index, position)

    def _check_layout(self, group: dict[str, Any]) -> None:
        """Refuse a ZeRO flat partition of a tensor that would be rotated (before any state is built for it)."""
        layout = self._layouts.get(id(group))
        if layout is None:
            return
        current = [_whole_shape(p) for p in group["params"]]
        built = [shape for shape, _ in layout]
        rotated = [shape for shape, (left, right) in layout if left or right]
        if rotated and (current != built or "whole_numel" in group):
            raise RuntimeError(
                f"a param group built with tensors of shapes {built} (rotated: {rotated}) now holds tensors of "
                f"shapes {current}{' and a whole_numel entry' if 'whole_numel' in group else ''}: a flat ZeRO "
                "partition. AdaDiag never rotates a flat partition (the SVD needs whole matrices); give these "
                "tensors rotate=False (AdamW) in their param group, or use ZeRO stage 0 / DDP")
        if (current != built and "whole_numel" not in group and len(current) == 1 and len(current[0]) == 1
                and len(built) > 1 and not any(is_dtensor(p) for p in group["params"])):
            raise RuntimeError(
                f"a param group that held tensors of shapes {built} now holds one flat tensor of shape "
                f"{current[0]}: a flat partition (DeepSpeed ZeRO) mixes tensors, so per-tensor alpha and mask "
                "ratios would be wrong. Give DeepSpeed one param group per tensor with a 'whole_numel' entry, "
                "as the Trainer plugin does")

    def _sharding(self, group: dict[str, Any], params: list[Tensor]) -> tuple[list[int] | None, SumsReducer | None]:
        """How the per-tensor sums of non-rotated tensors are completed across processes (as AlphaAdam)."""
        if "whole_numel" in group:
            if len(group["params"]) > 1:
                raise ValueError(f"a param group with 'whole_numel' must hold exactly one tensor (a flat partition "
                                 f"of one parameter), got {len(group['params'])}")
            reduce_sums = partition_sums_reducer(int(group["whole_numel"]), self.partition_group)
            if group["params"] and not params:  # no gradient here: still take part in the reduction
                reduce_sums(torch.zeros(1, 3, device=group["params"][0].device), [0])
            return [int(group["whole_numel"])] * len(params), reduce_sums
        return dtensor_sums_reducer(params)

    # ------------------------------------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step (see the module docstring for the update rule)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            validate_mask_options(group["mask"], group["alpha"], group["alpha_max"], group["first_step"])
            self._check_layout(group)
            (params, grads, exp_avgs, exp_avg_sqs, rows, cols, lefts, rights, steps,
             positions) = self._init_group(group)
            numels, reduce_sums = self._sharding(group, params)
            if not params:
                continue
            self._begin_statistics(group)
            beta1, beta2 = group["betas"]
            buckets = adadiag(
                [local(t) for t in params], [local(t) for t in grads], [local(t) for t in exp_avgs],
                [None if t is None else local(t) for t in exp_avg_sqs], rows, cols, lefts, rights, steps,
                foreach=group["foreach"], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], update_freq=group["update_freq"],
                moment_space=group["moment_space"], reproject=group["reproject"], align_signs=group["align_signs"],
                mask=group["mask"], alpha=group["alpha"], alpha_max=group["alpha_max"],
                first_step=group["first_step"], maximize=group["maximize"], numels=numels, reduce_sums=reduce_sums,
            )
            for bucket_positions, alpha_values, mask_ratio in buckets:
                self._record_statistics(group, [positions[i] for i in bucket_positions], alpha_values, mask_ratio)
        return loss


def _dtype_name(state_dtype: torch.dtype | str | None) -> str | None:
    resolved = resolve_state_dtype(state_dtype)
    return None if resolved is None else str(resolved).removeprefix("torch.")


def _whole_shape(param: Tensor) -> tuple[int, ...]:
    """The parameter's logical shape: DeepSpeed ZeRO-3 keeps it as ``ds_shape`` on a placeholder tensor."""
    shape = getattr(param, "ds_shape", None)
    return tuple(shape) if shape is not None else tuple(param.shape)


def _whole_on_every_rank(param: Tensor) -> bool:
    """A DTensor whose local tensor is the whole matrix (only Replicate placements)."""
    return all(placement.is_replicate() for placement in param.placements)


def adadiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    exp_avg_sq_rows: list[Tensor | None],
    exp_avg_sq_cols: list[Tensor | None],
    bases_left: list[Tensor | None],
    bases_right: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    foreach: bool | None = None,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    update_freq: int,
    moment_space: str,
    reproject: bool,
    align_signs: bool,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
) -> list[StatisticsBucket]:
    """Functional AdaDiag step over lists of tensors (updates ``params`` and the states in place).

    Per tensor, the state present decides the rule: a tensor with a ``bases_left`` and/or ``bases_right`` entry
    is rotated (those are its bases; they are overwritten at refresh steps), the others get AlphaAdam's rule
    (AdamW without a mask) through :func:`alphaadam`. A rotated tensor with ``exp_avg_sqs[i] = None`` has a
    factored second moment (``exp_avg_sq_rows[i]``, ``exp_avg_sq_cols[i]``). ``numels`` / ``reduce_sums`` are for
    sharded non-rotated tensors, as in :func:`alphaadam`; rotated tensors must be whole.
    Returns ``(positions, alpha, mask_ratio)`` statistics buckets, ``positions`` indexing the input lists.
    """
    if foreach is None:
        foreach = True
    plain = [i for i in range(len(params)) if bases_left[i] is None and bases_right[i] is None]
    rotated = [i for i in range(len(params)) if bases_left[i] is not None or bases_right[i] is not None]
    buckets: list[StatisticsBucket] = []
    if plain:
        if any(exp_avg_sqs[i] is None for i in plain):
            raise ValueError("a tensor without a basis needs a dense exp_avg_sq (factored moments are for rotated "
                             "tensors only)")
        sub_reduce = None
        if reduce_sums is not None:
            sub_reduce = lambda sums, indices: reduce_sums(sums, [plain[i] for i in indices])  # noqa: E731
        plain_buckets = alphaadam(
            [params[i] for i in plain], [grads[i] for i in plain], [exp_avgs[i] for i in plain],
            [exp_avg_sqs[i] for i in plain], [state_steps[i] for i in plain], foreach=foreach, lr=lr,
            beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, mask=mask, alpha=alpha,
            alpha_max=alpha_max, first_step=first_step, maximize=maximize,
            numels=[numels[i] for i in plain] if numels else None, reduce_sums=sub_reduce)
        buckets += [([plain[i] for i in positions], a, r) for positions, a, r in plain_buckets]
    if rotated:
        func = _multi_tensor_adadiag if foreach else _single_tensor_adadiag
        rotated_buckets = func(
            [params[i] for i in rotated], [grads[i] for i in rotated], [exp_avgs[i] for i in rotated],
            [exp_avg_sqs[i] for i in rotated], [exp_avg_sq_rows[i] for i in rotated],
            [exp_avg_sq_cols[i] for i in rotated], [bases_left[i] for i in rotated],
            [bases_right[i] for i in rotated], [state_steps[i] for i in rotated], lr=lr, beta1=beta1, beta2=beta2,
            eps=eps, weight_decay=weight_decay, update_freq=update_freq, moment_space=moment_space,
            reproject=reproject, align_signs=align_signs, mask=mask, alpha=alpha, alpha_max=alpha_max,
            first_step=first_step, maximize=maximize)
        buckets += [([rotated[i] for i in positions], a, r) for positions, a, r in rotated_buckets]
    return buckets


def _single_tensor_adadiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    exp_avg_sq_rows: list[Tensor | None],
    exp_avg_sq_cols: list[Tensor | None],
    bases_left: list[Tensor | None],
    bases_right: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    update_freq: int,
    moment_space: str,
    reproject: bool,
    align_signs: bool,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    maximize: bool,
) -> list[StatisticsBucket]:
    """The reference loop for rotated tensors: one matrix at a time, written as the algorithm box reads."""
    alphas, ratios = [], []
    for index, param in enumerate(params):
        dtype = compute_dtype(param)
        p = param.to(dtype)
        g = grads[index].to(dtype)
        g = -g if maximize else g
        m = exp_avgs[index].to(dtype)
        factored = exp_avg_sqs[index] is None
        if factored:
            rows, cols = exp_avg_sq_rows[index].to(dtype), exp_avg_sq_cols[index].to(dtype)
        else:
            v = exp_avg_sqs[index].to(dtype)
        left, right = bases_left[index], bases_right[index]
        left = None if left is None else left.to(dtype)
        right = None if right is None else right.to(dtype)

        step_t = state_steps[index]
        step_t += 1
        step = _get_value(step_t)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step

        refresh = (step - 1) % update_freq == 0  # at t = 1, 1 + T, 1 + 2T, ...
        if refresh:
            new_left, new_right = _svd_bases(g, left is not None, right is not None)
            if align_signs:
                new_left = None if left is None else _aligned(new_left, left)
                new_right = None if right is None else _aligned(new_right, right)
            if reproject:
                r_left = None if left is None else new_left.mT @ left  # old rotated coords -> new rotated coords
                r_right = None if right is None else new_right.mT @ right
                if moment_space == "rotated":
                    m = _unrotate(m, r_left, r_right)  # R_P m R_Q^T
                sq_left = None if r_left is None else r_left.square()
                sq_right = None if r_right is None else r_right.square()
                if factored:
                    rows = rows if sq_left is None else sq_left @ rows
                    cols = cols if sq_right is None else sq_right @ cols
                else:
                    v = _unrotate(v, sq_left, sq_right)
            left, right = new_left, new_right

        g_rotated = _rotate(g, left, right)
        if refresh:
            keep = _exact_zeros(g.shape, left is not None, right is not None, dtype, g.device)
            if keep is not None:  # rounding noise there would be normalised by Adam to O(1) steps
                g_rotated = g_rotated * keep
        g_momentum = g_rotated if moment_space == "rotated" else g  # the gradient in the momentum's space
        if mask == "async":
            phi = sign_agreement(m, g_momentum)  # m is still m_{t-1}
        if moment_space == "original":  # P^T m_t Q, formed from P^T m_{t-1} Q and G~ (the same in exact arithmetic)
            m_rotated = _rotate(m, left, right).lerp(g_rotated, 1 - beta1)
        m = m.lerp(g_momentum, 1 - beta1)
        if moment_space == "rotated":
            m_rotated = m
        if factored:
            g_sq = g_rotated * g_rotated
            rows = rows * beta2 + (1 - beta2) * g_sq.mean(dim=-1)
            cols = cols * beta2 + (1 - beta2) * g_sq.mean(dim=-2)
            second = _factored_second_moment(rows, cols)
        else:
            v = v * beta2 + (1 - beta2) * g_rotated * g_rotated
            second = v
        u = (m_rotated / bias_correction1) / (second.sqrt() / math.sqrt(bias_correction2) + eps)
        if moment_space == "original":
            u = _unrotate(u, left, right)
        if mask == "sync":
            phi = sign_agreement(m, g_momentum)
        if mask == "none" or (first_step == "full" and step == 1):
            phi = torch.ones_like(u)

        step_direction, alpha_t, mask_ratio = masked_step(u, phi, alpha, alpha_max)
        if moment_space == "rotated":
            step_direction = _unrotate(step_direction, left, right)
        moved = (mask_ratio > 0).to(dtype)  # an empty mask leaves the tensor where it is, weight decay included

        p = p * (1 - lr * weight_decay * moved)
        p = p - lr * step_direction

        param.copy_(p)
        exp_avgs[index].copy_(m)
        if factored:
            exp_avg_sq_rows[index].copy_(rows)
            exp_avg_sq_cols[index].copy_(cols)
        else:
            exp_avg_sqs[index].copy_(v)
        if left is not None:
            bases_left[index].copy_(left)
        if right is not None:
            bases_right[index].copy_(right)
        alphas.append(alpha_t)
        ratios.append(mask_ratio)
    if not params:
        return []
    return [(list(range(len(params))), torch.stack(alphas), torch.stack(ratios))]


def _multi_tensor_adadiag(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    exp_avg_sq_rows: list[Tensor | None],
    exp_avg_sq_cols: list[Tensor | None],
    bases_left: list[Tensor | None],
    bases_right: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    update_freq: int,
    moment_space: str,
    reproject: bool,
    align_signs: bool,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    maximize: bool,
) -> list[StatisticsBucket]:
    """The batched path: matrices of one (device, dtype, shape, sides, state layout) are stacked, and the SVDs,
    rotations and element-wise math of a bucket run as single batched ops."""
    groups: dict[tuple, list[int]] = {}
    for index, param in enumerate(params):
        key = (param.device, param.dtype, tuple(param.shape), bases_left[index] is not None,
               bases_right[index] is not None, exp_avg_sqs[index] is None, exp_avgs[index].dtype)
        groups.setdefault(key, []).append(index)
    buckets: list[StatisticsBucket] = []
    for indices in groups.values():
        alpha_values, mask_ratio = _rotated_bucket(
            [params[i] for i in indices], [grads[i] for i in indices], [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices], [exp_avg_sq_rows[i] for i in indices],
            [exp_avg_sq_cols[i] for i in indices], [bases_left[i] for i in indices],
            [bases_right[i] for i in indices], [state_steps[i] for i in indices], lr=lr, beta1=beta1, beta2=beta2,
            eps=eps, weight_decay=weight_decay, update_freq=update_freq, moment_space=moment_space,
            reproject=reproject, align_signs=align_signs, mask=mask, alpha=alpha, alpha_max=alpha_max,
            first_step=first_step, maximize=maximize)
        buckets.append((indices, alpha_values, mask_ratio))
    return buckets


def _stack(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.stack([t.to(dtype) for t in tensors])


def _rotated_bucket(params, grads, exp_avgs, exp_avg_sqs, rows_list, cols_list, lefts, rights, state_steps, *,
                    lr, beta1, beta2, eps, weight_decay, update_freq, moment_space, reproject, align_signs, mask,
                    alpha, alpha_max, first_step, maximize) -> tuple[Tensor, Tensor]:
    """One bucket of same-shaped rotated matrices, stacked to ``[B, m, n]``; returns ``(alpha [B], ratio [B])``."""
    dtype = compute_dtype(params[0])
    count, device = len(params), params[0].device
    factored = exp_avg_sqs[0] is None
    g = _stack(grads, dtype)
    if maximize:
        g.neg_()
    m = _stack(exp_avgs, dtype)
    if factored:
        rows, cols = _stack(rows_list, dtype), _stack(cols_list, dtype)
    else:
        v = _stack(exp_avg_sqs, dtype)
    left = _stack(lefts, dtype) if lefts[0] is not None else None
    right = _stack(rights, dtype) if rights[0] is not None else None

    torch._foreach_add_(state_steps, 1)
    steps = [_get_value(step) for step in state_steps]
    as_column = lambda values: torch.tensor(values, dtype=dtype, device=device).view(count, 1, 1)  # noqa: E731
    bias_correction1 = as_column([1 - beta1**step for step in steps])
    bias_correction2_sqrt = as_column([math.sqrt(1 - beta2**step) for step in steps])

    refresh = [k for k, step in enumerate(steps) if (step - 1) % update_freq == 0]
    if refresh:
        every = len(refresh) == count
        select = None if every else torch.tensor(refresh, device=device)
        pick = (lambda x: x) if every else (lambda x: x.index_select(0, select))  # noqa: E731
        old_left = None if left is None else pick(left)
        old_right = None if right is None else pick(right)
        new_left, new_right = _svd_bases(pick(g), left is not None, right is not None)
        if align_signs:
            new_left = None if left is None else _aligned(new_left, old_left)
            new_right = None if right is None else _aligned(new_right, old_right)
        def put(full: Tensor, part: Tensor) -> Tensor:
            return part if every else full.index_copy(0, select, part)
        if reproject:
            r_left = None if left is None else new_left.mT @ old_left
            r_right = None if right is None else new_right.mT @ old_right
            if moment_space == "rotated":
                m = put(m, _unrotate(pick(m), r_left, r_right))
            sq_left = None if r_left is None else r_left.square()
            sq_right = None if r_right is None else r_right.square()
            if factored:
                if sq_left is not None:
                    rows = put(rows, (sq_left @ pick(rows).unsqueeze(-1)).squeeze(-1))
                if sq_right is not None:
                    cols = put(cols, (sq_right @ pick(cols).unsqueeze(-1)).squeeze(-1))
            else:
                v = put(v, _unrotate(pick(v), sq_left, sq_right))
        left = None if left is None else put(left, new_left)
        right = None if right is None else put(right, new_right)

    g_rotated = _rotate(g, left, right)
    if refresh:
        keep = _exact_zeros(tuple(g.shape), left is not None, right is not None, dtype, device)
        if keep is not None:
            if len(refresh) < count:  # only the refreshed matrices have exact zeros
                refreshed = torch.zeros(count, 1, 1, dtype=torch.bool, device=device)
                refreshed[refresh] = True
                keep = torch.where(refreshed, keep, torch.ones_like(keep))
            g_rotated = g_rotated * keep
    g_momentum = g_rotated if moment_space == "rotated" else g
    phi = None
    if mask == "async":
        phi = sign_agreement(m, g_momentum)
    m_rotated = _rotate(m, left, right).lerp_(g_rotated, 1 - beta1) if moment_space == "original" else m
    m.lerp_(g_momentum, 1 - beta1)
    # g~^2, in g~'s buffer unless the sync mask still needs g~
    g_sq = g_rotated.square() if mask == "sync" and moment_space == "rotated" else g_rotated.square_()
    if factored:
        rows.mul_(beta2).add_(g_sq.mean(dim=-1), alpha=1 - beta2)
        cols.mul_(beta2).add_(g_sq.mean(dim=-2), alpha=1 - beta2)
        second = _factored_second_moment(rows, cols)
    else:
        v.mul_(beta2).add_(g_sq, alpha=1 - beta2)
        second = v
    del g_sq
    u = (m_rotated / bias_correction1) / (second.sqrt() / bias_correction2_sqrt + eps)
    if moment_space == "original":
        u = _unrotate(u, left, right)
    if mask == "sync":
        phi = sign_agreement(m, g_momentum)

    numel = torch.full((count,), float(u[0].numel()), dtype=dtype, device=device)
    if mask == "none" and alpha != "count":
        # phi = 1 everywhere: alpha is exactly 1 ("norm": ||u|| / ||u||; "none") and every tensor moves
        alpha_values = torch.ones(count, dtype=dtype, device=device)
        mask_ratio = torch.ones(count, dtype=dtype, device=device)
        moved = None
        direction = u
    else:
        if phi is None:
            phi = torch.ones_like(u)
        full = [k for k, step in enumerate(steps) if first_step == "full" and step == 1]
        if full:
            phi[full] = 1
        masked = phi * u
        sums = torch.stack([u.square().sum(dim=(-2, -1)), masked.square().sum(dim=(-2, -1)),
                            phi.sum(dim=(-2, -1))], dim=-1)
        alpha_values = alpha_from_sums(sums, numel, alpha, alpha_max)
        mask_ratio = sums[:, 2] / numel
        moved = (sums[:, 2] > 0).to(dtype).view(count, 1, 1)
        direction = alpha_values.view(count, 1, 1) * masked
        alpha_values = reported_alpha(sums, alpha_values, alpha)
    if moment_space == "rotated":
        direction = _unrotate(direction, left, right)

    p = _stack(params, dtype)
    decay = 1 - lr * weight_decay if moved is None else 1 - lr * weight_decay * moved
    p = p * decay - lr * direction

    torch._foreach_copy_(params, list(p.unbind(0)))
    torch._foreach_copy_(exp_avgs, list(m.unbind(0)))
    if factored:
        torch._foreach_copy_(rows_list, list(rows.unbind(0)))
        torch._foreach_copy_(cols_list, list(cols.unbind(0)))
    else:
        torch._foreach_copy_(exp_avg_sqs, list(v.unbind(0)))
    if refresh:  # the bases change only at refresh steps
        if left is not None:
            torch._foreach_copy_(lefts, list(left.unbind(0)))
        if right is not None:
            torch._foreach_copy_(rights, list(right.unbind(0)))
    return alpha_values, mask_ratio
