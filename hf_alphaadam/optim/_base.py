"""What every optimizer of the package shares: argument checks, dtype-keeping state loading, and the
per-tensor alpha / mask-ratio statistics that the monitoring callback reads.

Statistics are kept as device tensors, written by ``step()`` without a host sync; :meth:`statistics` is where
they are read (and where the sync happens), so a caller decides how often to pay for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._resume import prepare_load, record_writer
from ._sharding import local
from ._state import restore_saved_dtypes
from ._validation import Expected


def check_adam_hyperparameters(lr: float | Tensor, betas: tuple[float, float], eps: float,
                               weight_decay: float) -> None:
    """Raise a ValueError / TypeError naming the bad argument and the allowed range."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a tensor must have one element, got shape {tuple(lr.shape)}")
        lr_value = float(lr)
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        lr_value = float(lr)
    else:
        raise TypeError(f"lr must be a non-negative number, got {lr!r}")
    if not (lr_value >= 0.0 and math.isfinite(lr_value)):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
    for index, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"betas[{index}] must be a number in [0, 1), got {beta!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{index}] must be in [0, 1), got {beta!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a number > 0, got {eps!r}")
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not (weight_decay >= 0.0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def check_param_groups(optimizer: Optimizer) -> None:
    """Reject parameters the update rules are not defined for (complex tensors, non-floating tensors)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if torch.is_complex(param):
                raise TypeError(f"{type(optimizer).__name__} does not support complex parameters "
                                f"(got a {param.dtype} tensor of shape {tuple(param.shape)}); "
                                "pass real parameters, e.g. torch.view_as_real(p)")
            if not param.is_floating_point():
                raise TypeError(f"{type(optimizer).__name__} needs floating-point parameters, got {param.dtype}")


def check_dense_grad(optimizer: Optimizer, grad: Tensor) -> None:
    if grad.is_sparse:
        raise ValueError(f"{type(optimizer).__name__} does not support sparse gradients (the sign mask and the "
                         "moments need every coordinate); use a dense embedding (sparse=False) "
                         "or torch.optim.SparseAdam for that parameter")


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

    # options whose change on resume is refused even with adopt_changed_settings (the state's shapes follow them)
    LAYOUT_OPTIONS: tuple[str, ...] = ()
    # set by the constructor: continue with changed settings on resume instead of raising (see ``_resume.py``)
    adopt_changed_settings: bool = False
    defaults: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        """``Optimizer.state_dict`` plus, in each param group, the name of the optimizer class that wrote it."""
        return record_writer(self, super().state_dict())  # type: ignore[misc]

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Expected], str]:
        """The state tensors this optimizer keeps for ``param`` under ``options`` (the saved group's), and the
        options that decide it in words, for :func:`~._validation.check_saved_state`."""
        raise NotImplementedError

    def _adapt_loaded_state(self, saved: dict[str, Any], param: Tensor, saved_options: dict[str, Any],
                            options: dict[str, Any], group_index: int, position: int) -> dict[str, Any]:
        """The state entry to load when the settings change from ``saved_options`` to ``options`` (default: as
        saved)."""
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict`` that first validates the whole incoming state and the settings it was
        written with (``_resume.prepare_load``: a refused load changes nothing), then keeps each saved state
        tensor's dtype (torch casts them to the parameter's dtype, which would round fp32 moments of a bf16
        parameter to bf16)."""
        state_dict = prepare_load(self, state_dict)
        # torch replaces the group dicts: carry per-group records kept by id(group) (layouts) over to the new ones
        layouts = getattr(self, "_layouts", None)
        previous = [layouts.get(id(group)) for group in self.param_groups] if layouts is not None else None
        super().load_state_dict(state_dict)  # type: ignore[misc]
        restore_saved_dtypes(self, state_dict)  # type: ignore[arg-type]
        if previous is not None:
            self._layouts = {id(group): layout for group, layout in zip(self.param_groups, previous)
                             if layout is not None}
        self._init_statistics()
