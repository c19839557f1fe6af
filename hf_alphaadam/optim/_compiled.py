"""A ``torch.compile``d multi-tensor AlphaAdam step: two passes over memory, a bounded number of compiled calls.

An exact AlphaAdam step needs three per-tensor sums (``sum u^2``, ``sum (phi*u)^2``, ``sum phi``) before any
element is updated, so it cannot be one pass like fused AdamW. This path makes two passes:

- pass A (``_sums_norm`` / ``_sums_count``) reads ``m``, ``v``, ``g``, recomputes the new moments, ``u`` and
  ``phi`` in registers and only reduces (no writes). ``alpha="count"`` / ``"none"`` need just ``sum phi``,
  which reads ``m`` and ``g`` only; ``mask="none"`` needs no pass A at all (``sum phi = numel``).
- alpha and the "moved" flag from the ``[n, 3]`` sums (``_masking.step_scale``, batched, after ``reduce_sums``
  for sharded tensors; no host sync).
- pass B (``_apply``) reads ``p``, ``g``, ``m``, ``v`` again, recomputes the same ``phi`` and ``u`` with the same
  operations (for ``mask="async"``, ``phi`` uses ``m_{t-1}``, still in memory since pass A does not write), and
  writes ``p``, ``m``, ``v`` in place.

**Chunks.** The tensors of one (device, dtypes) bucket are cut into chunks of :data:`CHUNK_TENSORS` tensors; one
compiled call handles a whole chunk (one graph whose inputs are lists of flat 1-D tensors). The last chunk is
padded with small scratch tensors, so every call sees lists of the same length and one graph serves every chunk
and every tensor count: per kernel, one graph per (device, dtypes) combination. The sizes are symbolic and
independent (no "duck sizing", which would guard on two tensors having equal sizes, and no 0/1
specialisation: :func:`_shape_rules`), so new tensor sizes never recompile. Per step and bucket the host runs
about 30 eager ops on small tables, ``2 n / CHUNK_TENSORS`` compiled calls instead of ``2 n``, and a few
microseconds of Python per tensor (flat views, the lists); inside each call the generated wrapper still checks
and passes every tensor (about 5-10 us per tensor on a CPU). CUDA-graph capture is not used: the tensors differ
from chunk to chunk, and a captured graph replays fixed addresses.

**Graph inputs.** Every step- or mode-dependent number (bias corrections, the first-step flag, lr, alpha, weight
decay, the sign for ``maximize``, async/sync) is an entry of a small per-tensor table passed as a tensor, so a
changing step count or learning-rate schedule never recompiles.

The math is that of ``_single_tensor_alphaadam`` operation for operation (same order, scalars rounded to the
compute dtype first), so results agree with the reference to rounding of the reductions. bf16 / fp16 parameters
are read and written in their dtype with fp32 math; their moments are whatever the caller passes (fp32 by
default). The Kahan / stochastic bf16 write-back is done by the optimizer around this core on fp32 masters.

The same machinery steps AdaPM's momentum-free blocks (:func:`_compiled_momentum_free`, one pass).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import Tensor

from ._masking import sign_agreement, step_scale
from ._sharding import SumsReducer
from ._step_options import AdamStep, Tensors
from ._state import compute_dtype

logger = logging.getLogger(__name__)

StatisticsBucket = tuple[list[int], Tensor, Tensor]

#: tensors per compiled call, by device type. Larger chunks mean fewer calls per step but a longer first
#: compilation, since inductor generates code per list entry: on a 2-core CPU a chunk of 8 compiles in about
#: 20 s per kernel, 32 in about a minute. On a GPU the generated kernels are the same text for every entry (and
#: compiled once), and the per-call host cost matters more.
CHUNK_TENSORS = {"cpu": 8, "cuda": 32}
#: extra inductor options by device type (e.g. ``{"combo_kernels": True}`` to launch a chunk's kernels together
#: on a GPU; ``benchmarks/device_check.py`` measures that variant). Read when a kernel is first compiled.
INDUCTOR_OPTIONS: dict[str, dict] = {"cpu": {}, "cuda": {}}

# columns of the per-tensor scalar table (compute dtype), shared by both passes
_ONE_MINUS_BETA1, _BETA2, _ONE_MINUS_BETA2, _BC1, _BC2_SQRT, _EPS, _FULL, _ASYNC, _SIGN = range(9)
_N_PRE = 9
# columns of the per-tensor table built after pass A
_LR, _ALPHA, _DECAY = range(3)
_N_POST = 3
# columns of the momentum-free table: -lr * sqrt(bc2), eps * sqrt(bc2), beta2, 1 - beta2, decay, sign
_MF_STEP, _MF_EPS, _MF_BETA2, _MF_ONE_MINUS_BETA2, _MF_DECAY, _MF_SIGN = range(6)
_N_MF = 6


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
    phi = sign_agreement(source, g)
    return torch.where(pre[_FULL] > 0, torch.ones_like(phi), phi)


def _direction(m: Tensor, v: Tensor, pre: Tensor) -> Tensor:
    return (m / pre[_BC1]) / (v.sqrt() / pre[_BC2_SQRT] + pre[_EPS])


def _sums_norm(ms: list[Tensor], vs: list[Tensor], gs: list[Tensor], pre: Tensor, sums: Tensor) -> None:
    """Pass A for alpha="norm": row i of ``sums`` [K, 3] := ``[sum u^2, sum (phi*u)^2, sum phi]``; reads m, v, g.

    The sums are written into an output table (not stacked into a new tensor), which spares the generated code
    a few small allocations per tensor."""
    for i, (m_prev, v_prev, g) in enumerate(zip(ms, vs, gs)):
        m, v, g = _moments(m_prev, v_prev, g, pre[i])
        u = _direction(m, v, pre[i])
        phi = _mask(m_prev, m, g, pre[i])
        sums[i, 0] = u.square().sum()
        sums[i, 1] = (phi * u).square().sum()
        sums[i, 2] = phi.sum()


def _sums_count(ms: list[Tensor], gs: list[Tensor], pre: Tensor, sums: Tensor) -> None:
    """Pass A for alpha="count" / "none": only ``sum phi`` is needed (in all three columns); reads m and g."""
    for i, (m_prev, g) in enumerate(zip(ms, gs)):
        m, _, g = _moments(m_prev, None, g, pre[i])
        sums[i] = _mask(m_prev, m, g, pre[i]).sum()


def _apply(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor], pre: Tensor,
           post: Tensor) -> None:
    """Pass B: weight decay and the masked, rescaled step; writes p, m, v in place (in their own dtypes)."""
    for i, (p, g, m_prev, v_prev) in enumerate(zip(ps, gs, ms, vs)):
        m, v, g = _moments(m_prev, v_prev, g, pre[i])
        u = _direction(m, v, pre[i])
        phi = _mask(m_prev, m, g, pre[i])
        step = post[i, _LR] * (post[i, _ALPHA] * (phi * u))
        p.copy_(p.to(pre.dtype) * post[i, _DECAY] - step)
        m_prev.copy_(m)
        v_prev.copy_(v)


def _momentum_free(ps: list[Tensor], gs: list[Tensor], vs: list[Tensor], table: Tensor) -> None:
    """AdaPM's momentum-free step, ``p (1 - lr wd) - (lr sqrt(bc2)) g / (sqrt(v) + eps sqrt(bc2))``, in place."""
    for i, (p, g, v_prev) in enumerate(zip(ps, gs, vs)):
        row = table[i]
        g = g.to(table.dtype) * row[_MF_SIGN]
        v = v_prev.to(table.dtype) * row[_MF_BETA2] + row[_MF_ONE_MINUS_BETA2] * g * g
        direction = g / (v.sqrt() + row[_MF_EPS])
        p.copy_(p.to(table.dtype) * row[_MF_DECAY] + direction * row[_MF_STEP])
        v_prev.copy_(v)


