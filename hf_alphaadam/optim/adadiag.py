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

Two code paths with one signature, :func:`adadiag` (``_adadiag_paths.py``): ``_single_tensor_adadiag`` is the plain
per-tensor reference (the test oracle); ``_multi_tensor_adadiag`` stacks same-shaped matrices and is the default. The
class is the shared shell (``_base.py``) plus this rule, so 8-bit moments (``state_bits=8``: ``exp_avg`` and a dense
``exp_avg_sq``; bases and factored moments stay 32-bit) and Kahan / stochastic bf16 updates work as in AlphaAdam.

Distributed: the SVD needs the whole matrix. A rotated parameter that is a DTensor sharded by FSDP2, or a flat
ZeRO partition of a 2-D weight, is refused with an error naming the way out (``rotate=False`` for those groups,
or a data-parallel setup that keeps whole matrices); a flat partition is never rotated. Tensors that are not
rotated are handled as AlphaAdam handles them (per-tensor sums reduced over the shards).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import _precision, _quantized
from ._adadiag_paths import adadiag
from ._base import MaskedAdamBase
from ._plans import Slot, TensorPlan
from ._sharding import local
from ._state import compute_dtype
from ._schemas import ADADIAG_SCHEMA
from ._state_layout import adadiag_expected_state
from ._validation import describe_mismatch

__all__ = ["AdaDiag", "adadiag", "EMBEDDING_PATTERN"]

#: ``rotate="auto"`` leaves tensors whose name matches this (``re.search``) to AdamW: token / position
#: embeddings of Llama, GPT-2, BERT/RoBERTa, Qwen, T5 (``shared``) naming.
EMBEDDING_PATTERN = r"embed|(^|\.)(wte|wpe|shared)(\.|$)"



