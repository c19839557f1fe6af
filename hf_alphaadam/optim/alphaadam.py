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

Four code paths with one signature, :func:`alphaadam`: ``_single_tensor_alphaadam`` is the plain per-tensor
reference (the test oracle), ``_multi_tensor_alphaadam`` the ``torch._foreach_*`` path, grouped by device and
dtype, ``_native_alphaadam`` (``_native.py``) a small C kernel for fp32 CPU tensors, and ``_compiled_alphaadam``
(``_compiled.py``) two ``torch.compile``d passes over memory per tensor. An exact AlphaAdam step needs a per-tensor
reduction before the update, which eager ops pay for with extra passes and temporaries; the native and compiled
paths make two passes instead. By default (``fused=None``) a param group whose tensors are all fp32 CPU tensors
takes the native kernel (built with the system C compiler on first use, about a second, cached on disk); other
groups of at least ``AUTO_COMPILE_MIN_NUMEL`` elements take the compiled path, smaller ones the foreach path,
where a one-off compilation of tens of seconds would outweigh the saving.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype, _get_value

from ._base import StatisticsMixin, check_adam_hyperparameters, check_dense_grad, check_param_groups
from ._foreach import _multi_tensor_alphaadam
from ._masking import masked_step, sign_agreement, validate_mask_options
from . import _native, _quantized
from ._sharding import SumsReducer, dtensor_sums_reducer, is_dtensor, local, partition_sums_reducer
from ._state import compute_dtype, resolve_state_dtype, state_dtype_for
from ._state_layout import adapt_alphaadam_state, alphaadam_expected_state
from ._validation import check_quantized_moments, check_step_inputs, describe_mismatch

__all__ = ["AlphaAdam", "alphaadam"]

# (positions within the lists passed to the functional core, alpha [n], mask ratio [n])
StatisticsBucket = tuple[list[int], Tensor, Tensor]

# fused=None compiles a param group's step when its tensors hold at least this many elements in all (GPT-2 small
# has 124M; the test-sized models of this project stay below it and never compile)
AUTO_COMPILE_MIN_NUMEL = 1 << 24
# inside a compiled step, tensors with fewer elements take the foreach path: each compiled call costs ~0.5 ms of
# Python / guard overhead, more than a small tensor's whole update. Routed by the whole (unsharded) tensor's size,
# so that every rank of a sharded run splits its tensors, and issues its collectives, alike.
COMPILE_MIN_NUMEL = 1 << 16


