"""AdaDiag's functional step: :func:`adadiag`, the per-tensor reference loop (the test oracle) and the batched path
(the default). The update rule is :class:`~hf_alphaadam.AdaDiag`'s docstring; the rotations are in ``_rotation.py``.

``_multi_tensor_adadiag`` stacks same-shaped matrices: one batched ``torch.linalg.svd``, batched matmuls and
element-wise ops per bucket. Unrotated tensors go through the shared Adam engine (``_adam_engine.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from ._adam_engine import StatisticsBucket, alphaadam
from ._masking import masked_step, sign_agreement, step_scale, unmasked_step
from ._rotation import _aligned, _exact_zeros, _factored_second_moment, _rotate, _svd_bases, _unrotate
from ._sharding import SumsReducer
from ._step_options import AdamStep, OptionalTensors, Tensors
from ._state import compute_dtype


def adadiag(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: OptionalTensors,
            exp_avg_sq_rows: OptionalTensors, exp_avg_sq_cols: OptionalTensors, bases_left: OptionalTensors,
            bases_right: OptionalTensors, state_steps: Tensors, *, foreach: bool | None = None, update_freq: int,
            moment_space: str, reproject: bool, align_signs: bool, numels: list[int] | None = None,
            reduce_sums: SumsReducer | None = None, **options: Any) -> list[StatisticsBucket]:
    """Functional AdaDiag step over lists of tensors (updates ``params`` and the states in place).

    ``options`` are the Adam step's scalars (``_step_options.AdamStep``: ``lr``, ``beta1``, ``beta2``, ``eps``,
    ``weight_decay``, ``mask``, ``alpha``, ``alpha_max``, ``first_step``, ``maximize``); ``update_freq``,
    ``moment_space``, ``reproject`` and ``align_signs`` are AdaDiag's (:class:`AdaDiag`).

    Per tensor, the state present decides the rule: a tensor with a ``bases_left`` and/or ``bases_right`` entry
    is rotated (those are its bases; they are overwritten at refresh steps), the others get AlphaAdam's rule
    (AdamW without a mask) through :func:`alphaadam`. A rotated tensor with ``exp_avg_sqs[i] = None`` has a
    factored second moment (``exp_avg_sq_rows[i]``, ``exp_avg_sq_cols[i]``). ``numels`` / ``reduce_sums`` are for
    sharded non-rotated tensors, as in :func:`alphaadam`; rotated tensors must be whole.
    Returns ``(positions, alpha, mask_ratio)`` statistics buckets, ``positions`` indexing the input lists.
    """
    if foreach is None:
        foreach = True
    AdamStep(**options)  # the names checked before anything moves
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
            [exp_avg_sqs[i] for i in plain], [state_steps[i] for i in plain], foreach=foreach,
            numels=[numels[i] for i in plain] if numels else None, reduce_sums=sub_reduce, **options)
        buckets += [([plain[i] for i in positions], a, r) for positions, a, r in plain_buckets]
    if rotated:
        func = _multi_tensor_adadiag if foreach else _single_tensor_adadiag
        rotated_buckets = func(
            [params[i] for i in rotated], [grads[i] for i in rotated], [exp_avgs[i] for i in rotated],
            [exp_avg_sqs[i] for i in rotated], [exp_avg_sq_rows[i] for i in rotated],
            [exp_avg_sq_cols[i] for i in rotated], [bases_left[i] for i in rotated],
            [bases_right[i] for i in rotated], [state_steps[i] for i in rotated], update_freq=update_freq,
            moment_space=moment_space, reproject=reproject, align_signs=align_signs, **options)
        buckets += [([rotated[i] for i in positions], a, r) for positions, a, r in rotated_buckets]
    return buckets


def _single_tensor_adadiag(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: OptionalTensors,
                           exp_avg_sq_rows: OptionalTensors, exp_avg_sq_cols: OptionalTensors,
                           bases_left: OptionalTensors, bases_right: OptionalTensors, state_steps: Tensors, *,
                           update_freq: int, moment_space: str, reproject: bool, align_signs: bool,
                           **options: Any) -> list[StatisticsBucket]:
    """The reference loop for rotated tensors: one matrix at a time, written as the algorithm box reads."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
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
        if unmasked_step(mask, first_step, step):
            phi = torch.ones_like(u)

        step_direction, alpha_t, mask_ratio, moved = masked_step(u, phi, alpha, alpha_max)
        if moment_space == "rotated":
            step_direction = _unrotate(step_direction, left, right)

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


def _multi_tensor_adadiag(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: OptionalTensors,
                          exp_avg_sq_rows: OptionalTensors, exp_avg_sq_cols: OptionalTensors,
                          bases_left: OptionalTensors, bases_right: OptionalTensors, state_steps: Tensors, *,
                          update_freq: int, moment_space: str, reproject: bool, align_signs: bool,
                          **options: Any) -> list[StatisticsBucket]:
    """The batched path: matrices of one (device, dtype, shape, sides, state layout) are stacked, and the SVDs,
    rotations and element-wise math of a bucket run as single batched ops."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
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
            [bases_right[i] for i in indices], [state_steps[i] for i in indices], update_freq=update_freq,
            moment_space=moment_space, reproject=reproject, align_signs=align_signs, **options)
        buckets.append((indices, alpha_values, mask_ratio))
    return buckets


def _stack(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.stack([t.to(dtype) for t in tensors])


def _rotated_bucket(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: OptionalTensors,
                    rows_list: OptionalTensors, cols_list: OptionalTensors, lefts: OptionalTensors,
                    rights: OptionalTensors, state_steps: Tensors, *, update_freq: int, moment_space: str,
                    reproject: bool, align_signs: bool, **options: Any) -> tuple[Tensor, Tensor]:
    """One bucket of same-shaped rotated matrices, stacked to ``[B, m, n]``; returns ``(alpha [B], ratio [B])``."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
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
        full = [k for k, step in enumerate(steps) if unmasked_step(mask, first_step, step)]
        if full:
            phi[full] = 1
        masked = phi * u
        sums = torch.stack([u.square().sum(dim=(-2, -1)), masked.square().sum(dim=(-2, -1)),
                            phi.sum(dim=(-2, -1))], dim=-1)
        scale = step_scale(sums, numel, alpha, alpha_max)
        moved = scale.moved.view(count, 1, 1)
        direction = scale.alpha.view(count, 1, 1) * masked
        alpha_values, mask_ratio = scale.reported, scale.mask_ratio
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
