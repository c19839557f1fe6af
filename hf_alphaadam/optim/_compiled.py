"""A ``torch.compile``d AlphaAdam step: two fused passes over memory per tensor.

An exact AlphaAdam step needs three per-tensor sums (``sum u^2``, ``sum (phi*u)^2``, ``sum phi``) before any
element is updated, so it cannot be one pass like fused AdamW. This path runs, per parameter tensor (flattened
1-D views, one dynamic-shape compilation serving every size):

- pass A (``_sums_norm`` / ``_sums_count``) reads ``m``, ``v``, ``g``, recomputes the new moments, ``u`` and
  ``phi`` in registers and only reduces (no writes). ``alpha="count"`` / ``"none"`` need just ``sum phi``,
  which reads ``m`` and ``g`` only; ``mask="none"`` needs no pass A at all (``sum phi = numel``).
- alpha and the "moved" flag from the ``[n, 3]`` sums (:func:`alpha_from_sums`, batched; no host sync).
- pass B (``_apply``) reads ``p``, ``g``, ``m``, ``v`` again, recomputes the same ``phi`` and ``u`` with the same
  operations (for ``mask="async"``, ``phi`` uses ``m_{t-1}``, still in memory since pass A does not write), and
  writes ``p``, ``m``, ``v`` in place.

About 10 reads/writes per element (7 for ``mask="none"``) against ~15 passes of the ``torch._foreach_*`` path.
Every step-dependent or mode-dependent number (bias corrections, first-step flag, lr, alpha, weight decay,
sign for ``maximize``, async/sync) is an entry of a small per-tensor scalar table passed as a tensor, so the
kernels are compiled once per dtype combination and never recompiled as the step count or lr changes.

The math is that of ``_single_tensor_alphaadam`` operation for operation (same order, scalars rounded to the
compute dtype first), so results agree with the reference to rounding of the reductions.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._masking import alpha_from_sums, reported_alpha
from ._sharding import SumsReducer
from ._state import compute_dtype

logger = logging.getLogger(__name__)

StatisticsBucket = tuple[list[int], Tensor, Tensor]

# columns of the per-tensor scalar table (compute dtype), shared by both passes
_ONE_MINUS_BETA1, _BETA2, _ONE_MINUS_BETA2, _BC1, _BC2_SQRT, _EPS, _FULL, _ASYNC, _SIGN = range(9)
_N_PRE = 9
# columns of the per-tensor table built after pass A
_LR, _ALPHA, _DECAY = range(3)


def _moments(m_prev: Tensor, v_prev: Tensor | None, g: Tensor, pre: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
    """(m, v, g) of step t in the compute dtype, exactly as the reference loop forms them."""
    dtype = pre.dtype
    g = g.to(dtype) * pre[_SIGN]  # maximize: sign = -1 (exact negation)
    m = m_prev.to(dtype).lerp(g, pre[_ONE_MINUS_BETA1])
    v = None if v_prev is None else v_prev.to(dtype) * pre[_BETA2] + pre[_ONE_MINUS_BETA2] * g * g
    return m, v, g


def _mask(m_prev: Tensor, m: Tensor, g: Tensor, pre: Tensor) -> Tensor:
    """phi as 0/1 in the compute dtype: async uses m_{t-1}, sync m_t; all ones where ``full``."""
    dtype = pre.dtype
    source = torch.where(pre[_ASYNC] > 0, m_prev.to(dtype), m)
    phi = (source * g > 0).to(dtype)
    return torch.where(pre[_FULL] > 0, torch.ones_like(phi), phi)


def _direction(m: Tensor, v: Tensor, pre: Tensor) -> Tensor:
    return (m / pre[_BC1]) / (v.sqrt() / pre[_BC2_SQRT] + pre[_EPS])


def _sums_norm(m_prev: Tensor, v_prev: Tensor, g: Tensor, pre: Tensor) -> Tensor:
    """Pass A for alpha="norm": ``[sum u^2, sum (phi*u)^2, sum phi]``; reads m, v, g, writes nothing."""
    m, v, g = _moments(m_prev, v_prev, g, pre)
    u = _direction(m, v, pre)
    phi = _mask(m_prev, m, g, pre)
    masked = phi * u
    return torch.stack([u.square().sum(), masked.square().sum(), phi.sum()])


def _sums_count(m_prev: Tensor, g: Tensor, pre: Tensor) -> Tensor:
    """Pass A for alpha="count" / "none": only ``sum phi`` is needed; reads m and g (not v)."""
    m, _, g = _moments(m_prev, None, g, pre)
    phi = _mask(m_prev, m, g, pre)
    count = phi.sum()
    return torch.stack([count, count, count])


def _apply(p: Tensor, g: Tensor, m_prev: Tensor, v_prev: Tensor, pre: Tensor, post: Tensor) -> None:
    """Pass B: weight decay and the masked, rescaled step; writes p, m, v in place (in their own dtypes)."""
    m, v, g = _moments(m_prev, v_prev, g, pre)
    u = _direction(m, v, pre)
    phi = _mask(m_prev, m, g, pre)
    step = post[_LR] * (post[_ALPHA] * (phi * u))
    new_p = p.to(pre.dtype) * post[_DECAY] - step
    p.copy_(new_p)
    m_prev.copy_(m)
    v_prev.copy_(v)


_KERNELS: dict[str, Callable[..., Tensor | None]] = {}
_WARM: set[tuple] = set()
_LOCK = threading.RLock()
_FUNCTIONS = {"sums_norm": _sums_norm, "sums_count": _sums_count, "apply": _apply}
# the size of the example a kernel is first compiled with: inductor decides at compile time, from the example's
# size, whether the generated loop is split over threads (OpenMP); a small first tensor (a bias) would give a
# serial kernel for every size, so the first compilation for each dtype combination runs on a dummy this large
_WARMUP_NUMEL = 1 << 16


def _kernel(name: str) -> Callable[..., Tensor | None]:
    """The compiled kernel ``name``, built on first use (module-level: compiled once per process)."""
    kernel = _KERNELS.get(name)
    if kernel is None:
        with _LOCK:
            kernel = _KERNELS.get(name)
            if kernel is None:
                kernel = torch.compile(_FUNCTIONS[name], dynamic=True, fullgraph=True)
                _KERNELS[name] = kernel
    return kernel


def _run(name: str, *args: Tensor) -> Tensor | None:
    """Call kernel ``name``; the first call for a dtype / device combination compiles it on a large dummy."""
    _ensure_compiled(name, args)
    return _kernel(name)(*args)


def _ensure_compiled(name: str, args: tuple[Tensor, ...]) -> None:
    key = (name,) + tuple((t.dtype, t.device) for t in args)
    if key not in _WARM:
        with _LOCK:
            if key not in _WARM:
                _warm_up(name, args)
                _WARM.add(key)


def _warm_up(name: str, args: tuple[Tensor, ...]) -> None:
    if name == "apply":  # (p, g, m, v, pre, post): pre / post are small tables, p .. v the flat tensors
        dummies = [torch.zeros(_WARMUP_NUMEL, dtype=t.dtype, device=t.device) for t in args[:4]]
        dummies += [torch.ones_like(args[4]), torch.ones_like(args[5])]
    else:  # (m, [v,] g, pre)
        dummies = [torch.zeros(_WARMUP_NUMEL, dtype=t.dtype, device=t.device) for t in args[:-1]]
        dummies.append(torch.ones_like(args[-1]))
    started = time.perf_counter()
    _kernel(name)(*dummies)
    logger.debug("compiled AlphaAdam kernel %s for %s in %.1f s", name,
                 [str(t.dtype).removeprefix("torch.") for t in args], time.perf_counter() - started)


# why the compiled path is off in this process (fused=None falls back to foreach), once compiling failed
_DISABLED: str | None = None


def usable(example: Tensor) -> bool:
    """Whether ``fused=None`` may use the compiled kernels for tensors like ``example``."""
    return (_DISABLED is None and example.device.type in ("cpu", "cuda") and not torch.compiler.is_compiling()
            and example.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64))


def disable(error: BaseException) -> None:
    """Turn the compiled path off for this process after a failed compilation (logged once)."""
    global _DISABLED
    if _DISABLED is None:
        logger.warning("AlphaAdam: compiling the fused step failed (%s: %s); using the foreach path. Pass "
                       "fused=False to skip the attempt, or fused=True to see the error.", type(error).__name__,
                       str(error).splitlines()[0] if str(error) else "")
    _DISABLED = f"{type(error).__name__}: {error}"


def prepare(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], *,
            mask: str, alpha: str) -> None:
    """Compile, now, every kernel a step over these tensors will call (raises if compilation fails)."""
    names = ["apply"] + ([] if mask == "none" else ["sums_norm" if alpha == "norm" else "sums_count"])
    combinations = {(p.dtype, g.dtype, m.dtype, v.dtype, p.device): (p, g, m, v)
                    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs)}
    for p, g, m, v in combinations.values():  # kernels are compiled per dtype / device combination
        table = torch.ones(_N_PRE, dtype=compute_dtype(p), device=p.device)
        arguments = {"apply": (p, g, m, v, table, table[:3]), "sums_norm": (m, v, g, table),
                     "sums_count": (m, g, table)}
        for name in names:
            _ensure_compiled(name, arguments[name])


def _rows(table: Tensor) -> list[Tensor]:
    """The rows of a small table as separate tensors: a view input would make dynamo guard on its base and
    storage offset (one recompilation per row position)."""
    return [row.clone() for row in table]


def _compiled_alphaadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
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
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
) -> list[StatisticsBucket]:
    """The compiled two-pass path; same arguments, in-place effects and return value as ``_multi_tensor_alphaadam``."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, state_steps], with_indices=True)
    buckets: list[StatisticsBucket] = []
    for (device_params, device_grads, device_m, device_v, device_steps), indices in grouped.values():
        dtype = compute_dtype(device_params[0])
        device = device_params[0].device
        n = len(device_params)

        torch._foreach_add_(device_steps, 1)
        # per-tensor step-dependent scalars, computed in fp64 then rounded once to the compute dtype (as the
        # reference's Python floats are), without reading the steps on the host
        steps = torch.stack([s.reshape(()) for s in device_steps]).to(device=device, dtype=torch.float64)
        bc1 = 1 - torch.pow(beta1, steps)
        bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, steps))
        if mask == "none":
            full = torch.ones_like(steps)
        elif first_step == "full":
            full = (steps == 1).to(torch.float64)
        else:
            full = torch.zeros_like(steps)
        constants = torch.tensor([1 - beta1, beta2, 1 - beta2, eps, 1.0 if mask == "async" else 0.0,
                                  -1.0 if maximize else 1.0], dtype=torch.float64, device=device).expand(n, 6)
        pre = torch.stack([constants[:, 0], constants[:, 1], constants[:, 2], bc1, bc2_sqrt, constants[:, 3], full,
                           constants[:, 4], constants[:, 5]], dim=1).to(dtype)
        pre_rows = _rows(pre)

        flat = [_as_flat(t) for t in zip(device_params, device_grads, device_m, device_v)]
        local_numel = torch.tensor([t.numel() for t in device_params], dtype=dtype, device=device)
        numel = (torch.tensor([numels[i] for i in indices], dtype=dtype, device=device) if numels
                 else local_numel)
        if mask == "none":
            # phi = 1: sum phi = numel, and alpha "norm" is ||u|| / ||u|| = 1 without reading u
            ones = torch.ones_like(local_numel)
            sums = torch.stack([ones, ones, local_numel], dim=-1)
        elif alpha == "norm":
            sums = torch.stack([_run("sums_norm", m, v, g, row) for (_, g, m, v), row in zip(flat, pre_rows)])
        else:
            sums = torch.stack([_run("sums_count", m, g, row) for (_, g, m, _), row in zip(flat, pre_rows)])
        if reduce_sums is not None:
            sums = reduce_sums(sums, list(indices))

        alpha_values = alpha_from_sums(sums, numel, alpha, alpha_max)
        moved = (sums[:, 2] > 0).to(dtype)
        lr_column = (lr.to(device=device, dtype=dtype) if isinstance(lr, Tensor)
                     else torch.tensor(lr, dtype=dtype, device=device)).reshape(()).expand(n)
        # as the reference: decay = 1 - (lr * wd) * moved, rounded in the compute dtype
        decay = 1 - (lr * weight_decay) * moved
        post = torch.stack([lr_column, alpha_values, decay], dim=1).to(dtype)

        for (p, g, m, v), pre_row, post_row in zip(flat, pre_rows, _rows(post)):
            _run("apply", p, g, m, v, pre_row, post_row)
        for originals, computed in zip(zip(device_params, device_m, device_v), flat):
            _copy_back_if_needed(originals, (computed[0], computed[2], computed[3]))
        buckets.append((list(indices), reported_alpha(sums, alpha_values, alpha), sums[:, 2] / numel))
    return buckets


def _as_flat(tensors: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """1-D views of (p, g, m, v); contiguous copies (written back after the step) for non-contiguous tensors."""
    # detach(): a 1-D alias that is not a view, so the compiled kernels do not guard on the base's shape
    return tuple((t if t.is_contiguous() else t.contiguous()).view(-1).detach() for t in tensors)


def _copy_back_if_needed(originals: tuple[Tensor, ...], computed: tuple[Tensor, ...]) -> None:
    """Write the results of non-contiguous (p, m, v) back from their contiguous working copies."""
    for original, result in zip(originals, computed):
        if not original.is_contiguous():
            original.copy_(result.view(original.shape))