class AlphaAdam(StatisticsMixin, Optimizer):
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
                        alpha_max=alpha_max, first_step=first_step, state_dtype=_dtype_name(state_dtype),
                        foreach=foreach, fused=fused, maximize=maximize, state_bits=state_bits,
                        min_8bit_size=min_8bit_size,
                        quantize_embeddings=quantize_embeddings, bf16_update=bf16_update)
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, (name, tensor) pairs or dicts, got a Tensor")
        params = list(params)
        if len(params) == 0:
            raise ValueError("AlphaAdam got an empty parameter list: pass at least one parameter")
        self._validate_group(defaults)
        if not isinstance(adopt_changed_settings, bool):
            raise ValueError(f"adopt_changed_settings must be True or False, got {adopt_changed_settings!r}")
        super().__init__(params, defaults)
        self.partition_group = partition_group
        self.adopt_changed_settings = adopt_changed_settings
        check_param_groups(self)
        # the tensor shapes of each group as built, to recognise a group later replaced by a flat partition
        self._layouts = {id(group): [tuple(p.shape) for p in group["params"]] for group in self.param_groups}
        self._init_statistics()

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
        if isinstance(group["state_bits"], bool) or group["state_bits"] not in _quantized.STATE_BITS:
            raise ValueError(f"state_bits must be 32 or 8, got {group['state_bits']!r}")
        min_8bit_size = group["min_8bit_size"]
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be an int >= 0, got {min_8bit_size!r}")
        if not isinstance(group["quantize_embeddings"], bool):
            raise TypeError(f"quantize_embeddings must be a bool, got {group['quantize_embeddings']!r}")
        if group["bf16_update"] not in _quantized.BF16_UPDATE_MODES:
            raise ValueError(f"bf16_update must be one of {_quantized.BF16_UPDATE_MODES}, "
                             f"got {group['bf16_update']!r}")
        if group["state_bits"] == 8:
            _quantized.require_bitsandbytes()  # fail at construction, not at the first step

    def _expected_state(self, options: dict[str, Any], group_index: int, position: int, param: Tensor,
                        saved: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return alphaadam_expected_state(param, saved)

    def _adapt_loaded_state(self, saved: dict[str, Any], param: Tensor, saved_options: dict[str, Any],
                            options: dict[str, Any], group_index: int, position: int) -> dict[str, Any]:
        names = self.param_groups[group_index].get("param_names")
        name = names[position] if names is not None and position < len(names) else None
        return adapt_alphaadam_state(saved, param, saved_options, options, name)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "state_dtype" in param_group:
            param_group["state_dtype"] = _dtype_name(param_group["state_dtype"])
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])
        if hasattr(self, "_layouts"):
            self._layouts[id(self.param_groups[-1])] = [tuple(p.shape) for p in self.param_groups[-1]["params"]]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not hasattr(self, "_statistics"):
            self._init_statistics()
        if not hasattr(self, "partition_group"):
            self.partition_group = None
        if not hasattr(self, "_layouts"):
            self._layouts = {}

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...] | None:
        """The stepped tensors of a group, creating their state on first use.

        ``exp_avgs`` / ``exp_avg_sqs`` hold ``None`` for tensors whose moments are 8-bit (state keys
        ``exp_avg_codes`` ...; :meth:`step` dequantizes them one at a time).
        """
        params, grads, exp_avgs, exp_avg_sqs, steps, positions = [], [], [], [], [], []
        state_dtype = resolve_state_dtype(group["state_dtype"])
        eight_bit = group["state_bits"] == 8
        if eight_bit and ("whole_numel" in group or any(is_dtensor(p) for p in group["params"])):
            raise NotImplementedError(
                "state_bits=8 is not supported for DTensor (FSDP2) parameters or flat ZeRO partitions "
                "('whole_numel' groups): bitsandbytes' blockwise quantization works on plain local tensors and "
                "the sharded checkpoint formats expect moments shaped like the parameter. Use state_bits=32, or "
                "state_dtype='bf16' to halve the moments' memory")
        names = group.get("param_names")
        group_index = next((i for i, g in enumerate(self.param_groups) if g is group), 0)
        for position, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            check_dense_grad(self, param.grad)
            state = self.state[param]
            name = names[position] if names is not None and position < len(names) else None
            if len(state) == 0:  # lazy: parameters may have been re-wrapped (FSDP2, DeepSpeed) after __init__
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                if eight_bit and _quantized.quantize_tensor(param, name, group["min_8bit_size"],
                                                            group["quantize_embeddings"]):
                    _quantized.init_quantized_state(state, param)
                else:
                    dtype = state_dtype_for(param, state_dtype)
                    state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
            elif _quantized.is_quantized(state):  # before bitsandbytes reads the codes (dense moments: alphaadam())
                check_quantized_moments(name or self.tensor_name(group, group_index, position), param, state,
                                        _quantized.num_blocks(param.numel()))
            if group["bf16_update"] != "plain" and _quantized.is_low_precision(param):
                if group["bf16_update"] == "kahan" and "compensation" not in state:
                    state["compensation"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                compensation = state.get("compensation")
                if compensation is not None and (compensation.shape != param.shape or compensation.dtype != param.dtype
                                                 or compensation.device != param.device):
                    raise ValueError(describe_mismatch(name or self.tensor_name(group, group_index, position),
                                                       "compensation", compensation, tuple(param.shape), param.device,
                                                       param.dtype))
                if group["bf16_update"] == "stochastic":
                    key = state.get("rounding_key")
                    if key is None:
                        state["rounding_key"] = _quantized.rounding_key(group_index, position)
                    elif key.device.type != "cpu":  # load_state_dict moves it to the parameter's device
                        state["rounding_key"] = key.cpu()
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state.get("exp_avg"))
            exp_avg_sqs.append(state.get("exp_avg_sq"))
            steps.append(state["step"])
            positions.append(position)
        return params, grads, exp_avgs, exp_avg_sqs, steps, positions

    def _sharding(self, group: dict[str, Any], params: list[Tensor]) -> tuple[list[int] | None, SumsReducer | None]:
        """How the per-tensor sums of this group are completed across processes.

        - A group with ``whole_numel`` holds one parameter that DeepSpeed ZeRO replaces by a flat partition: sums
          are added over ``partition_group``. A rank whose partition has no gradient still joins the collective
          (with zeros), so every rank issues the same collectives.
        - DTensor parameters (FSDP2): sums are added over each parameter's shard groups.
        """
        layout = self._layouts.get(id(group))
        current = [tuple(p.shape) for p in group["params"]]
        if ("whole_numel" not in group and layout is not None and current != layout and len(current) == 1
                and len(current[0]) == 1 and not any(is_dtensor(p) for p in group["params"])):
            raise RuntimeError(
                f"a param group that held tensors of shapes {layout} now holds one flat tensor of shape "
                f"{current[0]}: a flat partition (DeepSpeed ZeRO) mixes tensors, so per-tensor alpha and mask "
                "ratios would be wrong. Use the Trainer plugin (optim='alphaadam'), which gives DeepSpeed one "
                "param group per tensor, or build such groups yourself with a 'whole_numel' entry")
        if "whole_numel" in group:
            if len(group["params"]) > 1:
                raise ValueError(f"a param group with 'whole_numel' must hold exactly one tensor (a flat partition "
                                 f"of one parameter), got {len(group['params'])}")
            reduce_sums = partition_sums_reducer(int(group["whole_numel"]), self.partition_group)
            if group["params"] and not params:  # no gradient here: still take part in the reduction
                reduce_sums(torch.zeros(1, 3, device=group["params"][0].device), [0])
            return [int(group["whole_numel"])] * len(params), reduce_sums
        return dtensor_sums_reducer(params)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step (see the module docstring for the update rule)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group_index, group in enumerate(self.param_groups):
            # a group's options may have been edited since construction: an unknown mode must not reach a kernel
            validate_mask_options(group["mask"], group["alpha"], group["alpha_max"], group["first_step"])
            params, grads, exp_avgs, exp_avg_sqs, steps, positions = self._init_group(group)
            numels, reduce_sums = self._sharding(group, params)
            if not params:
                continue  # statistics keep this group's last step (ZeRO-3 steps one group per call)
            self._begin_statistics(group)
            beta1, beta2 = group["betas"]
            bf16_update = group["bf16_update"]
            if bf16_update != "plain":
                _quantized.note_unaffected_params(self, group, params)
            # Tensors with fp32 (or bf16) moments step together; tensors with 8-bit moments one at a time, so
            # that only one tensor's moments are dequantized to fp32 at any moment.
            dense = [i for i, m in enumerate(exp_avgs) if m is not None]
            calls = ([dense] if dense else []) + [[i] for i, m in enumerate(exp_avgs) if m is None]
            for indices in calls:
                states = [self.state[params[i]] for i in indices]
                call_m = [local(exp_avgs[i]) if exp_avgs[i] is not None
                          else _quantized.dequantize_moment(states[j], "exp_avg") for j, i in enumerate(indices)]
                call_v = [local(exp_avg_sqs[i]) if exp_avg_sqs[i] is not None
                          else _quantized.dequantize_moment(states[j], "exp_avg_sq") for j, i in enumerate(indices)]
                call_params = [local(params[i]) for i in indices]
                masters = {}  # bf16_update: the core updates an fp32 copy, written back below
                if bf16_update != "plain":
                    for j, param in enumerate(call_params):
                        if _quantized.is_low_precision(param):
                            compensation = states[j].get("compensation") if bf16_update == "kahan" else None
                            masters[j] = _quantized.master_copy(
                                param, None if compensation is None else local(compensation))
                            call_params[j] = masters[j]
                call_grads = [local(grads[i]) for i in indices]
                for j in masters:  # the foreach and fused paths take fp32 masters with fp32 (or bf16) gradients
                    if call_grads[j].dtype == torch.float16:
                        call_grads[j] = call_grads[j].float()
                call_reduce = reduce_sums
                if reduce_sums is not None and len(indices) != len(params):
                    call_reduce = (lambda sums, at, indices=indices: reduce_sums(sums, [indices[k] for k in at]))
                buckets = alphaadam(
                    call_params, call_grads, call_m, call_v, [steps[i] for i in indices],
                    foreach=group["foreach"], fused=group["fused"], lr=group["lr"], beta1=beta1, beta2=beta2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"], mask=group["mask"], alpha=group["alpha"],
                    alpha_max=group["alpha_max"], first_step=group["first_step"], maximize=group["maximize"],
                    numels=[numels[i] for i in indices] if numels is not None else None, reduce_sums=call_reduce,
                    name_of=lambda k, indices=indices, group=group, group_index=group_index: self.tensor_name(
                        group, group_index, positions[indices[k]]),
                )
                for j, master in masters.items():
                    state = states[j]
                    compensation = state.get("compensation") if bf16_update == "kahan" else None
                    generator = None
                    if bf16_update == "stochastic":
                        generator = self._rounding_generator(master.device)
                        generator.manual_seed(_quantized.rounding_seed(state["rounding_key"], _get_value(state["step"])))
                    _quantized.write_back_(local(params[indices[j]]), master, bf16_update,
                                           None if compensation is None else local(compensation), generator)
                for j, i in enumerate(indices):
                    if exp_avgs[i] is None:
                        _quantized.quantize_moment_(states[j], "exp_avg", call_m[j])
                        _quantized.quantize_moment_(states[j], "exp_avg_sq", call_v[j])
                for bucket_positions, alpha_values, mask_ratio in buckets:
                    self._record_statistics(group, [positions[indices[k]] for k in bucket_positions], alpha_values,
                                            mask_ratio)
        return loss

    def _rounding_generator(self, device: torch.device) -> torch.Generator:
        """One generator per device, reseeded for every tensor and step (its state is never saved)."""
        generators = self.__dict__.setdefault("_generators", {})
        if device not in generators:
            generators[device] = torch.Generator(device=device)
        return generators[device]


