r"""The options of the package's optimizers, each declared once: shared fragments and one schema per class.

Fragments (ordered ``key -> Option`` dicts): :data:`ADAM` (lr, betas, eps, weight_decay, maximize), :data:`MASK`
(the sign-agreement mask and alpha rules of ``_masking.py``), :data:`PRECISION` (state dtype, 8-bit moments, bf16
updates), :data:`DISPATCH` (which code path), :data:`DISTRIBUTED` and :data:`RESUME`. The schemas
:data:`ALPHAADAM_SCHEMA`, :data:`ADAPM_SCHEMA` and :data:`ADADIAG_SCHEMA` combine them with each optimizer's own
options, in the order of the constructors' arguments. The choice tuples (:data:`MASK_MODES`, ...) are the ones
the optimizers' code compares against.

Imports neither torch nor transformers.
"""

from __future__ import annotations

import re
from typing import Any

from ._options import Option, OptionSchema

__all__ = ["ADADIAG_SCHEMA", "ADAM", "ADAPM_SCHEMA", "ALPHAADAM_SCHEMA", "DISPATCH", "DISTRIBUTED", "MASK",
           "PRECISION", "RESUME", "saved_dtype_name"]

MASK_MODES = ("async", "sync", "none")
ALPHA_MODES = ("norm", "count", "none")
FIRST_STEP_MODES = ("full", "masked")
STATE_BITS = (32, 8)
BF16_UPDATE_MODES = ("plain", "kahan", "stochastic")
#: ``state_dtype`` names; the short ones are saved as the long ones (:func:`saved_dtype_name`)
STATE_DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "float64", "fp64")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}


