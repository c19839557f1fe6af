"""The shared Adam engine: AlphaAdam's functional step over lists of tensors, its paths, and the dispatch policy.

AlphaAdam calls it for every tensor; AdaPM (its full-momentum blocks) and AdaDiag (its unrotated tensors) call it
for theirs, so Cautious AdamW, AdamW and every element-wise Adam tensor of the package take the same paths. The
update rule is :class:`~hf_alphaadam.AlphaAdam`'s (its docstring holds the algorithm box); the per-tensor step
rules come from ``_masking.py``.

Paths, one signature (:func:`alphaadam`), each tested equal to the reference loop:

- ``_single_tensor_alphaadam`` (here): the plain per-tensor reference, written as the algorithm box reads;
- ``_multi_tensor_alphaadam`` (``_foreach.py``): ``torch._foreach_*`` ops per (device, dtype) bucket;
- ``_native_alphaadam`` (``_native.py``): a small C kernel for fp32 CPU tensors, two passes over memory;
- ``_compiled_alphaadam`` (``_compiled.py``): ``torch.compile``d kernels, two passes over memory.

**Dispatch policy** (the only place it is decided; an optimizer's per-tensor plans record its outcome):

1. ``foreach=False``: the reference loop. ``foreach=True`` with ``fused`` unset: the foreach path.
2. ``fused=True`` or both unset: the native kernel when every tensor is a plain fp32 CPU tensor and the kernel
   builds here (the first call builds it, about a second, cached on disk; ``HF_ALPHAADAM_NATIVE=0`` turns it off;
   a failed build is logged once and the next rule applies).
3. On a GPU, ``fused=True`` or both unset: the compiled multi-tensor kernels for every tensor (one compiled call
   per chunk of tensors, so the host cost does not grow with the tensor count; the first step compiles).
4. On the CPU, ``fused=True``: the compiled kernels for tensors of at least :data:`COMPILE_MIN_NUMEL` elements, the
   foreach path for the smaller ones (on this CPU the foreach path is faster for small tensors:
   ``benchmarks/README.md``). Both unset: the same for a group of at least :data:`AUTO_COMPILE_MIN_NUMEL`
   elements, else the foreach path.
5. Compiling happens before anything is updated; with ``fused`` unset a failure is logged once and the foreach
   path is used from then on. ``fused=False``: never the native or compiled kernels.

Sizes are those of the whole (unsharded) tensors, so every rank of a sharded run routes, and issues its
collectives, alike.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim.optimizer import _get_value

from . import _native
from ._foreach import _multi_tensor_alphaadam
from ._masking import masked_step, sign_agreement, unmasked_step
from ._sharding import SumsReducer, local
from ._step_options import AdamStep, Tensors
from ._state import compute_dtype
from ._validation import check_step_inputs

__all__ = ["alphaadam", "route_for", "ROUTES", "StatisticsBucket", "AUTO_COMPILE_MIN_NUMEL", "COMPILE_MIN_NUMEL"]

ROUTES = ("native", "compiled", "foreach", "reference")

# (positions within the lists passed to the functional core, alpha [n], mask ratio [n])
StatisticsBucket = tuple[list[int], Tensor, Tensor]

# on the CPU with both unset, a param group's step is compiled when its tensors hold at least this many elements in
# all (GPT-2 small has 124M; the test-sized models of this project stay below it and never compile)
AUTO_COMPILE_MIN_NUMEL = 1 << 24
# on the CPU, tensors with fewer elements take the foreach path (the compiled call's per-tensor host cost is more
# than such a tensor's whole foreach update there)
COMPILE_MIN_NUMEL = 1 << 16


def alphaadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
    name_of: Callable[[int], str] | None = None,
    route: str | None = None,
) -> list[StatisticsBucket]:
    """Functional AlphaAdam step over lists of tensors (updates ``params`` and the states in place).

    Before any path runs, each gradient and moment is checked against its parameter (shape, device, floating
    dtype; ``_validation.check_step_inputs``): a ValueError naming the tensor (``name_of(i)``) instead of a
    kernel writing out of bounds.

    For sharded tensors, ``numels`` gives each whole tensor's element count and ``reduce_sums(sums, indices)``
    adds the local ``[k, 3]`` sums of the tensors at ``indices`` over their shards (see ``_sharding.py``).
    Returns the per-tensor statistics as ``(positions, alpha, mask_ratio)`` buckets, ``positions`` indexing
    the input lists.

    The path of each tensor follows the module's dispatch policy (:func:`route_for`); ``route`` (one of
    :data:`ROUTES`, as an optimizer's plans record it) sends every tensor of the call down that path instead.
    """
    options = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, mask=mask, alpha=alpha,
                   alpha_max=alpha_max, first_step=first_step, maximize=maximize)
    tensors = (params, grads, exp_avgs, exp_avg_sqs, state_steps)
    check_step_inputs(*tensors, name_of=name_of)
    if not params:
        return []
    whole_numels = numels if numels is not None else [p.numel() for p in params]
    if route is None:
        group_numel = sum(whole_numels)
        routes = [route_for(native_fits=_native.supports(*[[local(values[i])] for values in tensors[:4]]),
                            whole_numel=whole_numels[i], group_numel=group_numel, foreach=foreach, fused=fused,
                            like=local(params[i])) for i in range(len(params))]
    else:
        routes = [route] * len(params)
    buckets: list[StatisticsBucket] = []
    for path in ROUTES:
        indices = [i for i, r in enumerate(routes) if r == path]
        if not indices:
            continue
        sub = [[values[i] for i in indices] for values in tensors]
        sub_reduce = reduce_sums
        if reduce_sums is not None and len(indices) != len(params):
            sub_reduce = (lambda sums, at, indices=indices: reduce_sums(sums, [indices[k] for k in at]))
        if path == "compiled" and fused is None and not _compiled_step_ready(sub, mask, alpha):
            path = "foreach"  # compiling failed (logged once): the foreach path from now on
        func = _path_function(path)
        sub_buckets = func(*sub, numels=[numels[i] for i in indices] if numels is not None else None,
                           reduce_sums=sub_reduce, **options)
        if len(indices) == len(params):
            buckets += sub_buckets
        else:
            buckets += [([indices[k] for k in positions], a, r) for positions, a, r in sub_buckets]
    return buckets


def route_for(*, native_fits: bool, whole_numel: int, group_numel: int, foreach: bool | None, fused: bool | None,
              like: Tensor) -> str:
    """The dispatch policy (the module docstring) for one tensor: ``"native"``, ``"compiled"``, ``"foreach"`` or
    ``"reference"``. ``native_fits``: the tensor, its gradient and moments are plain fp32 CPU tensors;
    ``whole_numel``: the whole tensor's element count; ``group_numel``: that of all tensors stepped with it;
    ``like``: a tensor of the device and dtype the math runs in."""
    if fused is not False and (foreach is None or fused) and native_fits and _native.enabled() and _native.available():
        return "native"
    on_gpu = like.device.type == "cuda"
    compiled = fused is True
    if fused is None and foreach is None and (on_gpu or group_numel >= AUTO_COMPILE_MIN_NUMEL):
        from . import _compiled  # imports the torch.compile machinery only for groups that may use it

        compiled = _compiled.usable(like)
    if compiled:
        return "compiled" if on_gpu or whole_numel >= COMPILE_MIN_NUMEL else "foreach"
    return "reference" if foreach is False else "foreach"


def _path_function(path: str) -> Callable[..., list[StatisticsBucket]]:
    if path == "native":
        return _native._native_alphaadam
    if path == "compiled":
        from ._compiled import _compiled_alphaadam

        return _compiled_alphaadam
    return _multi_tensor_alphaadam if path == "foreach" else _single_tensor_alphaadam


def _compiled_step_ready(tensors: list[list[Tensor]], mask: str, alpha: str) -> bool:
    """For ``fused=None``: whether the compiled kernels can serve this step, compiling them now if needed.

    Compiling happens before anything is updated, so a failure (no C++ compiler, an unsupported platform or
    dtype) falls back to the foreach path for this and every later step, with one warning.
    """
    from . import _compiled

    if not _compiled.usable(tensors[0][0]):
        return False
    try:
        _compiled.prepare(*[[local(t) for t in values] for values in tensors[:4]], mask=mask, alpha=alpha)
    except Exception as error:  # noqa: BLE001 - any compilation failure: train on with the eager foreach path
        _compiled.disable(error)
        return False
    return True


def _single_tensor_alphaadam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
                             state_steps: Tensors, *, numels: list[int] | None = None,
                             reduce_sums: SumsReducer | None = None, **options: Any) -> list[StatisticsBucket]:
    """The reference loop: one tensor at a time, written as the algorithm box reads."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
    alphas, ratios = [], []
    for index, (param, grad, exp_avg, exp_avg_sq, step_t) in enumerate(
            zip(params, grads, exp_avgs, exp_avg_sqs, state_steps)):
        dtype = compute_dtype(param)
        p = param.to(dtype)
        g = grad.to(dtype)
        g = -g if maximize else g
        m = exp_avg.to(dtype)
        v = exp_avg_sq.to(dtype)

        step_t += 1
        step = _get_value(step_t)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step

        if mask == "async":
            phi = sign_agreement(m, g)  # m is still m_{t-1}
        m = m.lerp(g, 1 - beta1)
        v = v * beta2 + (1 - beta2) * g * g
        u = (m / bias_correction1) / (v.sqrt() / math.sqrt(bias_correction2) + eps)
        if mask == "sync":
            phi = sign_agreement(m, g)
        if unmasked_step(mask, first_step, step):
            phi = torch.ones_like(u)

        step_direction, alpha_t, mask_ratio, moved = masked_step(
            u, phi, alpha, alpha_max, numel=numels[index] if numels else None,
            reduce_sums=(lambda sums: reduce_sums(sums, [index])) if reduce_sums is not None else None)

        p = p * (1 - lr * weight_decay * moved)
        p = p - lr * step_direction

        param.copy_(p)
        exp_avg.copy_(m)
        exp_avg_sq.copy_(v)
        alphas.append(alpha_t)
        ratios.append(mask_ratio)
    if not params:
        return []
    return [(list(range(len(params))), torch.stack(alphas), torch.stack(ratios))]
