"""Per-tensor reductions that stay exact when a parameter is sharded across processes.

alpha and the mask ratio are functions of whole-tensor sums (``sum u^2``, ``sum (phi*u)^2``, ``sum phi``) and of
the whole tensor's element count. When each process holds only a shard, the local sums are added over the
processes that hold the other shards (one ``all_reduce`` of a small ``[n, 3]`` tensor per bucket, issued in the
same order on every rank) and the whole tensor's ``numel`` is used.

Supported here:

- FSDP2 / DTensor parameters (``fully_shard``): the shards are ``Shard(d)`` placements of a device mesh; sums are
  reduced over the mesh dimensions that shard the tensor (``Replicate`` dimensions hold copies and are not summed).
  The optimizer works on ``to_local()`` views, so every collective is an explicit ``all_reduce`` of a plain
  tensor (never ``.item()`` on a partial DTensor, which would silently return the local value).
- An explicit process group for flat partitions (DeepSpeed ZeRO) is handled by the Trainer plugin, which gives the
  optimizer one tensor per param group and its true element count.
"""

from __future__ import annotations

import sys
from typing import Callable

from torch import Tensor

try:  # torch.distributed is optional (e.g. some macOS / mobile builds)
    import torch.distributed as dist
except ImportError:  # pragma: no cover - depends on the torch build
    dist = None

SumsReducer = Callable[[Tensor, list[int]], Tensor]


def is_dtensor(tensor: Tensor) -> bool:
    # A DTensor exists only once torch.distributed.tensor is imported; not importing it here keeps
    # `import hf_alphaadam.optim` about 1.5 s faster.
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(dtensor_module, "DTensor", None)
    return dtensor is not None and isinstance(tensor, dtensor)


def local(tensor: Tensor) -> Tensor:
    """The process-local shard of a DTensor (a view: in-place updates reach the DTensor), else the tensor."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def _reduction_groups(param: Tensor) -> tuple:
    """The process groups over which the local sums of ``param`` must be added (empty: not sharded)."""
    if not is_dtensor(param):
        return ()
    from torch.distributed.tensor import Replicate, Shard

    groups = []
    for mesh_dim, placement in enumerate(param.placements):
        if isinstance(placement, Shard):
            groups.append(param.device_mesh.get_group(mesh_dim))
        elif not isinstance(placement, Replicate):
            raise NotImplementedError(
                f"parameter placement {placement} is not supported: the optimizer needs Shard or Replicate "
                "placements (a Partial parameter has no well-defined element-wise update)")
    return tuple(groups)


def dtensor_sums_reducer(params: list[Tensor]) -> tuple[list[int] | None, SumsReducer | None]:
    """For a list of parameters: the whole-tensor element counts and a reducer of local sums, or ``(None, None)``
    when no parameter is a DTensor.

    The reducer takes ``sums [k, 3]`` for the parameters at ``indices`` (into ``params``) and returns the sums
    added over each parameter's shard groups. Every rank holds the same parameters in the same order, so every
    rank issues the same collectives.
    """
    if not any(is_dtensor(p) for p in params):
        return None, None
    groups_per_param = [_reduction_groups(p) for p in params]
    numels = [p.numel() for p in params]  # a DTensor's numel is the global one

    def reduce(sums: Tensor, indices: list[int]) -> Tensor:
        by_groups: dict[tuple, list[int]] = {}
        for row, index in enumerate(indices):
            if groups_per_param[index]:
                by_groups.setdefault(groups_per_param[index], []).append(row)
        if not by_groups:
            return sums
        sums = sums.clone()
        for groups, rows in by_groups.items():
            selected = sums[rows]
            for group in groups:
                dist.all_reduce(selected, op=dist.ReduceOp.SUM, group=group)
            sums[rows] = selected
        return sums

    return numels, reduce


def partition_sums_reducer(whole_numel: int, process_group=None) -> SumsReducer:
    """Reducer for a param group whose single tensor is a flat partition of one parameter (DeepSpeed ZeRO).

    Every rank holds one contiguous, possibly zero-padded slice; the local sums are added over
    ``process_group`` (the data-parallel group; ``None`` is the default group). Padding has a zero gradient, so it
    never enters the mask, except where a rule sets the mask to 1 everywhere (the first step, ``mask="none"``):
    the count is therefore capped at the whole tensor's element count.
    """
    if dist is None or not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("a param group with 'whole_numel' (a flat ZeRO partition) needs an initialized "
                           "torch.distributed process group")

    def reduce(sums: Tensor, indices: list[int]) -> Tensor:
        sums = sums.clone()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=process_group)
        sums[:, 2] = sums[:, 2].clamp_max(whole_numel)
        return sums

    return reduce
