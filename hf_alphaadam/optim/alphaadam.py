"""AlphaAdam: AdamW with an asynchronous sign-agreement mask and a dynamic, norm-restoring step scale.

Chang, Yuan, Li, "AlphaAdam: Asynchronous Masked Optimization with Dynamic Alpha for Selective Updates"
(arXiv 2501.18094). The update below is the project's reconstruction (``shared/docs/algorithms.md`` §1, §6);
with ``mask="sync", alpha="count"`` it is Cautious AdamW, with ``mask="none", alpha="none"`` it is AdamW.

Per parameter tensor ``p`` with gradient ``g`` at step ``t`` (element-wise; ``bc1 = 1 - beta1^t``,
``bc2 = 1 - beta2^t``)::

    phi = 1(m_{t-1} * g > 0)                      # mask="async": before the momentum update
    m   = beta1 * m + (1 - beta1) * g
    v   = beta2 * v + (1 - beta2) * g^2
    u   = (m / bc1) / (sqrt(v / bc2) + eps)       # torch-style epsilon (after bias correction)
    phi = 1(m_t * g > 0)                          # mask="sync" instead (Cautious AdamW)
    phi = 1 at t = 1                              # first_step="full": m_0 = 0 would mask everything
    alpha = ||u||_2 / ||phi * u||_2               # alpha="norm"; "count": numel / (sum(phi) + 1); "none": 1
    alpha = min(alpha, alpha_max)                 # if alpha_max is set
    if sum(phi) == 0: the tensor is not moved     # no weight decay either; alpha is reported as 1
    p   = p * (1 - lr * weight_decay)             # decoupled weight decay, first
    p   = p - lr * alpha * (phi * u)

The step runs through the shared Adam engine (``_adam_engine.py``: the reference loop, the foreach, native and
compiled paths, and the dispatch policy); the class is the shell (``_base.py``) plus this rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import _precision, _quantized
from ._adam_engine import ROUTES, alphaadam, route_for
from ._base import MaskedAdamBase, native_fits
from ._plans import Slot, TensorPlan
from ._sharding import local
from ._schemas import ALPHAADAM_SCHEMA
from ._validation import Expected

__all__ = ["AlphaAdam", "alphaadam"]


class AlphaAdam(MaskedAdamBase):
    r"""AlphaAdam, and Cautious AdamW / AdamW as modes of it.

    Args:

    After each ``step()`` the per-tensor alpha and mask ratio ``sum(phi) / numel`` are kept as tensors;
    :meth:`statistics` reads them.
    """

    OPTIONS = ALPHAADAM_SCHEMA
    __doc__ = OPTIONS.document(__doc__, params=(
        "parameters, param groups, or ``(name, parameter)`` pairs (names are used to label per-tensor statistics). "
        "A group may carry a ``name`` (used for its statistics; the Trainer plugin names its groups ``decay`` / "
        "``no_decay``) and override any option below."))

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, mask: str = "async", alpha: str = "norm",
                 alpha_max: float | None = None, first_step: str = "full", state_dtype: torch.dtype | str | None = None,
                 foreach: bool | None = None, maximize: bool = False, partition_group: Any = None,
                 fused: bool | None = None, state_bits: int = 32, min_8bit_size: int = _quantized.MIN_8BIT_SIZE,
                 quantize_embeddings: bool = False, bf16_update: str = "plain",
                 adopt_changed_settings: bool = False) -> None:
        super().__init__(params, locals())

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Expected], str]:
        shape = tuple(param.shape)
        expected = {"exp_avg": Expected(shape), "exp_avg_sq": Expected(shape)}
        return (_precision.expected_with_precision(expected, param, saved),
                " (exp_avg and exp_avg_sq, or their 8-bit codes and absmax)")

    def _init_state(self, group: dict[str, Any], plan: TensorPlan, param: Tensor, state: dict[str, Any],
                    dtype: torch.dtype) -> None:
        state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)

    def _plan_route(self, group: dict[str, Any], param: Tensor, numel: int, group_numel: int, detail: Any,
                    eight_bit: bool) -> str:
        return route_for(native_fits=native_fits(param, group, eight_bit), whole_numel=numel,
                         group_numel=group_numel, foreach=group["foreach"], fused=group["fused"], like=local(param))

    def _update(self, group: dict[str, Any], group_index: int, slots: list[Slot]
                ) -> list[tuple[list[int], Tensor, Tensor]]:
        """One engine call per route of the plans (in the engine's order: every rank issues its collectives
        alike)."""
        beta1, beta2 = group["betas"]
        buckets = []
        for route in ROUTES:
            indices = [k for k, s in enumerate(slots) if s.plan.route == route]
            if not indices:
                continue
            call = [slots[k] for k in indices]
            numels, reduce_sums = self._sharding(group, [group["params"][s.plan.position] for s in call])
            results = alphaadam(
                [local(s.param) for s in call], [local(s.grad) for s in call],
                [local(s.state["exp_avg"]) for s in call], [local(s.state["exp_avg_sq"]) for s in call],
                [s.state["step"] for s in call], fused=group["fused"], lr=group["lr"], beta1=beta1, beta2=beta2,
                eps=group["eps"], weight_decay=group["weight_decay"], mask=group["mask"], alpha=group["alpha"],
                alpha_max=group["alpha_max"], first_step=group["first_step"], maximize=group["maximize"],
                numels=numels, reduce_sums=reduce_sums, name_of=lambda k, call=call: call[k].plan.name, route=route)
            buckets += [([indices[k] for k in positions], a, r) for positions, a, r in results]
        return buckets