_FUNCTIONS: dict[str, Callable[..., Tensor | None]] = {
    "sums_norm": _sums_norm, "sums_count": _sums_count, "apply": _apply, "momentum_free": _momentum_free}
# how many entries of a kernel's arguments are tensor lists (the rest are tables)
_LISTS = {"sums_norm": 3, "sums_count": 2, "apply": 4, "momentum_free": 3}
_KERNELS: dict[str, Callable[..., Tensor | None]] = {}
_WARM: set[tuple] = set()
_LOCK = threading.RLock()
# the size of the tensors a kernel is first compiled with: inductor decides at compile time, from the example's
# sizes, whether the generated loops are split over threads (OpenMP); small first tensors (biases) would give
# serial loops for every size, so the first compilation runs on scratch tensors this large
_WARMUP_NUMEL = 1 << 16


@contextlib.contextmanager
def _shape_rules() -> Iterator[None]:
    """Symbolic-shape rules under which one graph serves tensors of any sizes.

    ``use_duck_shape=False``: tensors of equal size get separate symbols (no guard that two sizes stay equal);
    ``backed_size_oblivious=True``: sizes 0 and 1 are not specialised (a 1-element tensor in a chunk would
    otherwise compile a graph of its own). Only tracing reads these settings; they are set around each call.
    Grad mode is part of a graph's guards: the kernels always run under ``no_grad`` (as in ``step()``).
    """
    from torch.fx.experimental import _config as shape_config

    with shape_config.patch(use_duck_shape=False, backed_size_oblivious=True), torch.no_grad():
        yield