def saved_dtype_name(value: Any) -> Any:
    """A floating torch dtype or a dtype name -> the name param groups save (``torch.bfloat16``, ``"bf16"`` ->
    ``"bfloat16"``); anything else is returned unchanged for the check to refuse. Uses the dtype's ``str()``, so
    torch is not imported here."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype" and value.is_floating_point:
        value = str(value).removeprefix("torch.")
    return _DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


ADAM: dict[str, Option] = {
    "lr": Option(float, min=0.0, tensor=True, default=1e-3, optim_arg=False, help="learning rate",
                 doc=r"learning rate :math:`\eta` (>= 0; a float or a one-element tensor)."),
    "betas": Option(float, min=0.0, max=1.0, max_inclusive=False, pair=True, default=(0.9, 0.999),
                    optim_arg=False, help="Adam's (beta1, beta2)",
                    doc=r":math:`(\beta_1, \beta_2)`, each in [0, 1)."),
    "eps": Option(float, min=0.0, min_inclusive=False, default=1e-8, optim_arg=False,
                  help="added to sqrt(v) after bias correction",
                  doc=r"added to :math:`\sqrt{\hat v}` after bias correction, as in ``torch.optim.AdamW`` (> 0)."),
    "weight_decay": Option(float, min=0.0, default=0.01, optim_arg=False, help="decoupled weight decay",
                           doc=r"decoupled weight decay :math:`\lambda` (>= 0), applied before the (masked) step."),
    # the Trainer minimizes its loss: not an optim_args key
    "maximize": Option(bool, default=False, optim_arg=False, help="maximize the objective",
                       doc="maximize the objective instead of minimizing it."),
}

MASK: dict[str, Option] = {
    "mask": Option(str, choices=MASK_MODES, default="async",
                   help="sign-agreement mask: AlphaAdam's async, Cautious' sync, none",
                   doc=r"``'async'`` (AlphaAdam, ``1(m_{t-1} g_t > 0)``), ``'sync'`` (Cautious AdamW, ``1(m_t g_t > "
                       "0)``) or ``'none'`` (see ``_masking.py``)."),
    "alpha": Option(str, choices=ALPHA_MODES, default="norm",
                    help="step scale: norm-restoring, Cautious' count, none",
                    doc=r"``'norm'`` (:math:`\|u\|_2 / \|\varphi \circ u\|_2`), ``'count'`` (Cautious' ``numel / "
                        "(sum(phi) + 1)``) or ``'none'`` (1)."),
    "alpha_max": Option(float, min=1.0, none=True, default=None, help="upper clamp of alpha (none: no clamp)",
                        doc="optional upper clamp of alpha (>= 1: alpha only ever scales the masked step up); "
                            "``None`` leaves alpha unclamped."),
    "first_step": Option(str, choices=FIRST_STEP_MODES, default="full",
                         help="unmasked (full) or masked first step",
                         doc=r"``'full'`` applies the unmasked update at each tensor's first step, since "
                             r":math:`m_0 = 0` makes the asynchronous mask empty; ``'masked'`` applies the mask as "
                             "written, which for ``mask='async'`` means the first step does not move the tensor at "
                             "all."),
}

PRECISION: dict[str, Option] = {
    "state_dtype": Option(str, choices=STATE_DTYPE_NAMES, none=True, default=None, normalize=saved_dtype_name,
                          help="dtype of the moments: a floating torch.dtype or its name (none: automatic)",
                          doc="dtype of ``exp_avg`` / ``exp_avg_sq``: ``None`` stores them in fp32 for bf16/fp16 "
                              "parameters and in the parameter's dtype otherwise; ``torch.bfloat16`` (or "
                              "``'bf16'``) halves their memory. The math always runs in fp32 (fp64 for fp64 "
                              "parameters). Param groups save the dtype's name (``'bfloat16'``)."),
    # optim="alphaadam_8bit" fixes state_bits=8 and offers the two options after it
    "state_bits": Option(int, choices=STATE_BITS, default=32, optim_arg=False,
                         help="32-bit or 8-bit blockwise-quantized moments",
                         doc="``32`` or ``8``. With 8, ``exp_avg`` / ``exp_avg_sq`` of each tensor with at least "
                             "``min_8bit_size`` elements are stored blockwise-quantized with bitsandbytes (uint8 "
                             "codes plus an fp32 absmax per 256 elements: about 2 bytes per parameter instead of 8; "
                             "signed dynamic map for the first moment, unsigned for the second, as bitsandbytes' "
                             "8-bit optimizers) and dequantized to fp32 for the update, one tensor at a time. Needs "
                             "``pip install hf-alphaadam[bnb]``. Not supported for DTensor (FSDP2) parameters or "
                             "flat ZeRO partitions. See ``_quantized.py``."),
    "min_8bit_size": Option(int, min=0, default=4096, optim_arg=False,
                            help="smaller tensors keep 32-bit moments",
                            doc="tensors with fewer elements keep 32-bit moments under ``state_bits=8`` (4096 as "
                                "bitsandbytes)."),
    "quantize_embeddings": Option(bool, default=False, optim_arg=False,
                                  help="also quantize the moments of embeddings",
                                  doc="under ``state_bits=8``, also quantize the moments of embeddings, recognised "
                                      "by their name in the group's ``param_names`` (``embed``, ``wte``, ``wpe``, "
                                      "...; pass ``(name, parameter)`` pairs). ``False``: embeddings keep 32-bit "
                                      "moments, as the HF Trainer does for bitsandbytes' 8-bit optimizers."),
    "bf16_update": Option(str, choices=BF16_UPDATE_MODES, default="plain", help="how bf16 parameters are written",
                          doc="how the fp32 update is written into a bf16 / fp16 parameter: ``'plain'`` (round to "
                              "nearest), ``'kahan'`` (a compensation buffer in the parameter's dtype, state key "
                              "``compensation``, carries the rounding error to the next step) or ``'stochastic'`` "
                              "(unbiased stochastic rounding, reproducible: the random bits depend only on a "
                              "per-tensor key in the state and the step, so a resumed run rounds exactly as an "
                              "uninterrupted one). fp32 / fp64 parameters are not affected."),
}

DISPATCH: dict[str, Option] = {
    "foreach": Option(bool, none=True, default=None, help="multi-tensor path (none: automatic)",
                      doc="``True`` for the multi-tensor path, ``False`` for the per-tensor reference loop (either "
                          "one also under ``fused=None``); ``None`` lets ``fused`` pick."),
    "fused": Option(bool, none=True, default=None,
                    help="two-pass step: native C kernel (fp32 CPU) or torch.compile'd kernels (none: automatic; "
                         "false: foreach)",
                    doc="the two-pass kernels: ``True`` forces them (the native C kernel for fp32 CPU tensors, "
                        "else ``torch.compile``d kernels), ``False`` forbids them, ``None`` lets the dispatch policy "
                        "choose. The policy is stated once, in ``_adam_engine.py``; each tensor's outcome is kept in "
                        "its plan. ``HF_ALPHAADAM_NATIVE=0`` in the environment turns the native kernel off."),
}

DISTRIBUTED: dict[str, Option] = {
    "partition_group": Option(object, default=None, optim_arg=False, in_group=False,
                              help="process group of flat-partition groups (None: the default group)",
                              doc="the process group over which flat-partition groups (groups with a "
                                  "``whole_numel`` entry, as the Trainer plugin builds them for DeepSpeed ZeRO) "
                                  "add their per-tensor sums; ``None`` is the default group. Not saved in "
                                  "``state_dict()``."),
}

RESUME: dict[str, Option] = {
    "adopt_changed_settings": Option(
        bool, default=False, in_group=False,
        help="on resume, continue with settings that differ from the checkpoint's instead of raising (see README "
             "'Checkpoints')",
        doc="on ``load_state_dict``, continue with this optimizer's settings where they differ from the "
            "checkpoint's (``lr``, ``alpha_max``, weight decay simply change, a new ``mask`` keeps the moments, a new "
            "``state_bits`` converts them; see ``_resume.py``) instead of raising a ValueError that names each "
            "difference. :attr:`LAYOUT_OPTIONS`, which shape the state, can never change. Not saved in "
            "``state_dict()``."),
}


def _subset(fragment: dict[str, Option], *keys: str) -> dict[str, Option]:
    return {key: fragment[key] for key in keys}


ALPHAADAM_SCHEMA = OptionSchema(
    "AlphaAdam",
    ADAM, MASK, _subset(PRECISION, "state_dtype"), DISPATCH, DISTRIBUTED,
    _subset(PRECISION, "state_bits", "min_8bit_size", "quantize_embeddings", "bf16_update"), RESUME,
)

# ---- AdaPM -------------------------------------------------------------------------------------------------------

ADAPM_SECOND_MOMENTS = ("adam", "mini")
RESIDUALS = ("full", "none", "clip")
POLICIES = ("none", "full", "lowrank")
GROUP_POLICIES = ("auto",) + POLICIES


def _modules(momentum: str) -> Option:
    return Option(re.Pattern, none=True, default=None, help=f"names that get {momentum} momentum",
                  doc=f"regex (``re.search`` on parameter names; ``|`` between alternatives, since the Trainer's "
                      f"``optim_args`` cannot carry commas; a list of regexes is joined with ``|``) of the tensors "
                      f"that get {momentum} momentum. The overrides apply in this order: ``none_modules``, "
                      "``full_modules``, ``lowrank_modules``. A regex given explicitly that matches no parameter "
                      "name is an error.")


ADAPM_OWN: dict[str, Option] = {
    "rank": Option(int, min=1, default=16, help="rank of the low-rank momentum factors",
                   doc="rank ``r`` of low-rank momentum (int >= 1; capped at ``min(rows, cols)`` of each block). The "
                       "paper's value was not recovered; 16 is the largest power of two whose momentum stays <= 10 % "
                       "of AdamW's for GPT-2 small..large (``benchmarks/memory.py``)."),
    "second_moment": Option(str, choices=ADAPM_SECOND_MOMENTS, default="adam",
                            help="element-wise (adam) or compact per-row / per-head (mini) second moment",
                            doc="``'adam'`` (element-wise) or ``'mini'`` (Adam-mini style: one value per output "
                                "row, per head for query / key when ``head_dim`` is given; 1-D tensors keep the "
                                "element-wise v)."),
    "head_dim": Option(int, min=1, none=True, default=None, help="head size for per-head compact v of q/k (mini)",
                       doc="attention head dimension for ``second_moment='mini'`` (``None``: per row for q / k as "
                           "well)."),
    "refit_iters": Option(int, min=0, default=1, help="subspace-iteration steps refitting the factors each step",
                          doc="subspace-iteration steps per refit of the low-rank factors (int >= 0; 1 is one "
                              "warm-started power-iteration step; 0 keeps the initial random basis, a GaLore-like "
                              "fixed projection)."),
    "residual": Option(str, choices=RESIDUALS, default="full", help="how the low-rank fit's residual is used",
                       doc="what the update uses from a low-rank block: ``'full'`` (``m~``, exact for the current "
                           "gradient, only the carried state is low-rank), ``'none'`` (the refit ``L R``) or "
                           "``'clip'`` (``L R`` plus the residual with its norm capped at ``residual_clip * ||L "
                           "R||``). The paper's residual / clip step is not public: ``'full'`` is its identity-clip "
                           "reading."),
    "residual_clip": Option(float, min=0.0, min_inclusive=False, default=1.0,
                            help="residual norm cap relative to the low-rank part (clip)",
                            doc="the cap for ``residual='clip'`` (> 0)."),
    "policy": Option(str, choices=GROUP_POLICIES, default="auto", help="momentum per block",
                     doc="``'auto'`` (by name) or ``'none'|'full'|'lowrank'`` for every matrix of the group."),
    "none_modules": _modules("no"),
    "full_modules": _modules("full"),
    "lowrank_modules": _modules("low-rank"),
    "lm_head": Option(str, choices=POLICIES, default="none", help="momentum of an untied lm_head",
                      doc="momentum of an untied ``lm_head`` (``'none'`` is like the token embedding)."),
    "other": Option(str, choices=POLICIES, default="full", help="momentum of unrecognised matrices",
                    doc="momentum of matrices no rule recognises."),
    "fused_qkv_modules": Option(re.Pattern, none=True, default="auto", help="fused q|k|v weights to split",
                                doc="regex of fused q|k|v weights split into three output slices (``'auto'``: "
                                    "GPT-2's ``attn.c_attn``; ``None``: split nothing)."),
    "transposed_modules": Option(re.Pattern, none=True, default="auto", help="weights stored (in, out)",
                                 doc="regex of weights stored ``(in, out)`` (``'auto'``: GPT-2's Conv1D names; "
                                     "``None``: none)."),
    "dense_fallback": Option(bool, default=True, help="full momentum where the factors would not save memory",
                             doc="a block whose factors would hold as many numbers as the matrix (``r (rows + "
                                 "cols) >= rows cols``) gets full momentum instead (same maths, less memory)."),
}

ADAPM_SETTINGS: dict[str, Option] = {
    "seed": Option(int, default=0, help="seed of the initial factors",
                   doc="seed of the initial random bases (combined with each tensor's name)."),
    "log_policy": Option(bool, default=True, in_group=False, help="log the per-tensor policy table once",
                         doc="log the per-tensor policy table once at construction (INFO, main process only)."),
    "tensor_threads": Option(int, min=1, none=True, default=None, in_group=False,
                             help="CPU worker threads for the low-rank tensors (none: torch's thread count)",
                             doc="worker threads for the low-rank / compact tensors of the fast path on the CPU, "
                                 "each with single-threaded torch kernels (``_tensor_threads.py``; their small "
                                 "matrix products do not speed up with more MKL threads, whole tensors side by side "
                                 "do). ``None``: ``torch.get_num_threads()`` for CPU tensors, where the per-thread "
                                 "limits work; ``1``: one tensor after another. Not state."),
}

_NO_MASK = {"mask": {"default": "none"}, "alpha": {"default": "none"}}

_MOMENT_PRECISION = _subset(PRECISION, "state_bits", "min_8bit_size", "quantize_embeddings", "bf16_update")

ADAPM_SCHEMA = OptionSchema(
    "AdaPM",
    ADAM, ADAPM_OWN, MASK, _subset(PRECISION, "state_dtype"), _subset(ADAPM_SETTINGS, "seed"),
    _subset(DISPATCH, "foreach"), DISTRIBUTED, _subset(ADAPM_SETTINGS, "log_policy", "tensor_threads"),
    _MOMENT_PRECISION, RESUME,
    overrides={
        **_NO_MASK,
        "state_bits": {"doc": PRECISION["state_bits"].doc + " In AdaPM, 8 bits hold the full-size ``exp_avg`` / "
                                                            "``exp_avg_sq`` of element-wise (full / no momentum) "
                                                            "blocks; low-rank factors, compact v and partial-row "
                                                            "moments stay 32-bit."},
        "state_dtype": {"doc": "dtype of all state tensors (``None``: fp32 for bf16/fp16 parameters, else the "
                               "parameter's). Param groups save the dtype's name (``'bfloat16'``)."},
        "foreach": {"doc": "``True`` fast path, ``False`` per-tensor reference, ``None``: fast path."},
    },
)

# ---- AdaDiag -----------------------------------------------------------------------------------------------------

SIDES = ("auto", "left", "right")
MOMENT_SPACES = ("rotated", "original")
ADADIAG_SECOND_MOMENTS = ("adam", "adafactor")

ADADIAG_OWN: dict[str, Option] = {
    "update_freq": Option(int, min=1, default=10, help="steps between basis refreshes",
                          doc="``T``, steps between basis refreshes (int >= 1). A tensor's basis is recomputed from "
                              "its current gradient at its steps 1, 1 + T, 1 + 2T, ... The paper's value was not "
                              "recovered (GaLore uses 200, SOAP 10); 10 is SOAP's (see ``benchmarks/adadiag.py`` "
                              "for the sweep)."),
    "two_sided": Option(bool, default=False, help="AdaDiag++ (left and right bases) instead of one basis",
                        doc="``False``: AdaDiag (one basis); ``True``: AdaDiag++ (left and right bases)."),
    "side": Option(str, choices=SIDES, default="auto", help="one-sided rotation side (auto: smaller)",
                   doc="one-sided only: ``'auto'`` (the smaller dimension), ``'left'`` or ``'right'``."),
    "moment_space": Option(str, choices=MOMENT_SPACES, default="rotated", help="where the moments live",
                           doc="``'rotated'`` (the first moment lives in the rotated basis, as the paper's "
                               "description) or ``'original'`` (SOAP-style: kept in the original space and rotated "
                               "every step, two extra matmuls). The second moment always lives in the rotated "
                               "basis."),
    "second_moment": Option(str, choices=ADADIAG_SECOND_MOMENTS, default="adam",
                            help="dense or factored second moment",
                            doc="``'adam'`` (dense) or ``'adafactor'`` (row / column EMAs of the rotated squared "
                                "gradient, ``V = r c^T / mean(r)``; m + n numbers instead of m n)."),
    "reproject": Option(bool, default=False, help="carry the moments into a new basis at a refresh",
                        doc="at a refresh, carry the moments into the new basis (``M`` exactly; ``V`` through the "
                            "squared rotation, which is exact for the diagonal of a covariance). ``False``: the "
                            "moments are reused as they are (GaLore-like), as the paper's description reads. Costs "
                            "only at refresh steps."),
    "align_signs": Option(bool, default=True, help="flip new singular vectors to agree with the old ones",
                          doc="at a refresh, flip each new singular vector whose overlap with the corresponding "
                              "old basis vector is negative (the first basis is aligned with the identity). An SVD "
                              "fixes singular vectors only up to sign, so without this, moments reused across a "
                              "refresh may see some of their rows/columns negated at random; with it the run is "
                              "also independent of the LAPACK / cuSOLVER sign convention. No effect on the math "
                              "within one basis period."),
    "rotate": Option((bool, re.Pattern), default="auto", help="which 2-D tensors are rotated",
                     doc="``'auto'`` (every 2-D tensor except embeddings, recognised by name), ``True``, ``False`` "
                         "or a regex over parameter names (see the module doc)."),
    "max_dim": Option(int, min=1, none=True, default=8192, help="sides longer than this are not rotated",
                      doc="a side longer than this is not rotated (``None``: no limit)."),
}

ADADIAG_SCHEMA = OptionSchema(
    "AdaDiag",
    ADAM, ADADIAG_OWN, MASK, _subset(PRECISION, "state_dtype"), _subset(DISPATCH, "foreach"), DISTRIBUTED,
    _MOMENT_PRECISION, RESUME,
    overrides={
        **_NO_MASK,
        "state_bits": {"doc": PRECISION["state_bits"].doc + " In AdaDiag, 8 bits hold ``exp_avg`` and a dense "
                                                            "``exp_avg_sq``; bases and factored moments stay "
                                                            "32-bit."},
        "state_dtype": {"doc": "dtype of the moments (``None``: fp32 for bf16/fp16 parameters, else the "
                               "parameter's dtype). Bases are always kept in the compute dtype (fp32, or fp64 for "
                               "fp64 parameters). Param groups save the dtype's name (``'bfloat16'``)."},
        "foreach": {"doc": "``True`` for the batched path, ``False`` for the per-tensor reference; ``None``: "
                           "batched."},
    },
)