def _dtype_name(state_dtype: torch.dtype | str | None) -> str | None:
    """Param groups store the state dtype by name so that ``state_dict()`` holds only plain values."""
    resolved = resolve_state_dtype(state_dtype)
    return None if resolved is None else str(resolved).removeprefix("torch.")


def alphaadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
    name_of: Callable[[int], str] | None = None,
) -> list[StatisticsBucket]:
    """Functional AlphaAdam step over lists of tensors (updates ``params`` and the states in place).

    Before any path runs, each gradient and moment is checked against its parameter (shape, device, floating
    dtype; ``_validation.check_step_inputs``): a ValueError naming the tensor (``name_of(i)``) instead of a
    kernel writing out of bounds.

    For sharded tensors, ``numels`` gives each whole tensor's element count and ``reduce_sums(sums, indices)``
    adds the local ``[k, 3]`` sums of the tensors at ``indices`` over their shards (see ``_sharding.py``).
    Returns the per-tensor statistics as ``(positions, alpha, mask_ratio)`` buckets, ``positions`` indexing
    the input lists.

    Path: ``fused=True`` the native kernel for fp32 CPU tensors, else the compiled kernels (small tensors foreach);
    ``foreach=False`` the reference loop, ``foreach=True`` the foreach path; with both ``None`` the native kernel
    where it applies, else the compiled kernels for a list of at least ``AUTO_COMPILE_MIN_NUMEL`` elements where
    ``torch.compile`` works, else foreach.
    """
    options = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, mask=mask, alpha=alpha,
                   alpha_max=alpha_max, first_step=first_step, maximize=maximize)
    tensors = (params, grads, exp_avgs, exp_avg_sqs, state_steps)
    check_step_inputs(*tensors, name_of=name_of)
    whole_numels = numels if numels is not None else [p.numel() for p in params]
    if fused is not False and (foreach is None or fused) and params and _native_step_ready(tensors):
        return _native._native_alphaadam(*tensors, numels=numels, reduce_sums=reduce_sums, **options)
    if fused is None and foreach is None and sum(whole_numels) >= AUTO_COMPILE_MIN_NUMEL and params:
        fused = _compiled_step_ready(tensors, whole_numels, mask, alpha)
    if fused:
        return _fused_alphaadam(*tensors, whole_numels=whole_numels, numels=numels, reduce_sums=reduce_sums,
                                **options)
    func = _single_tensor_alphaadam if foreach is False else _multi_tensor_alphaadam
    return func(*tensors, numels=numels, reduce_sums=reduce_sums, **options)


