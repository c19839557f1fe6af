"""AdaPM's functional step: :func:`adapm`, the per-tensor reference loop (the test oracle), and the low-rank helpers
it shares with the fast path (``_adapm_fast.py``). The update rule is :class:`~hf_alphaadam.AdaPM`'s docstring."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from ._masking import masked_step, sign_agreement, unmasked_step
from ._policy import MomentumPlan
from ._sharding import SumsReducer, local
from ._step_options import AdamStep, Tensors
from ._state import compute_dtype

StatisticsBucket = tuple[list[int], Tensor, Tensor]


def adapm(params: Tensors, grads: Tensors, states: list[dict[str, Any]], plans: list[MomentumPlan], *,
          foreach: bool | None = None, residual: str, residual_clip: float, refit_iters: int,
          numels: list[int] | None = None, reduce_sums: SumsReducer | None = None,
          workspace: dict[Any, Tensor] | None = None, tensor_threads: int | None = 1,
          routes: list[str] | None = None, **options: Any) -> list[StatisticsBucket]:
    """Functional AdaPM step (updates ``params`` and the state dicts in place).

    ``options`` are the Adam step's scalars (``_step_options.AdamStep``: ``lr``, ``beta1``, ``beta2``, ``eps``,
    ``weight_decay``, ``mask``, ``alpha``, ``alpha_max``, ``first_step``, ``maximize``); ``residual``,
    ``residual_clip`` and ``refit_iters`` are AdaPM's (:class:`AdaPM`). ``states[i]`` holds tensor ``i``'s state as
    :class:`AdaPM` allocates it for ``plans[i]``. ``numels`` and
    ``reduce_sums`` (sharded tensors) apply to the ``"adam_full"`` tensors only: ``numels[k]`` and index ``k`` of
    ``reduce_sums`` refer to the k-th ``"adam_full"`` tensor of the lists passed here. Returns
    ``(positions, alpha, mask_ratio)`` statistics buckets. ``workspace``: a dict the fast path may keep reusable
    CPU scratch buffers in between calls (one per optimizer; not state, never saved). ``tensor_threads``: worker
    threads for the fast path's low-rank / compact tensors (:class:`AdaPM`; ``None``: automatic, ``1``: serial).
    ``routes``: each element-wise tensor's path in the fast path (``"native"`` or ``"foreach"``, as the optimizer's
    plans record them; ``None``: the native kernel where every tensor of a kind fits it).
    """
    AdamStep(**options)  # the names checked before anything moves
    options.update(residual=residual, residual_clip=residual_clip, refit_iters=refit_iters, numels=numels,
                   reduce_sums=reduce_sums, workspace=workspace, tensor_threads=tensor_threads)
    if foreach is False:
        return _single_tensor_adapm(params, grads, states, plans, **options)
    from ._adapm_fast import _multi_tensor_adapm

    return _multi_tensor_adapm(params, grads, states, plans, routes=routes, **options)


def _canonical(tensor: Tensor, plan: MomentumPlan) -> Tensor:
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
    return approx + _residual_scale(rest, approx, residual_clip) * rest


def _residual_scale(rest: Tensor, approx: Tensor, residual_clip: float) -> Tensor:
    """``min(1, residual_clip ||L R|| / ||r||)`` per matrix (Frobenius norms; kept dims): the clip of the residual
    ``r`` under ``residual="clip"``."""
    rest_norm = torch.linalg.matrix_norm(rest, keepdim=True)
    limit = residual_clip * torch.linalg.matrix_norm(approx, keepdim=True)
    return torch.where(rest_norm > limit, limit / rest_norm.clamp_min(torch.finfo(rest.dtype).tiny),
                       torch.ones_like(rest_norm))


def _single_tensor_adapm(params: Tensors, grads: Tensors, states: list[dict[str, Any]], plans: list[MomentumPlan], *,
                         residual: str, residual_clip: float, refit_iters: int, numels: list[int] | None = None,
                         reduce_sums: SumsReducer | None = None, workspace: dict[Any, Tensor] | None = None,
                         tensor_threads: int | None = 1, **options: Any) -> list[StatisticsBucket]:
    """The reference loop: one tensor, one row segment at a time, written as the algorithm box reads."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
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
        unmasked = unmasked_step(mask, first_step, step)

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

        direction, alpha_t, mask_ratio, moved = masked_step(u, phi, alpha, alpha_max, numel=numel,
                                                            reduce_sums=reducer)
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
