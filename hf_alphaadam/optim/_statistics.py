"""The per-tensor alpha / mask-ratio statistics every optimizer of the package keeps, and how they are read.

Statistics are kept as device tensors, written by ``step()`` without a host sync; :meth:`StatisticsMixin.statistics`
is where they are read (and where the sync happens), so a caller decides how often to pay for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._sharding import local


def _finite(tensor: Tensor) -> Tensor:
    """1.0 if ``tensor`` holds no NaN / Inf (its largest magnitude is finite), else 0.0; an empty shard is finite."""
    if tensor.numel() == 0:
        return torch.ones((), device=tensor.device)
    return torch.isfinite(torch.linalg.vector_norm(tensor.detach(), math.inf)).float()


def _nan_min(values: list[float]) -> float:
    """``min`` that is NaN when any value is (Python's ``min`` skips a NaN depending on where it stands)."""
    return math.nan if any(math.isnan(v) for v in values) else min(values)


class StatisticsMixin:
    """Per-tensor alpha and mask-ratio statistics plus dtype-keeping ``load_state_dict``.

    ``step()`` calls :meth:`_record_statistics` once per (group, device, dtype) bucket with the positions of the
    stepped parameters within the group and two ``[n]`` tensors. Nothing is read until :meth:`statistics`.
    """

    param_groups: list[dict[str, Any]]

    def _init_statistics(self) -> None:
        # id(param group) -> (the group, [(positions in the group, alpha [n], mask ratio [n])]) of its last step.
        # Keyed by the group itself, not its index: DeepSpeed ZeRO-1/2 steps each group alone, swapping
        # ``param_groups`` for a one-group list during ``step()``.
        self._statistics: dict[int, tuple[dict[str, Any], list[tuple[list[int], Tensor, Tensor, list[Tensor]]]]] = {}

    def _begin_statistics(self, group: dict[str, Any]) -> None:
        self._statistics[id(group)] = (group, [])

    def _record_statistics(self, group: dict[str, Any], positions: list[int], alpha: Tensor,
                           mask_ratio: Tensor) -> None:
        """Keep one bucket's statistics with its stepped tensors (read for NaN / Inf, and left out where they have
        no elements, only by :meth:`statistics`: this runs every step, that only when someone reads)."""
        tensors = [group["params"][p] for p in positions]
        self._statistics.setdefault(id(group), (group, []))[1].append(
            (positions, alpha.detach().reshape(-1), mask_ratio.detach().reshape(-1), tensors))

    @staticmethod
    def group_name(group: dict[str, Any], group_index: int) -> str:
        """The group's ``name`` entry if it has one, else ``group{index}``."""
        name = group.get("name")
        return str(name) if name is not None else f"group{group_index}"

    @classmethod
    def tensor_name(cls, group: dict[str, Any], group_index: int, position: int) -> str:
        """The parameter's entry in the group's ``param_names`` if present, else ``<group name>.<position>``."""
        names = group.get("param_names")
        if names is not None and position < len(names):
            return str(names[position])
        return f"{cls.group_name(group, group_index)}.{position}"

    def statistics(self, per_tensor: bool = False) -> dict[str, dict[str, Any]]:
        """Read the alpha / mask-ratio statistics of the last step (this is where the device sync happens).

        Returns ``{"groups": {name: {"alpha_mean", "alpha_min", "alpha_max", "mask_ratio", "num_tensors",
        "nonfinite_tensors"}}, "tensors": {name: {"alpha", "mask_ratio"}}}``; ``"tensors"`` is filled
        only with ``per_tensor=True``. Param groups that share a ``name`` are reported together (the Trainer plugin
        splits "decay" into one group per tensor under DeepSpeed). Each group reports its last step; a group that
        has not stepped yet is left out. ``mask_ratio`` of a group is the mean over its tensors of
        ``sum(phi) / numel``. ``nonfinite_tensors`` counts the stepped tensors holding NaN / Inf after the step
        (a non-finite update leaves them so; under FSDP2 each process counts its own shards).

        NaN and Inf are reported as they are: a NaN alpha of one tensor makes its group's mean, min and max NaN.
        Tensors with no elements have no mask ratio and are left out of every value.
        """
        names, tensor_names, alphas, ratios, finite = [], [], [], [], []
        for group_index, group in enumerate(self.param_groups):
            recorded = self._statistics.get(id(group))
            if recorded is None or recorded[0] is not group:
                continue
            whole = group.get("whole_numel")  # a ZeRO partition's whole tensor
            for positions, alpha, ratio, tensors in recorded[1]:
                keep = [k for k, t in enumerate(tensors) if (int(whole) if whole is not None else t.numel()) > 0]
                if len(keep) != len(positions):  # tensors with no elements have no mask ratio
                    index = torch.tensor(keep, dtype=torch.long, device=alpha.device)
                    alpha, ratio = alpha[index], ratio[index.to(ratio.device)]
                    positions, tensors = [positions[k] for k in keep], [tensors[k] for k in keep]
                if not positions:
                    continue
                names += [self.group_name(group, group_index)] * len(positions)
                if per_tensor:
                    tensor_names += [self.tensor_name(group, group_index, p) for p in positions]
                alphas.append(alpha.float())
                ratios.append(ratio.float())
                finite.append(torch.stack([_finite(local(t)).to(alpha.device) for t in tensors]))
        if not alphas:
            return {"groups": {}, "tensors": {}}
        device = alphas[0].device
        # one transfer for everything: [3, n] on the host
        values = torch.stack([torch.cat([a.to(device) for a in alphas]), torch.cat([r.to(device) for r in ratios]),
                              torch.cat([f.to(device) for f in finite])])
        alpha_list, ratio_list, finite_list = values.cpu().tolist()
        by_name: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            by_name.setdefault(name, []).append(index)
        groups = {}
        for name, indices in by_name.items():
            group_alphas = [alpha_list[i] for i in indices]
            groups[name] = {
                "alpha_mean": sum(group_alphas) / len(indices),
                "alpha_min": _nan_min(group_alphas),
                "alpha_max": -_nan_min([-a for a in group_alphas]),
                "mask_ratio": sum(ratio_list[i] for i in indices) / len(indices),
                "num_tensors": len(indices),
                "nonfinite_tensors": sum(1 for i in indices if not finite_list[i]),
            }
        tensors = {name: {"alpha": a, "mask_ratio": r} for name, a, r in zip(tensor_names, alpha_list, ratio_list)}
        return {"groups": groups, "tensors": tensors}
