"""AlphaAdam's multi-tensor path: the update of ``alphaadam.py`` with ``torch._foreach_*`` ops, per (device, dtype)
bucket of tensors. Same arguments, in-place effects and return value as the reference loop
``_adam_engine._single_tensor_alphaadam``, which it is tested against."""

from __future__ import annotations

import math

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_value

from ._masking import sign_agreements, step_scale, unmasked_step
from ._sharding import SumsReducer
from ._step_options import AdamStep, Tensors
from ._state import as_dtype, compute_dtype, copy_back

# (positions within the lists passed to the functional core, alpha [n], mask ratio [n])
StatisticsBucket = tuple[list[int], Tensor, Tensor]


def _multi_tensor_alphaadam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
                            state_steps: Tensors, *, numels: list[int] | None = None,
                            reduce_sums: SumsReducer | None = None, **options: Any) -> list[StatisticsBucket]:
    """The multi-tensor path: the same math with ``torch._foreach_*`` ops, per (device, dtype) bucket."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, state_steps], with_indices=True)
    buckets: list[StatisticsBucket] = []
    for (device_params, device_grads, device_m, device_v, device_steps), indices in grouped.values():
        dtype = compute_dtype(device_params[0])
        p = as_dtype(device_params, dtype)
        g = as_dtype(device_grads, dtype)
        if maximize:
            g = torch._foreach_neg(g)
        m = as_dtype(device_m, dtype)
        v = as_dtype(device_v, dtype)

        torch._foreach_add_(device_steps, 1)
        steps = [_get_value(step) for step in device_steps]
        bias_correction1 = [1 - beta1**step for step in steps]
        bias_correction2_sqrt = [math.sqrt(1 - beta2**step) for step in steps]
        unmasked = [unmasked_step(mask, first_step, step) for step in steps]

        phi = None
        if mask == "async":
            phi = sign_agreements(m, g)  # m is still m_{t-1}
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        if mask == "sync":
            phi = sign_agreements(m, g)

        if phi is None and alpha != "count" and not isinstance(lr, Tensor):
            # no mask and alpha = 1: exactly AdamW's foreach step, without materialising u
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, eps)
            if weight_decay != 0:
                torch._foreach_mul_(p, 1 - lr * weight_decay)
            torch._foreach_addcdiv_(p, m, denom, [-lr / bc1 for bc1 in bias_correction1])
            ones = torch.ones(len(p), dtype=dtype, device=p[0].device)
            alpha_values, mask_ratio = ones, ones
        else:
            # u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), written as m / (bc1 / sqrt(bc2) * sqrt(v) + bc1 * eps)
            # so that the bias corrections fold into two in-place passes over the denominator.
            u = torch._foreach_sqrt(v)
            torch._foreach_mul_(u, [bc1 / bc2 for bc1, bc2 in zip(bias_correction1, bias_correction2_sqrt)])
            torch._foreach_add_(u, [bc1 * eps for bc1 in bias_correction1])
            torch._foreach_reciprocal_(u)
            torch._foreach_mul_(u, m)

            device = u[0].device
            local_numel = torch.tensor([t.numel() for t in u], dtype=dtype, device=device)
            numel = torch.tensor([numels[i] for i in indices], dtype=dtype, device=device) if numels else local_numel
            zeros = torch.zeros(len(u), dtype=dtype, device=device)
            if phi is None:  # alpha="count" without a mask: the count is every coordinate
                sums = torch.stack([zeros, zeros, local_numel], dim=-1)
            else:
                for phi_t, full in zip(phi, unmasked):
                    if full:
                        phi_t.fill_(1)
                count = torch.stack(torch._foreach_norm(phi, 1)).to(dtype)  # phi >= 0: the L1 norm is sum(phi)
                if alpha == "norm":  # only the norm rule needs ||u|| and ||phi * u||
                    norm_u = torch.stack(torch._foreach_norm(u)).to(dtype)
                    torch._foreach_mul_(u, phi)  # u := phi * u
                    norm_masked = torch.stack(torch._foreach_norm(u)).to(dtype)
                    sums = torch.stack([norm_u.square(), norm_masked.square(), count], dim=-1)
                else:
                    torch._foreach_mul_(u, phi)
                    sums = torch.stack([zeros, zeros, count], dim=-1)
                del phi
            if reduce_sums is not None:
                sums = reduce_sums(sums, list(indices))

            scale = step_scale(sums, numel, alpha, alpha_max)
            if weight_decay != 0:
                torch._foreach_mul_(p, (1 - lr * weight_decay * scale.moved).unbind(0))
            if alpha == "none" and not isinstance(lr, Tensor):
                torch._foreach_add_(p, u, alpha=-lr)
            else:
                torch._foreach_mul_(u, (-lr * scale.alpha).unbind(0))
                torch._foreach_add_(p, u)
            alpha_values, mask_ratio = scale.reported, scale.mask_ratio

        copy_back(device_params, p)
        copy_back(device_m, m)
        copy_back(device_v, v)
        buckets.append((list(indices), alpha_values, mask_ratio))
    return buckets
