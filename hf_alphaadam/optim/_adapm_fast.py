"""AdaPM's fast path: the reference's math (``_adapm_paths.py``) with fewer passes over memory.

- Element-wise tensors take the route their plan records: full-momentum Adam tensors the shared Adam engine
  (``_adam_engine.py``) on it, momentum-free ones the native kernel, the compiled kernels (GPU) or ``_foreach_*``
  ops (:func:`_momentum_free_path`).
- Low-rank / compact tensors run one at a time (:func:`_structured_step`): full-size state and scratch kept in the
  parameter's memory order (a GPT-2 ``Conv1D`` weight is the transpose of its canonical matrix; state saved in the
  other order is re-laid out on the next step), ``m~`` as one ``addmm``, bias corrections folded into scalars, no
  ``u`` / ``phi`` without a mask and alpha, and on the CPU the element-wise passes run over cache-sized blocks
  (:data:`CACHE_BLOCK_NUMEL`) with reusable scratch buffers. On the CPU they also run side by side, whole tensors
  in ``tensor_threads`` worker threads with single-threaded torch kernels each (``_tensor_threads.py``): their
  small matrix products do not get faster with more MKL threads.

Results agree with the reference loop to rounding (tested).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_value

from . import _native, _tensor_threads
from ._adam_engine import alphaadam
from ._adapm_paths import StatisticsBucket, _canonical, _refit, _residual_scale
from ._masking import sign_agreement, step_scale, unmasked_step
from ._policy import MomentumPlan
from ._sharding import SumsReducer, local
from ._step_options import AdamStep, Tensors
from ._state import as_dtype, compute_dtype, copy_back


def _multi_tensor_adapm(params: Tensors, grads: Tensors, states: list[dict[str, Any]], plans: list[MomentumPlan], *,
                        residual: str, residual_clip: float, refit_iters: int, numels: list[int] | None = None,
                        reduce_sums: SumsReducer | None = None, workspace: dict[Any, Tensor] | None = None,
                        tensor_threads: int | None = 1,
                        routes: list[str] | None = None, **options: Any) -> list[StatisticsBucket]:
    """The fast path: the element-wise tensors on their ``routes`` (the module docstring), and a per-tensor routine
    with stacked row slices for low-rank / compact tensors."""
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
    buckets: list[StatisticsBucket] = []
    full = [i for i, plan in enumerate(plans) if plan.kind == "adam_full"]
    none = [i for i, plan in enumerate(plans) if plan.kind == "adam_none"]
    structured = [i for i, plan in enumerate(plans) if plan.kind == "structured"]
    if routes is None:  # a direct call: the native kernel where every tensor of a kind fits it
        routes = [""] * len(plans)
        for kind, indices in (("adam_full", full), ("adam_none", none)):
            fits = _native.applies(*[[local(params[i]) for i in indices], [local(grads[i]) for i in indices],
                                     [local(states[i]["exp_avg_sq"]) for i in indices]])
            for i in indices:
                routes[i] = "native" if fits else "foreach"
    for route in ("native", "compiled", "foreach"):  # the shared Adam engine on each tensor's route
        at = [i for i in full if routes[i] == route]
        if not at:
            continue
        full_buckets = alphaadam(
            [local(params[i]) for i in at], [local(grads[i]) for i in at], [local(states[i]["exp_avg"]) for i in at],
            [local(states[i]["exp_avg_sq"]) for i in at], [states[i]["step"] for i in at],
            numels=[numels[full.index(i)] for i in at] if numels else None,
            reduce_sums=None if reduce_sums is None else (
                lambda sums, k, at=at: reduce_sums(sums, [full.index(at[j]) for j in k])), route=route, **options)
        for positions, alpha_values, ratio in full_buckets:
            buckets.append(([at[i] for i in positions], alpha_values.float(), ratio.float()))
    for route in ("native", "compiled", "foreach"):
        at = [i for i in none if routes[i] == route]
        if not at:
            continue
        momentum_free = _momentum_free_path(route)
        momentum_free([local(params[i]) for i in at], [local(grads[i]) for i in at],
                      [local(states[i]["exp_avg_sq"]) for i in at], [states[i]["step"] for i in at], lr=lr,
                      beta2=beta2, eps=eps, weight_decay=weight_decay, maximize=maximize)
        ones = torch.ones(len(at), device=params[at[0]].device)
        buckets.append((at, ones, ones.clone()))
    if structured:
        threads = _tensor_threads.resolve_threads(tensor_threads, [params[i] for i in structured])

        def step_one(k: int, share: int) -> tuple[Tensor, Tensor]:
            i = structured[k]  # each worker (share) has its own scratch buffers
            scratch = workspace if workspace is None or threads == 1 else workspace.setdefault(("share", share), {})
            return _structured_step(params[i], grads[i], states[i], plans[i], residual=residual,
                                    residual_clip=residual_clip, refit_iters=refit_iters, workspace=scratch, **options)

        results = _tensor_threads.map_tensors(step_one, len(structured),
                                              [params[i].numel() for i in structured], threads)
        buckets.append((structured, torch.stack([a.float() for a, _ in results]),
                        torch.stack([r.float() for _, r in results])))
    return buckets


def _momentum_free_path(route: str) -> Callable[..., None]:
    """The momentum-free Adam step of a route: the native kernel, the compiled kernels or ``_foreach_*`` ops."""
    if route == "native":
        return _native.momentum_free_adam
    if route == "compiled":
        from ._compiled import _compiled_momentum_free

        return _compiled_momentum_free
    return _foreach_momentum_free


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
            p, g, v = as_dtype(p_orig, dtype), as_dtype(g_orig, dtype), as_dtype(v_orig, dtype)
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
            copy_back(p_orig, p)
            copy_back(v_orig, v)


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


def _canonical_blocks(plan: MomentumPlan, device: torch.device) -> list[tuple[slice, slice]]:
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


def _empty_canonical(rows: int, cols: int, plan: MomentumPlan, like: Tensor,
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


def _in_layout(state: dict[str, Any], key: str, plan: MomentumPlan) -> Tensor:
    """``state[key]`` (a 2-D full-size state matrix), re-laid out once in place of the stored one if it is not in
    the parameter's canonical layout (state saved by an older version, or moved by hand); values unchanged."""
    value = state[key]
    if plan.transposed and value.dim() == 2 and value.shape[0] > 1 and value.stride(0) != 1:
        relaid = torch.empty(value.shape[1], value.shape[0], dtype=value.dtype, device=value.device).mT
        relaid.copy_(value)
        state[key] = value = relaid
    return value