def _kernel(name: str, device_type: str) -> Callable[..., Tensor | None]:
    """The compiled kernel ``name`` for a device type, built on first use (module-level: once per process)."""
    key = f"{name}/{device_type}"
    kernel = _KERNELS.get(key)
    if kernel is None:
        with _LOCK:
            kernel = _KERNELS.get(key)
            if kernel is None:
                kernel = torch.compile(_FUNCTIONS[name], dynamic=True, fullgraph=True,
                                       options=dict(INDUCTOR_OPTIONS.get(device_type, {})) or None)
                _KERNELS[key] = kernel
    return kernel


def _run(name: str, *args: list[Tensor] | Tensor) -> Tensor | None:
    """Call kernel ``name`` on one chunk; the first call for a dtype / device combination compiles it."""
    _ensure_compiled(name, args)
    return _kernel(name, args[0][0].device.type)(*args)


def _chunk_size(device: torch.device) -> int:
    return CHUNK_TENSORS.get(device.type, CHUNK_TENSORS["cpu"])


def _signature(name: str, args: tuple) -> tuple:
    lists, tables = args[:_LISTS[name]], args[_LISTS[name]:]
    return (name, len(lists[0])) + tuple((t[0].dtype, t[0].device) for t in lists) + tuple(
        (t.dtype, t.device) for t in tables)


def _ensure_compiled(name: str, args: tuple) -> None:
    key = _signature(name, args)
    if key not in _WARM:
        with _LOCK:
            if key not in _WARM:
                _warm_up(name, args)
                _WARM.add(key)


def _warm_up(name: str, args: tuple) -> None:
    """Compile kernel ``name`` for arguments like ``args`` on large scratch tensors (see ``_WARMUP_NUMEL``)."""
    n_lists = _LISTS[name]
    dummies: list = [[torch.zeros(_WARMUP_NUMEL, dtype=t[0].dtype, device=t[0].device) for _ in t]
                     for t in args[:n_lists]]
    dummies += [torch.ones_like(t) for t in args[n_lists:]]
    started = time.perf_counter()
    with _shape_rules():
        _kernel(name, args[0][0].device.type)(*dummies)
    logger.info("compiled the AlphaAdam kernel %s (%d tensors per call) for %s in %.1f s", name, len(args[0]),
                [str(t[0].dtype).removeprefix("torch.") for t in args[:n_lists]], time.perf_counter() - started)


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
    for (p, g, m, v), _ in _buckets([params, grads, exp_avgs, exp_avg_sqs]):
        size = _chunk_size(p[0].device)
        chunk = [[t] * size for t in (p[0], g[0], m[0], v[0])]
        pre = torch.ones(size, _N_PRE, dtype=compute_dtype(p[0]), device=p[0].device)
        post = pre[:, :_N_POST].clone()
        sums = torch.empty(size, 3, dtype=pre.dtype, device=pre.device)
        arguments = {"apply": (*chunk, pre, post), "sums_norm": (chunk[2], chunk[3], chunk[1], pre, sums),
                     "sums_count": (chunk[2], chunk[1], pre, sums)}
        for name in names:
            _ensure_compiled(name, arguments[name])