def _native_step_ready(tensors: tuple[list[Tensor], ...]) -> bool:
    """Whether the native C kernel serves this step: every tensor a plain fp32 CPU tensor, the kernel built here
    (the first call builds it, about a second; a failure is logged once and the other paths are used)."""
    return _native.applies(*[[local(t) for t in values] for values in tensors[:4]])


def _compiled_step_ready(tensors: tuple[list[Tensor], ...], whole_numels: list[int], mask: str, alpha: str) -> bool:
    """For ``fused=None``: whether the compiled kernels can serve this step, compiling them now if needed.

    Compiling happens before anything is updated, so a failure (no C++ compiler, an unsupported platform or
    dtype) falls back to the foreach path for this and every later step, with one warning.
    """
    from . import _compiled  # imports the torch.compile machinery only for groups that may use it

    if not _compiled.usable(tensors[0][0]):
        return False
    large = [i for i, n in enumerate(whole_numels) if n >= COMPILE_MIN_NUMEL]
    try:
        _compiled.prepare(*[[local(values[i]) for i in large] for values in tensors[:4]], mask=mask, alpha=alpha)
    except Exception as error:  # noqa: BLE001 - any compilation failure: train on with the eager foreach path
        _compiled.disable(error)
        return False
    return True


def _fused_alphaadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    whole_numels: list[int],
    numels: list[int] | None,
    reduce_sums: SumsReducer | None,
    **options: Any,
) -> list[StatisticsBucket]:
    """The compiled kernels for tensors of at least ``COMPILE_MIN_NUMEL`` elements, the foreach path for the rest."""
    from ._compiled import _compiled_alphaadam

    small = [i for i, n in enumerate(whole_numels) if n < COMPILE_MIN_NUMEL]
    large = [i for i, n in enumerate(whole_numels) if n >= COMPILE_MIN_NUMEL]
    buckets: list[StatisticsBucket] = []
    for indices, func in ((small, _multi_tensor_alphaadam), (large, _compiled_alphaadam)):
        if not indices:
            continue
        sub_reduce = None
        if reduce_sums is not None:
            sub_reduce = (lambda sums, at, indices=indices: reduce_sums(sums, [indices[k] for k in at]))
        sub_buckets = func(*[[values[i] for i in indices] for values in (params, grads, exp_avgs, exp_avg_sqs,
                                                                          state_steps)],
                           numels=[numels[i] for i in indices] if numels is not None else None,
                           reduce_sums=sub_reduce, **options)
        buckets += [([indices[k] for k in positions], a, r) for positions, a, r in sub_buckets]
    return buckets