def _compact_mean_squares(G: Tensor, plan: MomentumPlan) -> Tensor:
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


def _structured_step(param: Tensor, grad: Tensor, state: dict[str, Any], plan: MomentumPlan, *, residual: str,
                     residual_clip: float, refit_iters: int, workspace: dict[Any, Tensor] | None = None,
                     **options: Any) -> tuple[Tensor, Tensor]:
    """One low-rank / compact tensor, the reference's math with fewer passes over memory.

    Everything full-size is kept in the parameter's canonical layout (see :func:`_empty_canonical`); a low-rank
    block's ``m~ = beta1 L R + (1 - beta1) G`` is one ``addmm`` into its buffer; the bias corrections are folded
    into scalars (``u = (s / c) m / (sqrt(V) + eps s)`` with ``s = sqrt(bc2)`` for Adam's V, or ``s = 1`` with the
    compact V's per-row denominator). The element-wise tail runs block by block (:func:`_canonical_blocks`): V's
    update, the denominator and, without a mask and with ``alpha="none"`` (AdaPM's default), the step as one
    ``addcdiv_`` per row segment straight from each segment's momentum (no ``u``, no ``phi``). Otherwise pass 1
    writes ``phi * u`` and the three sums of ``_masking.masked_step`` block by block, alpha comes from
    ``_masking.step_scale``, and pass 2 applies ``W (1 - lr wd moved) - (lr alpha) (phi * u)``.
    """
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
    dtype = compute_dtype(param)
    G = _canonical(grad if grad.dtype == dtype else grad.to(dtype), plan)
    if maximize:
        G = torch.neg(G)
    step_t = state["step"]
    step_t += 1
    step = _get_value(step_t)
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    unmasked = unmasked_step(mask, first_step, step)
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
                m_prev = torch.mm(lefts[k], rights[k], out=target)
                phi_k = sign_agreement(m_prev, Gs)
                target.mul_(beta1).add_(Gs, alpha=1 - beta1)
            else:  # m~ = beta1 L R + (1 - beta1) G in one pass
                torch.addmm(Gs, lefts[k], rights[k], beta=1 - beta1, alpha=beta1, out=target)
            L, R = _refit(target, lefts[k], rights[k], refit_iters)
            state["lowrank_left"][k].copy_(L)
            state["lowrank_right"][k].copy_(R)
            if residual == "none":
                torch.mm(L, R, out=target)
            elif residual == "clip":
                approx = torch.mm(L, R, out=_empty_canonical(seg_rows, cols, plan, G, workspace, "approx"))
                rest = target.sub_(approx)
                rest.mul_(_residual_scale(rest, approx, residual_clip)).add_(approx)
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
        scale = step_scale(sums, whole, alpha, alpha_max)
        decay = 1 - lr * weight_decay * scale.moved[0]
        factor = (-lr * scale.alpha[0]).to(dtype)
        for rs, cs in blocks:
            P_b = P[rs, cs]
            P_b.mul_(decay).addcmul_(U[rs, cs], factor)
        alpha_t, mask_ratio = scale.reported[0], scale.mask_ratio[0]
    if V is not None and V is not stored_v:
        stored_v.copy_(V)
    if not in_place:
        param.copy_(P.mT if plan.transposed else P.reshape(plan.shape))
    return alpha_t, mask_ratio
