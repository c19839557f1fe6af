"""Optimizer-state helpers: dtype-preserving ``load_state_dict`` and the state-dtype rule.

``torch.optim.Optimizer.load_state_dict`` casts every floating-point state tensor to its parameter's dtype.
For a bf16 parameter with fp32 moments that silently rounds the moments to bf16 on every resume, so a resumed
run is no longer the run that was saved. The optimizers of this package load state with
:func:`restore_saved_dtypes`, which keeps each saved tensor's dtype (only the device follows the parameter).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def resolve_state_dtype(state_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Validate ``state_dtype`` (None, a floating torch dtype or its name) and return a torch dtype or None."""
    if state_dtype is None:
        return None
    if isinstance(state_dtype, str):
        if state_dtype not in _DTYPE_NAMES:
            raise ValueError(f"state_dtype must be None or one of {sorted(_DTYPE_NAMES)}, got {state_dtype!r}")
        return _DTYPE_NAMES[state_dtype]
    if isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point:
        return state_dtype
    raise ValueError(f"state_dtype must be None, a floating-point torch.dtype or one of {sorted(_DTYPE_NAMES)}, "
                     f"got {state_dtype!r}")


def compute_dtype(param: Tensor) -> torch.dtype:
    """The dtype the update math runs in: fp32 for bf16/fp16 parameters, the parameter's dtype otherwise."""
    return torch.promote_types(param.dtype, torch.float32)


def state_dtype_for(param: Tensor, state_dtype: torch.dtype | None) -> torch.dtype:
    """Moments are stored in ``state_dtype`` if given, else in the compute dtype (fp32 for bf16 parameters)."""
    return state_dtype if state_dtype is not None else compute_dtype(param)


def restore_saved_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """After ``Optimizer.load_state_dict``: put back every state tensor with its saved dtype.

    Walks the saved and the current param groups in the same order torch does (saved ids <-> current params),
    and for each saved tensor stores a copy on the parameter's device in the tensor's own dtype.
    """
    saved_groups = state_dict["param_groups"]
    saved_state = state_dict["state"]
    for saved_group, group in zip(saved_groups, optimizer.param_groups):
        for param_id, param in zip(saved_group["params"], group["params"]):
            if param_id not in saved_state:
                continue
            current = optimizer.state[param]
            for key, value in saved_state[param_id].items():
                if isinstance(value, Tensor) and key != "step":
                    current[key] = value.to(device=param.device, copy=True)



def as_dtype(tensors: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """The tensors themselves where they already have ``dtype``, converted copies elsewhere (the working copies a
    path computes in; :func:`copy_back` writes them back)."""
    return [t if t.dtype == dtype else t.to(dtype) for t in tensors]


def copy_back(originals: list[Tensor], computed: list[Tensor]) -> None:
    """Write each working copy into its original (cast to the original's dtype), where it is a copy."""
    pairs = [(o, c) for o, c in zip(originals, computed) if o is not c]
    if pairs:
        torch._foreach_copy_([o for o, _ in pairs], [c for _, c in pairs])
