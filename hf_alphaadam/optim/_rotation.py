"""AdaDiag's basis math: SVD bases of a gradient, rotating into and out of them, and the exact zeros a fresh
basis leaves in the rotated gradient. Every function works on one ``[m, n]`` matrix or a stacked ``[B, m, n]``."""

from __future__ import annotations

import torch
from torch import Tensor


def _svd_bases(grad: Tensor, left: bool, right: bool) -> tuple[Tensor | None, Tensor | None]:
    """Full-rank orthogonal bases from the SVD of ``grad`` (``[m, n]`` or a stacked ``[B, m, n]``).

    Returns ``P = U`` (m x m) if ``left`` and ``Q = V`` (n x n) if ``right``; an economy SVD is used when it already
    gives the square factor that is asked for (the smaller side), the full one otherwise.
    """
    m, n = grad.shape[-2:]
    full = (left and m > n) or (right and n > m)
    try:
        u, _, vh = torch.linalg.svd(grad, full_matrices=full)
    except torch.linalg.LinAlgError as error:  # NaN / Inf entries: LAPACK does not converge
        raise ValueError(f"AdaDiag: the SVD of a gradient of shape {tuple(grad.shape)} failed ({error}); the "
                         "gradient holds NaN or Inf values: the loss diverged. Lower the learning rate, clip the "
                         "gradients, or skip steps with non-finite gradients (e.g. the Trainer's fp16 loss "
                         "scaling)") from None
    return (u if left else None), (vh.mT if right else None)


def _aligned(new: Tensor, old: Tensor) -> Tensor:
    """``new`` with each column's sign flipped where its overlap with the same column of ``old`` is negative."""
    overlap = (new * old).sum(dim=-2, keepdim=True)
    return torch.where(overlap < 0, -new, new)


def _rotate(x: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """``P^T x Q`` (original -> rotated basis); a missing side is the identity."""
    if left is not None:
        x = left.mT @ x
    if right is not None:
        x = x @ right
    return x


def _unrotate(x: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """``P x Q^T`` (rotated -> original basis)."""
    if left is not None:
        x = left @ x
    if right is not None:
        x = x @ right.mT
    return x


def _exact_zeros(shape: tuple[int, ...], left: bool, right: bool, dtype: torch.dtype,
                 device: torch.device) -> Tensor | None:
    """0/1 mask of the entries of ``P^T G Q`` that are exactly zero right after the bases came from ``svd(G)``
    (off-diagonal entries when two-sided; the rows / columns past min(m, n) when one-sided on the larger side);
    ``None`` when there are none."""
    m, n = shape[-2:]
    if left and right:
        return torch.eye(m, n, dtype=dtype, device=device)
    if left and m > n:
        return (torch.arange(m, device=device) < n).to(dtype).unsqueeze(-1).expand(m, n)
    if right and n > m:
        return (torch.arange(n, device=device) < m).to(dtype).unsqueeze(-2).expand(m, n)
    return None


def _factored_second_moment(rows: Tensor, cols: Tensor) -> Tensor:
    """Adafactor's ``V = r c^T / mean(r)`` from row / column means of the squared gradient (0 where r = 0)."""
    scale = rows.mean(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    return (rows / scale).unsqueeze(-1) * cols.unsqueeze(-2)