def _buckets(tensor_lists: list[list[Tensor]]) -> list[tuple[list[list[Tensor]], list[int]]]:
    """The lists split by (device, dtype of every list): each bucket is ``(lists, positions in the input)``.

    One compiled graph is specialised to its inputs' dtypes, so a chunk must not mix them (bf16 gradients of fp32
    masters next to fp32 ones, say)."""
    groups: dict[tuple, list[int]] = {}
    for i, tensors in enumerate(zip(*tensor_lists)):
        key = (tensors[0].device,) + tuple(t.dtype for t in tensors)
        groups.setdefault(key, []).append(i)
    return [([[values[i] for i in indices] for values in tensor_lists], indices) for indices in groups.values()]


def _scratch(like: Tensor) -> Tensor:
    """A tiny tensor padding a chunk: written by pass B, never read back."""
    return torch.zeros(1, dtype=like.dtype, device=like.device)


def _chunks(lists: list[list[Tensor]], size: int) -> list[list[list[Tensor]]]:
    """The flat tensors cut into chunks of exactly ``size`` tensors, the last padded with scratch tensors."""
    n = len(lists[0])
    padded = -n % size
    full = [values + [_scratch(values[0]) for _ in range(padded)] for values in lists]
    return [[values[start:start + size] for values in full] for start in range(0, n + padded, size)]


def _padded_table(rows: Tensor, size: int) -> list[Tensor]:
    """``[n, c]`` rows padded with ones (finite numbers for the scratch entries) to a multiple of ``size`` rows,
    cut into one ``[size, c]`` table per chunk.

    Each table is a copy, not a view: dynamo guards on a view's storage offset (offset 0 and the others would
    compile separate graphs) and on its base."""
    padding = -rows.shape[0] % size
    if padding:
        rows = torch.cat([rows, rows.new_ones(padding, rows.shape[1])])
    return [table.clone() for table in rows.view(-1, size, rows.shape[1])]


def _step_scalars(steps: Tensor, beta: float) -> Tensor:
    """``1 - beta^t`` per tensor, in fp64 (rounded once to the compute dtype by the caller, as the reference's
    Python floats are)."""
    return 1 - torch.pow(beta, steps)


