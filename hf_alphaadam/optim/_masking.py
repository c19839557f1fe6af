"""The per-tensor step rules of the masked-Adam family: the sign-agreement mask, alpha, and what an empty mask means.

Every Python path of every optimizer (AlphaAdam's reference, foreach and compiled paths, AdaPM's and AdaDiag's
paths) takes these rules from here: :func:`sign_agreement` / :func:`sign_agreements` (the mask), :func:`unmasked_step`
(when the mask is 1 everywhere) and :func:`step_scale` (alpha, the reported alpha, the mask ratio and whether the
tensor moves, from the three sums). The native C
kernel (``_native/alphaadam_cpu.c``, ``rule_of``) is the one other place that states them; a test feeds both the
same sums (``tests/optim/test_step_rules.py``).

Notation (per parameter tensor, element-wise unless noted)::

    g      gradient at step t
    m      first moment; ``m_prev`` before and ``m`` after the in-place EMA update of step t
    u      the unmasked Adam direction, (m / bc1) / (sqrt(v / bc2) + eps)
    phi    the mask, 1 where momentum and gradient agree in sign
             async: phi = 1(m_prev * g > 0)   (AlphaAdam, evaluated before the momentum update)
             sync:  phi = 1(m * g > 0)        (Cautious AdamW)
             none:  phi = 1
    alpha  the per-tensor scale of the masked step
             norm:  alpha = ||u||_2 / ||phi * u||_2     (AlphaAdam's dynamic alpha; restores Adam's step norm)
             count: alpha = numel / (sum(phi) + 1)        (Cautious AdamW's normaliser)
             none:  alpha = 1
           optionally clamped to ``alpha_max``; alpha = 1 (and the tensor is not moved) when sum(phi) = 0.

The statistics pass reduces each tensor to three sums, ``(sum u^2, sum (phi*u)^2, sum phi)``; stacked over
tensors they form a ``[n, 3]`` tensor. Keeping them as sums (not norms) is what lets a sharded optimizer add the
local sums of all shards before alpha is formed (see ``_sharding.py``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ._schemas import ALPHA_MODES, FIRST_STEP_MODES, MASK_MODES  # noqa: F401  (re-exported)


def unmasked_step(mask: str, first_step: str, step: float) -> bool:
    """Whether ``phi = 1`` everywhere at this step: no mask, or the tensor's first step under
    ``first_step="full"`` (``m_0 = 0`` would make the asynchronous mask empty)."""
    return mask == "none" or (first_step == "full" and step == 1)


class StepScale(NamedTuple):
    """What the three sums decide for each of ``n`` tensors (all ``[n]``, in the sums' dtype)."""

    alpha: Tensor  # the scale of the masked step
    reported: Tensor  # the alpha the statistics report (:func:`reported_alpha`)
    mask_ratio: Tensor  # sum(phi) / numel
    moved: Tensor  # 1 where the mask is not empty, 0 where it is: such a tensor is not moved, weight decay included


def step_scale(sums: Tensor, numel: Tensor, alpha: str, alpha_max: float | None) -> StepScale:
    """The step rules from stacked sums ``[n, 3]`` (global: already reduced over shards) and the whole tensors'
    element counts ``numel [n]``: alpha (:func:`alpha_from_sums`), the reported alpha, the mask ratio, and ``moved``.

    An update is then ``p = p * (1 - lr * wd * moved) - lr * alpha * (phi * u)``.
    """
    values = alpha_from_sums(sums, numel, alpha, alpha_max)
    count = sums[:, 2]
    return StepScale(values, reported_alpha(sums, values, alpha), count / numel, (count > 0).to(sums.dtype))


def sign_agreement(momentum: Tensor, grad: Tensor) -> Tensor:
    """The mask ``1(momentum * grad > 0)`` as 0/1 in the inputs' dtype (strict: a zero in either gives 0)."""
    return torch.mul(momentum, grad).gt_(0)


def sign_agreements(momenta: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """:func:`sign_agreement` over lists of tensors (``torch._foreach_*``), for the multi-tensor paths."""
    products = torch._foreach_mul(momenta, grads)
    for product in products:
        product.gt_(0)
    return products


def alpha_from_sums(sums: Tensor, numel: Tensor, alpha: str, alpha_max: float | None) -> Tensor:
    """Per-tensor alpha from stacked sums.

    Args:
        sums: ``[n, 3]`` with columns ``sum u^2``, ``sum (phi*u)^2``, ``sum phi`` (global, i.e. already reduced
            over shards when the tensors are sharded).
        numel: ``[n]`` number of elements of each (whole, unsharded) tensor, same dtype as ``sums``.
        alpha: ``"norm"``, ``"count"`` or ``"none"``.
        alpha_max: optional upper clamp.

    Returns:
        ``[n]`` alpha, equal to 1 wherever the mask is empty (those tensors are not moved).
    """
    sq_u, sq_masked, count = sums.unbind(-1)
    nonempty = count > 0
    one = torch.ones_like(sq_u)
    if alpha == "norm":
        # ||u|| / ||phi*u||; a masked norm of exactly 0 with a non-empty mask (u = 0 where phi = 1) gives 1.
        value = torch.where(sq_masked > 0, torch.sqrt(sq_u / sq_masked.clamp_min(torch.finfo(sums.dtype).tiny)), one)
    elif alpha == "count":
        value = numel / (count + 1)
    elif alpha == "none":
        value = one
    else:  # validated by the optimizer; kept for direct callers
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    if alpha_max is not None:
        value = value.clamp_max(alpha_max)
    return torch.where(nonempty, value, one)


def reported_alpha(sums: Tensor, alpha_values: Tensor, alpha: str) -> Tensor:
    """alpha as the statistics report it: the value the step used, except that where the norm rule's sums are
    NaN or Inf (a non-finite update) the ratio ``sqrt(sum u^2 / sum (phi*u)^2)`` is reported as it is (NaN or
    Inf) instead of the 1 that :func:`alpha_from_sums` falls back to. ``[n]`` like ``alpha_values``."""
    if alpha != "norm":
        return alpha_values
    sq_u, sq_masked = sums[:, 0], sums[:, 1]
    finite = torch.isfinite(sq_u) & torch.isfinite(sq_masked)
    return torch.where(finite, alpha_values, torch.sqrt(sq_u / sq_masked).to(alpha_values.dtype))


def masked_step(u: Tensor, phi: Tensor, alpha: str, alpha_max: float | None, numel: int | None = None,
                reduce_sums: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One tensor's masked, rescaled direction ``alpha * (phi * u)`` with its alpha, mask ratio and ``moved``.

    This is the per-tensor rule every masked optimizer of the package applies to its own direction ``u``
    (Adam's ``m_hat / (sqrt(v_hat) + eps)`` for AlphaAdam; a low-rank or rotated direction elsewhere).

    Args:
        u: the unmasked update direction (any shape; the compute dtype).
        phi: the mask, 0/1 in ``u``'s dtype, same shape.
        alpha, alpha_max: the alpha rule and its optional clamp.
        numel: the whole tensor's element count if ``u`` is a shard (default ``u.numel()``).
        reduce_sums: adds the ``[1, 3]`` local sums over the shards, if sharded.

    Returns:
        ``(step_direction, alpha, mask_ratio, moved)`` with 0-d tensors after the direction. The direction is
        all zeros when the mask is empty, and ``moved`` is then 0: the caller applies
        ``p (1 - lr wd moved) - lr direction``. The returned alpha is the reported one (:func:`reported_alpha`).
    """
    masked = phi * u
    sums = torch.stack([u.square().sum(), masked.square().sum(), phi.sum()]).unsqueeze(0)
    if reduce_sums is not None:
        sums = reduce_sums(sums)
    whole = torch.tensor([numel if numel is not None else u.numel()], dtype=sums.dtype, device=sums.device)
    scale = step_scale(sums, whole, alpha, alpha_max)
    return scale.alpha[0] * masked, scale.reported[0], scale.mask_ratio[0], scale.moved[0]