class AdaDiag(MaskedAdamBase):
    r"""AdaDiag (one-sided) and AdaDiag++ (``two_sided=True``): Adam in an SVD-rotated basis.

    Args:

    After each ``step()`` per-tensor alpha and mask ratio are kept as tensors (both 1 without a mask);
    :meth:`statistics` reads them.
    """

    OPTIONS = ADADIAG_SCHEMA
    __doc__ = OPTIONS.document(__doc__, params=(
        "parameters, param groups, or ``(name, parameter)`` pairs. Names label statistics and drive ``rotate`` "
        "(embeddings are recognised by name). Any option below can be overridden per group."))

    LAYOUT_OPTIONS = ("two_sided", "side", "moment_space", "second_moment", "rotate", "max_dim", "state_dtype")

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, update_freq: int = 10, two_sided: bool = False,
                 side: str = "auto", moment_space: str = "rotated", second_moment: str = "adam",
                 reproject: bool = False, align_signs: bool = True, rotate: bool | str = "auto",
                 max_dim: int | None = 8192, mask: str = "none", alpha: str = "none", alpha_max: float | None = None,
                 first_step: str = "full", state_dtype: torch.dtype | str | None = None, foreach: bool | None = None,
                 maximize: bool = False, partition_group: Any = None, state_bits: int = 32,
                 min_8bit_size: int = _quantized.MIN_8BIT_SIZE, quantize_embeddings: bool = False,
                 bf16_update: str = "plain", adopt_changed_settings: bool = False) -> None:
        super().__init__(params, locals())

    # ------------------------------------------------------------------------------------------------ groups

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Any], str]:
        left, right = self.rotation_sides({**options, "param_names": self.param_groups[group_index].get(
            "param_names")}, position, tuple(param.shape))
        expected, how = adadiag_expected_state(left, right, options["second_moment"] == "adafactor", local(param))
        return _precision.expected_with_precision(expected, local(param), saved), how

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

    def _plan_detail(self, group: dict[str, Any], group_index: int, position: int, name: str,
                     shape: tuple[int, ...]) -> tuple[bool, bool]:
        """The rotation sides ``(left, right)`` of the tensor."""
        return self.rotation_sides(group, position, shape)

    def _plan_route(self, group: dict[str, Any], param: Tensor, numel: int, group_numel: int,
                    detail: tuple[bool, bool], eight_bit: bool) -> str:
        """``"reference"`` (``foreach=False``), ``"batched"`` (rotated matrices), else the shared Adam engine's
        foreach path."""
        if group["foreach"] is False:
            return "reference"
        return "batched" if any(detail) else "foreach"

    def _layout_change_message(self, plans: list[TensorPlan], shapes: list[tuple[int, ...]]) -> str:
        rotated = [plan.shape for plan in plans if any(plan.detail)]
        if not rotated:
            return super()._layout_change_message(plans, shapes)
        return (f"a param group built with tensors of shapes {[plan.shape for plan in plans]} (rotated: {rotated}) "
                f"now holds tensors of shapes {shapes}: a flat ZeRO partition. AdaDiag never rotates a flat "
                "partition (the SVD needs whole matrices); give these tensors rotate=False (AdamW) in their param "
                "group, or use ZeRO stage 0 / DDP")

    def _check_step(self, group: dict[str, Any], plan: TensorPlan, param: Tensor) -> None:
        if not any(plan.detail):
            return
        if plan.layout == "partition":
            raise RuntimeError(self._layout_change_message([plan], [tuple(param.shape)]) +
                               " (the group has a whole_numel entry)")
        if plan.layout == "dtensor" and not all(p.is_replicate() for p in param.placements):
            raise NotImplementedError(
                f"AdaDiag needs the whole matrix for the SVD, but parameter {plan.name} (shape {plan.shape}) is "
                f"sharded ({param.placements}). Under FSDP2 give such tensors rotate=False (AdamW) in their param "
                "group, or train with DDP / replicated weights")

    # ------------------------------------------------------------------------------------------------ state

    def _init_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any],
                    dtype: torch.dtype) -> None:
        tensor = local(param)
        left, right = plan.detail
        basis_dtype = compute_dtype(param)
        state["exp_avg"] = torch.zeros_like(tensor, dtype=dtype, memory_format=torch.preserve_format)
        if (left or right) and group["second_moment"] == "adafactor":
            state["exp_avg_sq_row"] = torch.zeros(tensor.shape[0], dtype=dtype, device=tensor.device)
            state["exp_avg_sq_col"] = torch.zeros(tensor.shape[1], dtype=dtype, device=tensor.device)
        else:
            state["exp_avg_sq"] = torch.zeros_like(tensor, dtype=dtype, memory_format=torch.preserve_format)
        if left:
            state["basis_left"] = torch.eye(tensor.shape[0], dtype=basis_dtype, device=tensor.device)
        if right:
            state["basis_right"] = torch.eye(tensor.shape[1], dtype=basis_dtype, device=tensor.device)

    def _check_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any]) -> None:
        left, right = plan.detail
        factored = (left or right) and group["second_moment"] == "adafactor"
        quantized = _quantized.quantized_keys(state)
        present = {key for key in state} | set(quantized)
        expected = {"basis_left": left, "basis_right": right, "exp_avg_sq_row": factored, "exp_avg_sq": not factored}
        wrong = [key for key, wanted in expected.items() if (key in present) != wanted]
        for key, spec in adadiag_expected_state(left, right, factored, local(param))[0].items():
            tensor = state.get(key)  # before any write: every state tensor of the shape the step assumes
            if key not in quantized and tensor is not None and (tensor.shape != spec.shape
                                                                or tensor.device != param.device):
                raise ValueError(describe_mismatch(plan.name, key, tensor, spec.shape, param.device))
        if wrong:
            raise ValueError(
                f"the optimizer state of {plan.name} (keys {sorted(state)}) does not match "
                f"the group's options (two_sided={group['two_sided']}, side={group['side']!r}, "
                f"second_moment={group['second_moment']!r}, rotate={group['rotate']!r}): these options cannot "
                "change once a tensor has state")

    # ------------------------------------------------------------------------------------------------ step

    def _update(self, group: dict[str, Any], group_index: int, slots: list[Slot]
                ) -> list[tuple[list[int], Tensor, Tensor]]:
        # indexed like the lists below; only unrotated tensors can be sharded (see _check_step)
        numels, reduce_sums = self._sharding(group, [group["params"][s.plan.position] for s in slots])
        beta1, beta2 = group["betas"]
        states = [s.state for s in slots]
        return adadiag(
            [local(s.param) for s in slots], [local(s.grad) for s in slots], [local(st["exp_avg"]) for st in states],
            [None if st.get("exp_avg_sq") is None else local(st["exp_avg_sq"]) for st in states],
            [st.get("exp_avg_sq_row") for st in states], [st.get("exp_avg_sq_col") for st in states],
            [st.get("basis_left") for st in states], [st.get("basis_right") for st in states],
            [st["step"] for st in states], foreach=group["foreach"], lr=group["lr"], beta1=beta1, beta2=beta2,
            eps=group["eps"], weight_decay=group["weight_decay"], update_freq=group["update_freq"],
            moment_space=group["moment_space"], reproject=group["reproject"], align_signs=group["align_signs"],
            mask=group["mask"], alpha=group["alpha"], alpha_max=group["alpha_max"],
            first_step=group["first_step"], maximize=group["maximize"], numels=numels, reduce_sums=reduce_sums)