def _single_tensor_alphaadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    mask: str,
    alpha: str,
    alpha_max: float | None,
    first_step: str,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: SumsReducer | None = None,
) -> list[StatisticsBucket]:
    """The reference loop: one tensor at a time, written as the algorithm box reads."""
    alphas, ratios = [], []
    for index, (param, grad, exp_avg, exp_avg_sq, step_t) in enumerate(
            zip(params, grads, exp_avgs, exp_avg_sqs, state_steps)):
        dtype = compute_dtype(param)
        p = param.to(dtype)
        g = grad.to(dtype)
        g = -g if maximize else g
        m = exp_avg.to(dtype)
        v = exp_avg_sq.to(dtype)

        step_t += 1
        step = _get_value(step_t)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step

        if mask == "async":
            phi = sign_agreement(m, g)  # m is still m_{t-1}
        m = m.lerp(g, 1 - beta1)
        v = v * beta2 + (1 - beta2) * g * g
        u = (m / bias_correction1) / (v.sqrt() / math.sqrt(bias_correction2) + eps)
        if mask == "sync":
            phi = sign_agreement(m, g)
        if mask == "none" or (first_step == "full" and step == 1):
            phi = torch.ones_like(u)

        step_direction, alpha_t, mask_ratio = masked_step(
            u, phi, alpha, alpha_max, numel=numels[index] if numels else None,
            reduce_sums=(lambda sums: reduce_sums(sums, [index])) if reduce_sums is not None else None)
        moved = (mask_ratio > 0).to(dtype)  # a tensor with an empty mask is not moved, weight decay included

        p = p * (1 - lr * weight_decay * moved)
        p = p - lr * step_direction

        param.copy_(p)
        exp_avg.copy_(m)
        exp_avg_sq.copy_(v)
        alphas.append(alpha_t)
        ratios.append(mask_ratio)
    if not params:
        return []
    return [(list(range(len(params))), torch.stack(alphas), torch.stack(ratios))]