def _compiled_alphaadam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
                        state_steps: Tensors, *, numels: list[int] | None = None,
                        reduce_sums: SumsReducer | None = None, **options: Any) -> list[StatisticsBucket]:
    """The compiled two-pass path for tensors of any size; same arguments, in-place effects and return value as
    ``_multi_tensor_alphaadam``."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
    buckets: list[StatisticsBucket] = []
    with _shape_rules():
        for (device_params, device_grads, device_m, device_v, device_steps), indices in _buckets(
                [params, grads, exp_avgs, exp_avg_sqs, state_steps]):
            dtype = compute_dtype(device_params[0])
            device = device_params[0].device
            n = len(device_params)
            size = _chunk_size(device)

            torch._foreach_add_(device_steps, 1)
            steps = torch.stack(device_steps).reshape(-1).to(device=device, dtype=torch.float64)
            if mask == "none":
                full = torch.ones_like(steps)
            elif first_step == "full":
                full = (steps == 1).to(torch.float64)
            else:
                full = torch.zeros_like(steps)
            constants = torch.tensor([1 - beta1, beta2, 1 - beta2, eps, 1.0 if mask == "async" else 0.0,
                                      -1.0 if maximize else 1.0], dtype=torch.float64, device=device).expand(n, 6)
            pre = _padded_table(torch.stack(
                [constants[:, 0], constants[:, 1], constants[:, 2], _step_scalars(steps, beta1),
                 torch.sqrt(_step_scalars(steps, beta2)), constants[:, 3], full, constants[:, 4], constants[:, 5]],
                dim=1).to(dtype), size)

            flat = [_as_flat(t) for t in zip(device_params, device_grads, device_m, device_v)]
            chunks = _chunks([list(column) for column in zip(*flat)], size)
            local_numel = torch.tensor([t.numel() for t in device_params], dtype=dtype, device=device)
            numel = (torch.tensor([numels[i] for i in indices], dtype=dtype, device=device) if numels
                     else local_numel)
            if mask == "none":
                # phi = 1: sum phi = numel, and alpha "norm" is ||u|| / ||u|| = 1 without reading u
                ones = torch.ones_like(local_numel)
                sums = torch.stack([ones, ones, local_numel], dim=-1)
            else:
                tables = [torch.empty(size, 3, dtype=dtype, device=device) for _ in chunks]
                for (_, g, m, v), pre_table, sums_table in zip(chunks, pre, tables):
                    if alpha == "norm":
                        _run("sums_norm", m, v, g, pre_table, sums_table)
                    else:
                        _run("sums_count", m, g, pre_table, sums_table)
                sums = torch.cat(tables)[:n]
            if reduce_sums is not None:
                sums = reduce_sums(sums, list(indices))

            scale = step_scale(sums, numel, alpha, alpha_max)
            alpha_values, moved = scale.alpha, scale.moved
            lr_column = (lr.to(device=device, dtype=dtype) if isinstance(lr, Tensor)
                         else torch.tensor(lr, dtype=dtype, device=device)).reshape(()).expand(n)
            # as the reference: decay = 1 - (lr * wd) * moved, rounded in the compute dtype
            decay = 1 - (lr * weight_decay) * moved
            post = _padded_table(torch.stack([lr_column, alpha_values, decay], dim=1).to(dtype), size)

            for (p, g, m, v), pre_table, post_table in zip(chunks, pre, post):
                _run("apply", p, g, m, v, pre_table, post_table)
            for originals, computed in zip(zip(device_params, device_m, device_v), flat):
                _copy_back_if_needed(originals, (computed[0], computed[2], computed[3]))
            buckets.append((list(indices), scale.reported, scale.mask_ratio))
    return buckets


def _compiled_momentum_free(params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor],
                            state_steps: list[Tensor], *, lr: float | Tensor, beta2: float, eps: float,
                            weight_decay: float, maximize: bool) -> None:
    """AdaPM's momentum-free blocks through one compiled pass per chunk; the same arguments and effects as
    ``_adapm_fast._foreach_momentum_free``: ``p = p (1 - lr wd) - lr g / (sqrt(v / bc2) + eps)``, ``v`` Adam's EMA of
    ``g^2`` (bias correction folded into the scalars as there)."""
    with _shape_rules():
        for (device_params, device_grads, device_v, device_steps), _ in _buckets(
                [params, grads, exp_avg_sqs, state_steps]):
            dtype = compute_dtype(device_params[0])
            device = device_params[0].device
            n = len(device_params)
            torch._foreach_add_(device_steps, 1)
            steps = torch.stack(device_steps).reshape(-1).to(device=device, dtype=torch.float64)
            bc2_sqrt = torch.sqrt(_step_scalars(steps, beta2))
            lr_value = (lr.to(device=device, dtype=torch.float64) if isinstance(lr, Tensor)
                        else torch.tensor(lr, dtype=torch.float64, device=device)).reshape(())
            constants = torch.tensor([beta2, 1 - beta2, -1.0 if maximize else 1.0], dtype=torch.float64,
                                     device=device).expand(n, 3)
            # decay rounded as the foreach path's Python float 1 - lr * wd
            decay = (1 - lr_value * weight_decay).expand(n)
            table = _padded_table(torch.stack([-lr_value * bc2_sqrt, eps * bc2_sqrt, constants[:, 0],
                                               constants[:, 1], decay, constants[:, 2]], dim=1).to(dtype),
                                  _chunk_size(device))
            flat = [_as_flat(t) for t in zip(device_params, device_grads, device_v)]
            for (p, g, v), rows in zip(_chunks([list(column) for column in zip(*flat)], _chunk_size(device)), table):
                _run("momentum_free", p, g, v, rows)
            for originals, computed in zip(zip(device_params, device_v), flat):
                _copy_back_if_needed(originals, (computed[0], computed[2]))


def _as_flat(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """1-D views of the tensors; contiguous copies (written back after the step) for non-contiguous ones."""
    return tuple(_flat(t if t.is_contiguous() else t.contiguous()) for t in tensors)


def _flat(tensor: Tensor) -> Tensor:
    # a view of a Parameter requires grad even under no_grad, and dynamo guards on requires_grad: a chunk mixing
    # parameters with scratch tensors (or with the fp32 masters of bf16 parameters) would compile a graph per
    # pattern. detach() only where needed: it costs a few microseconds per tensor.
    flat = tensor.view(-1)
    return flat.detach() if flat.requires_grad else flat


def _copy_back_if_needed(originals: tuple[Tensor, ...], computed: tuple[Tensor, ...]) -> None:
    """Write the results of non-contiguous tensors back from their contiguous working copies."""
    for original, result in zip(originals, computed):
        if not original.is_contiguous():
            original.copy_(result.view(original.shape))
