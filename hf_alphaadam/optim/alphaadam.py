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
from ._base import MaskedAdamBase, check_adam_hyperparameters, native_fits
from ._masking import validate_mask_options
from ._plans import Slot, TensorPlan
from ._sharding import local
from ._state import resolve_state_dtype
from ._validation import Expected

__all__ = ["AlphaAdam", "alphaadam"]


class AlphaAdam(MaskedAdamBase):
    r"""AlphaAdam, and Cautious AdamW / AdamW as modes of it.

    Args:
        params: parameters, param groups, or ``(name, parameter)`` pairs (names are used to label per-tensor
            statistics). A group may carry a ``name`` (used for its statistics; the Trainer plugin names its
            groups ``decay`` / ``no_decay``) and override any option below.
        lr: learning rate :math:`\eta` (>= 0).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: added to :math:`\sqrt{\hat v}` after bias correction, as in ``torch.optim.AdamW`` (> 0).
        weight_decay: decoupled weight decay :math:`\lambda` (>= 0), applied before the masked step.
        mask: ``"async"`` (AlphaAdam, ``1(m_{t-1} g_t > 0)``), ``"sync"`` (Cautious AdamW, ``1(m_t g_t > 0)``) or
            ``"none"``.
        alpha: ``"norm"`` (:math:`\|u\|_2 / \|\varphi \circ u\|_2`), ``"count"`` (Cautious'
            ``numel / (sum(phi) + 1)``) or ``"none"`` (1).
        alpha_max: optional upper clamp of alpha (>= 1); ``None`` (default) leaves alpha unclamped.
        first_step: ``"full"`` (default) applies the unmasked update at each tensor's first step, since
            :math:`m_0 = 0` makes the asynchronous mask empty; ``"masked"`` applies the mask as written, which for
            ``mask="async"`` means the first step does not move the tensor at all.
        state_dtype: dtype of ``exp_avg`` / ``exp_avg_sq``; ``None`` (default) stores them in fp32 for bf16/fp16
            parameters and in the parameter's dtype otherwise; ``torch.bfloat16`` (or ``"bf16"``) halves their
            memory. The math always runs in fp32 (fp64 for fp64 parameters).
        foreach: ``True`` for the multi-tensor path, ``False`` for the per-tensor reference loop (either one
            also under ``fused=None``); ``None`` (default) lets ``fused`` pick.
        maximize: maximize the objective instead of minimizing it.
        fused: the two-pass step. ``True``: the native C kernel when every tensor of the group is an fp32 CPU
            tensor and the kernel builds here (``_native.py``), else each tensor of at least ``COMPILE_MIN_NUMEL``
            (65536) elements as two ``torch.compile``d kernels (a reduction pass, then the update pass: about 10
            reads/writes per element instead of ~35 for the foreach path; smaller tensors take the foreach path;
            the first step compiles, tens of seconds on a CPU, cached on disk by inductor for later processes).
            ``None`` (default, with ``foreach=None``): the native kernel where it applies; otherwise the compiled
            kernels for a param group of at least ``AUTO_COMPILE_MIN_NUMEL`` (2^24) elements when
            ``torch.compile`` works here, else the foreach path; a failed build or compilation is logged once as a
            warning and the next path is used. ``False``: neither. All are tested equal to the reference loop.
            ``HF_ALPHAADAM_NATIVE=0`` in the environment turns the native kernel off.
        partition_group: the process group over which flat-partition groups (groups with a ``whole_numel``
            entry, as the Trainer plugin builds them for DeepSpeed ZeRO) add their per-tensor sums; ``None`` is
            the default group. Not saved in ``state_dict()``.
        state_bits: ``32`` (default) or ``8``. With 8, ``exp_avg`` / ``exp_avg_sq`` of each tensor with at least
            ``min_8bit_size`` elements are stored blockwise-quantized with bitsandbytes (uint8 codes plus an fp32
            absmax per 256 elements: about 2 bytes per parameter instead of 8; signed dynamic map for the first
            moment, unsigned for the second, as bitsandbytes' 8-bit optimizers) and dequantized to fp32 for the
            update, one tensor at a time. Needs ``pip install hf-alphaadam[bnb]``. Not supported for DTensor
            (FSDP2) parameters or flat ZeRO partitions. See ``_quantized.py``.
        min_8bit_size: tensors with fewer elements keep 32-bit moments under ``state_bits=8`` (default 4096, as
            bitsandbytes).
        quantize_embeddings: under ``state_bits=8``, also quantize the moments of embeddings, recognised by their
            name in the group's ``param_names`` (``embed``, ``wte``, ``wpe``, ...; pass ``(name, parameter)``
            pairs). Default ``False``: embeddings keep 32-bit moments, as the HF Trainer does for bitsandbytes'
            8-bit optimizers.
        bf16_update: how the fp32 update is written into a bf16 / fp16 parameter: ``"plain"`` (round to
            nearest, default), ``"kahan"`` (a compensation buffer in the parameter's dtype, state key
            ``compensation``, carries the rounding error to the next step) or ``"stochastic"`` (unbiased
            stochastic rounding, reproducible: the random bits depend only on a per-tensor key in the state and
            the step, so a resumed run rounds exactly as an uninterrupted one). fp32 / fp64 parameters are not
            affected.
        adopt_changed_settings: on ``load_state_dict``, continue with this optimizer's settings where they differ
            from the checkpoint's (``lr``, ``alpha_max``, weight decay simply change, a new ``mask`` keeps the
            moments, a new ``state_bits`` converts them; see ``_resume.py``) instead of raising a ValueError that
            names each difference. Not saved in ``state_dict()``.

    After each ``step()`` the per-tensor alpha and mask ratio ``sum(phi) / numel`` are kept as tensors;
    :meth:`statistics` reads them.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        mask: str = "async",
        alpha: str = "norm",
        alpha_max: float | None = None,
        first_step: str = "full",
        state_dtype: torch.dtype | str | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
        partition_group: Any = None,
        fused: bool | None = None,
        state_bits: int = 32,
        min_8bit_size: int = _quantized.MIN_8BIT_SIZE,
        quantize_embeddings: bool = False,
        bf16_update: str = "plain",
        adopt_changed_settings: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, mask=mask, alpha=alpha,
                        alpha_max=alpha_max, first_step=first_step, state_dtype=state_dtype, foreach=foreach,
                        fused=fused, maximize=maximize, state_bits=state_bits, min_8bit_size=min_8bit_size,
                        quantize_embeddings=quantize_embeddings, bf16_update=bf16_update)
        super().__init__(params, defaults, partition_group=partition_group,
                         adopt_changed_settings=adopt_changed_settings)

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        check_adam_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        validate_mask_options(group["mask"], group["alpha"], group["alpha_max"], group["first_step"])
        resolve_state_dtype(group["state_dtype"])
        if group["foreach"] not in (None, True, False):
            raise TypeError(f"foreach must be True, False or None, got {group['foreach']!r}")
        if not isinstance(group["maximize"], bool):
            raise TypeError(f"maximize must be a bool, got {group['maximize']!r}")
        if group["fused"] not in (None, True, False):
            raise TypeError(f"fused must be True, False or None, got {group['fused']!r}")
        _precision.check_precision_options(group)

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
