"""AdaPM's optimizer-state memory next to AdamW's, from the optimizer's plans (nothing is allocated)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._state import resolve_state_dtype, state_dtype_for


def _named_trainable(model_or_params: Any) -> list[tuple[str, Tensor]]:
    if isinstance(model_or_params, torch.nn.Module):
        return [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    return [(n, p) for n, p in model_or_params if p.requires_grad]


def optimizer_state_memory(model: Any, state_dtype: torch.dtype | str | None = None, **adapm_options: Any
                           ) -> dict[str, Any]:
    """Optimizer-state bytes of ``model`` (a module or ``(name, param)`` pairs; ``meta`` tensors are fine) under
    AdaPM with ``adapm_options`` and under AdamW (two moments in the same state dtype rule: fp32 for bf16 params).

    Returns ``{"adapm": {"momentum", "second_moment", "total"}, "adamw": {...}, "ratio": {...},
    "num_params": int, "per_tensor": {name: bytes}}``. Nothing is allocated beyond the optimizer's plans.
    """
    from .adapm import AdaPM  # adapm.py re-exports this module's functions

    named = _named_trainable(model)
    optimizer = AdaPM(named, state_dtype=state_dtype, log_policy=False, **adapm_options)
    by_kind = optimizer.state_bytes_by_kind()
    resolved = resolve_state_dtype(state_dtype)
    adamw_half = sum(p.numel() * torch.empty((), dtype=state_dtype_for(p, resolved)).element_size()
                     for _, p in named)
    adapm_total = by_kind["momentum"] + by_kind["second_moment"]
    adamw = {"momentum": adamw_half, "second_moment": adamw_half, "total": 2 * adamw_half}
    adapm_bytes = {**by_kind, "total": adapm_total}
    return {
        "adapm": adapm_bytes,
        "adamw": adamw,
        "ratio": {key: adapm_bytes[key] / adamw[key] if adamw[key] else float("nan") for key in adamw},
        "num_params": sum(p.numel() for _, p in named),
        "per_tensor": optimizer.state_bytes(),
    }


def compare_with_adamw(model: Any, state_dtype: torch.dtype | str | None = None, log: bool = True,
                       **adapm_options: Any) -> str:
    """A small table of AdaPM's optimizer-state memory next to AdamW's (also logged unless ``log=False``)."""
    memory = optimizer_state_memory(model, state_dtype=state_dtype, **adapm_options)
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    lines = [f"optimizer state for {memory['num_params']:,} parameters "
             f"(AdaPM {', '.join(f'{k}={v}' for k, v in adapm_options.items()) or 'defaults'})",
             f"{'':<14}{'AdamW':>16}{'AdaPM':>16}{'AdaPM/AdamW':>14}"]
    for key in ("momentum", "second_moment", "total"):
        lines.append(f"{key:<14}{mib(memory['adamw'][key]):>16}{mib(memory['adapm'][key]):>16}"
                     f"{memory['ratio'][key]:>13.1%}")
    table = "\n".join(lines)
    if log:
        from .adapm import _log_main_process

        _log_main_process(table)
    return table
