"""The optimizer table: one entry per optimizer x configuration, read by the generic tests in ``test_optim_db.py``.

In the spirit of torch's ``optim_db`` (``torch/testing/_internal/common_optimizers.py``) and optimi's
``tests/runner.py``: an entry says how to build the optimizer, which code paths it offers, which parameter dtypes
it supports and how closely each path must follow the per-tensor reference loop in each dtype, whether it needs
parameter names, and which bad arguments it must refuse. A new optimizer or configuration is one more entry; the
generic tests then check it the way they check every other one.

Only the public API is used: the classes of ``hf_alphaadam.optim``, their constructor arguments, ``step``,
``state_dict`` / ``load_state_dict`` and ``statistics()``.

The helpers at the bottom (named parameters of odd shapes, seeded gradients, stepping, comparing states) are the
ones the per-optimizer test files share; they live here once.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from hf_alphaadam.optim import AdaDiag, AdaPM, AlphaAdam

# ------------------------------------------------------------------------------------------------ the model

# (name, shape): every entry steps these. Names follow Llama / GPT-2 so that AdaPM's name policy and AdaDiag's
# embedding rule see real names; shapes are odd (tall, wide, square, 3-D, a fused Conv1D ``c_attn`` stored
# (in, 3 * out)), two matrices share a shape (AdaDiag batches same-shaped matrices), one spans three 256-element
# blocks (8-bit states quantize per block), 933 elements in all.
MODEL_SPEC = (
    ("model.embed_tokens.weight", (9, 4)),
    ("model.layers.0.self_attn.q_proj.weight", (6, 5)),
    ("model.layers.0.self_attn.k_proj.weight", (4, 5)),
    ("model.layers.0.self_attn.v_proj.weight", (3, 5)),
    ("model.layers.0.self_attn.o_proj.weight", (5, 5)),
    ("model.layers.0.mlp.up_proj.weight", (7, 7)),
    ("model.layers.0.mlp.down_proj.weight", (4, 9)),
    ("model.layers.1.mlp.down_proj.weight", (4, 9)),
    ("model.layers.1.mlp.up_proj.weight", (17, 31)),
    ("model.layers.0.mlp.gate_proj.weight", (3, 4, 2)),
    ("transformer.h.0.attn.c_attn.weight", (6, 18)),
    ("model.layers.0.mlp.up_proj.bias", (7,)),
    ("model.layers.0.input_layernorm.weight", (7,)),
)

LR = 1e-2


def lr_at(step: int) -> float:
    """The learning rate of step ``step`` (0-based): it changes every step, so a path that caches lr is caught."""
    return LR * (1.0 - 0.06 * step)


# ------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Tolerance:
    """How closely a path follows the reference loop: parameters (``rtol``, ``atol``), state tensors
    (``state_rtol``, ``state_atol``) and per-tensor statistics (``stat_rel``, relative)."""

    rtol: float
    atol: float
    state_rtol: float
    state_atol: float
    stat_rel: float = 1e-4


@dataclass(frozen=True)
class Path:
    """A code path: the constructor arguments that select it, and the parameter dtypes it exists for."""

    name: str
    kwargs: dict[str, Any]
    dtypes: tuple[torch.dtype, ...] | None = None  # None: every dtype the entry supports
    doc: str = ""
    tolerances: dict[torch.dtype, "Tolerance"] = field(default_factory=dict)  # where it differs from the entry's


REFERENCE = Path("reference", {"foreach": False}, doc="the per-tensor reference loop, the oracle")
FOREACH = Path("foreach", {"foreach": True}, doc="the multi-tensor / batched path")
DEFAULT = Path("default", {}, doc="what the optimizer picks by itself (foreach=None, fused=None)")
# the native C kernel (fp32 CPU) rounds differently again: it accumulates the per-tensor sums in its own order and
# lets the compiler contract multiply-adds (test_native.py's tolerance; state atol 1e-7 instead of 1e-8 for
# moments near zero after 15 steps)
NATIVE_TOLERANCE = Tolerance(1e-5, 1e-6, 1e-5, 1e-7)
# fused=True on fp32 CPU tensors is the native C kernel; on other dtypes it would mean torch.compile (covered by
# test_compiled.py), so the table offers it for fp32 only
FUSED = Path("fused", {"fused": True}, dtypes=(torch.float32,), doc="the native C kernel (fp32 CPU)",
             tolerances={torch.float32: NATIVE_TOLERANCE})
# AlphaAdam's default on fp32 CPU tensors is the native kernel too
ALPHAADAM_DEFAULT = Path("default", {}, doc=DEFAULT.doc, tolerances={torch.float32: NATIVE_TOLERANCE})


@dataclass(frozen=True)
class BadArg:
    """A constructor argument the entry must refuse: ``kwargs`` raise ``error`` with ``fragment`` in the message
    (the fragment names the key). ``group``: also refused as a param-group override."""

    kwargs: dict[str, Any]
    error: type[Exception]
    fragment: str
    group: bool = True


@dataclass(frozen=True)
class OptimEntry:
    """One optimizer x configuration.

    ``kwargs`` are the constructor arguments of the configuration; ``variants`` are extra argument sets that the
    path-equivalence test also runs (each on top of ``kwargs``), ``resume_variants`` those that the resume test
    also runs (configurations whose state differs). ``needs_names``: the optimizer refuses parameters without
    names; ``named``: the entry is built with names although it does not need them (its configuration reads
    names, e.g. the 8-bit embedding rule); other entries are built without names. ``mask_free``: the configuration
    has no mask and no alpha, so every tensor must report alpha 1 and mask ratio 1. ``requires``: modules that must
    be importable.
    """

    name: str
    cls: type[Optimizer]
    kwargs: dict[str, Any]
    paths: tuple[Path, ...]
    dtypes: tuple[torch.dtype, ...]
    tolerances: dict[torch.dtype, Tolerance]
    needs_names: bool
    bad_args: tuple[BadArg, ...]
    named: bool = False
    mask_free: bool = False
    variants: tuple[dict[str, Any], ...] = ()
    resume_variants: tuple[dict[str, Any], ...] = ()
    requires: tuple[str, ...] = ()

    def build(self, named_params: list[tuple[str, torch.Tensor]], path: Path = REFERENCE,
              **overrides: Any) -> Optimizer:
        """The optimizer over two param groups, as the Trainer plugin builds them: ``decay`` (the matrices) and
        ``no_decay`` (the 1-D tensors, weight decay 0), with parameter names if the entry needs them."""
        matrices = [(n, p) for n, p in named_params if p.dim() >= 2]
        vectors = [(n, p) for n, p in named_params if p.dim() < 2]
        groups = [{"params": matrices, "name": "decay"},
                  {"params": vectors, "name": "no_decay", "weight_decay": 0.0}]
        if not self.is_named:
            groups = [{"params": [p for _, p in g["params"]], **{k: v for k, v in g.items() if k != "params"}}
                      for g in groups]
        kwargs = {"lr": LR, "weight_decay": 0.1, **self.kwargs, **path.kwargs, **overrides}
        return self.cls(groups, **kwargs)

    @property
    def is_named(self) -> bool:
        """Whether :meth:`build` passes parameter names."""
        return self.needs_names or self.named

    def tolerance(self, path: Path, dtype: torch.dtype) -> Tolerance:
        """How closely ``path`` must follow the reference loop for ``dtype`` parameters."""
        return path.tolerances.get(dtype, self.tolerances[dtype])

    def paths_for(self, dtype: torch.dtype) -> list[Path]:
        return [p for p in self.paths if p.dtypes is None or dtype in p.dtypes]

    def available(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


# Adam's arguments, refused by every optimizer of the family
ADAM_BAD_ARGS = (
    BadArg({"lr": -1e-3}, ValueError, "lr"),
    BadArg({"lr": "fast"}, TypeError, "lr"),
    BadArg({"betas": (1.0, 0.999)}, ValueError, "betas[0] must be in [0, 1)"),
    BadArg({"betas": (0.9, -0.1)}, ValueError, "betas[1]"),
    BadArg({"betas": (0.9,)}, ValueError, "betas must be a pair"),
    BadArg({"betas": 0.9}, ValueError, "betas must be a pair"),
    BadArg({"eps": 0.0}, ValueError, "eps"),
    BadArg({"weight_decay": -0.1}, ValueError, "weight_decay"),
    BadArg({"mask": "later"}, ValueError, "mask must be one of ('async', 'sync', 'none')"),
    BadArg({"alpha": "max"}, ValueError, "alpha must be one of ('norm', 'count', 'none')"),
    BadArg({"alpha_max": 0.5}, ValueError, "alpha_max must be >= 1"),
    BadArg({"alpha_max": "2"}, TypeError, "alpha_max"),
    BadArg({"first_step": "skip"}, ValueError, "first_step must be one of"),
    BadArg({"state_dtype": "int8"}, ValueError, "state_dtype must be"),
    BadArg({"foreach": "yes"}, TypeError, "foreach"),
    BadArg({"adopt_changed_settings": "yes"}, ValueError, "adopt_changed_settings", group=False),
)
ALPHAADAM_BAD_ARGS = ADAM_BAD_ARGS + (
    BadArg({"fused": "yes"}, TypeError, "fused"),
    BadArg({"maximize": 1}, TypeError, "maximize"),
    *(BadArg({"state_bits": bits}, ValueError, "state_bits must be 32 or 8") for bits in (16, 4, True, "8", 8.5)),
    BadArg({"min_8bit_size": -1}, ValueError, "min_8bit_size"),
    BadArg({"min_8bit_size": 1.5}, ValueError, "min_8bit_size"),
    BadArg({"quantize_embeddings": 1}, TypeError, "quantize_embeddings"),
    *(BadArg({"bf16_update": mode}, ValueError, "bf16_update must be one of")
      for mode in ("", "fp32", "Kahan", None, 1)),
)
ADAPM_BAD_ARGS = ADAM_BAD_ARGS + (
    BadArg({"rank": 0}, ValueError, "rank must be an integer >= 1"),
    BadArg({"rank": 2.5}, TypeError, "rank must be an integer"),
    BadArg({"second_moment": "adafactor"}, ValueError, "second_moment must be one of ('adam', 'mini')"),
    BadArg({"head_dim": 0}, ValueError, "head_dim must be"),
    BadArg({"refit_iters": -1}, ValueError, "refit_iters must be"),
    BadArg({"residual": "fira"}, ValueError, "residual must be one of"),
    BadArg({"residual_clip": 0.0}, ValueError, "residual_clip must be"),
    BadArg({"policy": "fancy"}, ValueError, "policy must be one of ('auto', 'none', 'full', 'lowrank')"),
    BadArg({"lm_head": "low"}, ValueError, "lm_head must be one of ('none', 'full', 'lowrank')"),
    BadArg({"other": "half"}, ValueError, "other must be one of"),
    BadArg({"lowrank_modules": "("}, ValueError, "not a valid regular expression"),
    BadArg({"full_modules": 3}, TypeError, "full_modules must be a regex"),
    BadArg({"tensor_threads": 0}, ValueError, "tensor_threads", group=False),
)
ADADIAG_BAD_ARGS = ADAM_BAD_ARGS + (
    BadArg({"update_freq": 0}, ValueError, "update_freq must be an integer >= 1"),
    BadArg({"update_freq": -3}, ValueError, "update_freq must be an integer >= 1"),
    BadArg({"update_freq": 2.5}, TypeError, "update_freq"),
    BadArg({"update_freq": True}, TypeError, "update_freq"),
    BadArg({"two_sided": "yes"}, TypeError, "two_sided must be a bool"),
    BadArg({"reproject": 1}, TypeError, "reproject must be a bool"),
    BadArg({"side": "top"}, ValueError, "side must be one of"),
    BadArg({"moment_space": "both"}, ValueError, "moment_space must be one of ('rotated', 'original')"),
    BadArg({"second_moment": "lion"}, ValueError, "second_moment must be one of ('adam', 'adafactor')"),
    BadArg({"rotate": 3}, TypeError, "rotate must be"),
    BadArg({"rotate": "(unclosed"}, ValueError, "not a valid regular expression"),
    BadArg({"max_dim": 0}, ValueError, "max_dim"),
)

# Path vs reference. fp64: the paths order their arithmetic differently (e.g. m / (bc1 * d) vs (m / bc1) / d),
# a few ulps over the steps. fp32: the same differences at fp32's ulp (about 6e-8), grown over 8 steps. bf16: the
# fp32 results agree to fp32 rounding and are written back by one shared function, so parameters agree except
# where a difference straddles a bf16 rounding boundary.
ADAM_TOLERANCES = {
    torch.float64: Tolerance(1e-12, 1e-10, 1e-12, 1e-9),
    torch.float32: Tolerance(1e-6, 1e-5, 1e-6, 1e-9),
    torch.bfloat16: Tolerance(0.0, 1e-2, 1e-6, 1e-9),
}
# AdaPM's fast path refits its factors with one addmm and keeps full-size state in the parameter's memory order
ADAPM_TOLERANCES = {
    torch.float64: Tolerance(1e-10, 1e-12, 1e-10, 1e-12, stat_rel=1e-3),
    torch.float32: Tolerance(1e-5, 1e-5, 1e-4, 1e-5, stat_rel=1e-3),
    torch.bfloat16: Tolerance(0.0, 1e-2, 1e-4, 1e-5, stat_rel=1e-3),
}
# AdaDiag's batched path takes one batched SVD per shape bucket, the reference one SVD per matrix
ADADIAG_TOLERANCES = {
    torch.float64: Tolerance(1e-12, 1e-12, 1e-10, 1e-12),
    torch.float32: Tolerance(1e-5, 1e-5, 1e-5, 1e-5),
    torch.bfloat16: Tolerance(0.0, 1e-2, 1e-5, 1e-5),
}
# 8-bit states: the paths round differently in fp32, which can move a value across a code boundary now and then
EIGHT_BIT_TOLERANCES = {
    torch.float64: Tolerance(1e-12, 1e-10, 1e-12, 1e-9),
    torch.float32: Tolerance(1e-6, 1e-5, 1e-6, 1e-9),
    torch.bfloat16: Tolerance(0.0, 1e-2, 1e-6, 1e-9),
}

ALL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
ALPHAADAM_PATHS = (REFERENCE, FOREACH, FUSED, ALPHAADAM_DEFAULT)
STRUCTURED_PATHS = (REFERENCE, FOREACH, DEFAULT)  # AdaPM / AdaDiag have no fused argument
# every mask x alpha mode of AlphaAdam (alpha_max with count, whose alpha can be large), plus the other options
ALPHAADAM_VARIANTS = tuple(
    {"mask": mask, "alpha": alpha, **({"alpha_max": 3.0} if alpha == "count" else {})}
    for mask in ("async", "sync", "none") for alpha in ("norm", "count", "none")
) + ({"alpha_max": 1.05}, {"first_step": "masked"}, {"maximize": True})
# each moment space x second moment, plain and with reprojection, the async mask with the count alpha clamped and
# the larger side forced (exact-zero rows)
ADADIAG_VARIANTS = tuple(
    {"moment_space": space, "second_moment": second, **masked}
    for space in ("rotated", "original") for second in ("adam", "adafactor")
    for masked in ({}, {"mask": "async", "alpha": "count", "alpha_max": 3.0, "reproject": True, "side": "left"})
) + ({"maximize": True},)

OPTIM_DB: tuple[OptimEntry, ...] = (
    OptimEntry("alphaadam", AlphaAdam, {}, ALPHAADAM_PATHS, ALL_DTYPES, ADAM_TOLERANCES, needs_names=False,
               bad_args=ALPHAADAM_BAD_ARGS, variants=ALPHAADAM_VARIANTS),
    OptimEntry("cautious_adamw", AlphaAdam, {"mask": "sync", "alpha": "count"}, ALPHAADAM_PATHS, ALL_DTYPES,
               ADAM_TOLERANCES, needs_names=False, bad_args=ALPHAADAM_BAD_ARGS),
    OptimEntry("adamw_mode", AlphaAdam, {"mask": "none", "alpha": "none"}, ALPHAADAM_PATHS, ALL_DTYPES,
               ADAM_TOLERANCES, needs_names=False, bad_args=ALPHAADAM_BAD_ARGS, mask_free=True),
    # min_8bit_size=32: the table's tensors are small; the embedding keeps 32-bit moments (quantize_embeddings off)
    OptimEntry("alphaadam_8bit", AlphaAdam, {"state_bits": 8, "min_8bit_size": 32},
               (REFERENCE, FOREACH, ALPHAADAM_DEFAULT),
               ALL_DTYPES, EIGHT_BIT_TOLERANCES, needs_names=False, named=True,
               bad_args=ALPHAADAM_BAD_ARGS, requires=("bitsandbytes",),
               variants=({"mask": "sync", "alpha": "count"}, {"quantize_embeddings": True},
                         {"bf16_update": "stochastic"}),
               resume_variants=({"bf16_update": "stochastic"},)),
    # bf16_update changes only how bf16 / fp16 parameters are written; fp32 / fp64 ones take the plain paths
    OptimEntry("alphaadam_bf16_kahan", AlphaAdam, {"bf16_update": "kahan"}, ALPHAADAM_PATHS, ALL_DTYPES,
               ADAM_TOLERANCES, needs_names=False, bad_args=ALPHAADAM_BAD_ARGS),
    OptimEntry("alphaadam_bf16_stochastic", AlphaAdam, {"bf16_update": "stochastic"}, ALPHAADAM_PATHS,
               ALL_DTYPES, ADAM_TOLERANCES, needs_names=False, bad_args=ALPHAADAM_BAD_ARGS),
    OptimEntry("adapm", AdaPM, {"rank": 2, "log_policy": False}, STRUCTURED_PATHS, ALL_DTYPES, ADAPM_TOLERANCES,
               needs_names=True, bad_args=ADAPM_BAD_ARGS, mask_free=True,
               variants=({"residual": "none"}, {"residual": "clip", "residual_clip": 0.3, "refit_iters": 2},
                         {"maximize": True, "weight_decay": 0.0})),
    OptimEntry("adapm_full_rank", AdaPM, {"rank": 64, "dense_fallback": False, "log_policy": False},
               STRUCTURED_PATHS, ALL_DTYPES, ADAPM_TOLERANCES, needs_names=True, bad_args=ADAPM_BAD_ARGS,
               mask_free=True),
    OptimEntry("adapm_mini", AdaPM, {"rank": 2, "second_moment": "mini", "head_dim": 2, "log_policy": False},
               STRUCTURED_PATHS, ALL_DTYPES, ADAPM_TOLERANCES, needs_names=True, bad_args=ADAPM_BAD_ARGS,
               mask_free=True, variants=({"mask": "sync", "alpha": "count"},),
               resume_variants=({"mask": "async", "alpha": "norm"},)),
    OptimEntry("adapm_masked", AdaPM, {"rank": 2, "mask": "async", "alpha": "norm", "log_policy": False},
               STRUCTURED_PATHS, ALL_DTYPES, ADAPM_TOLERANCES, needs_names=True, bad_args=ADAPM_BAD_ARGS,
               variants=({"alpha_max": 1.5, "residual": "none", "maximize": True, "weight_decay": 0.0},
                         {"second_moment": "mini", "head_dim": 2})),
    OptimEntry("adadiag", AdaDiag, {"update_freq": 3}, STRUCTURED_PATHS, ALL_DTYPES, ADADIAG_TOLERANCES,
               needs_names=False, bad_args=ADADIAG_BAD_ARGS, mask_free=True, variants=ADADIAG_VARIANTS,
               resume_variants=({"second_moment": "adafactor"},)),
    OptimEntry("adadiag_pp", AdaDiag, {"update_freq": 3, "two_sided": True}, STRUCTURED_PATHS, ALL_DTYPES,
               ADADIAG_TOLERANCES, needs_names=False, bad_args=ADADIAG_BAD_ARGS, mask_free=True,
               variants=ADADIAG_VARIANTS,
               resume_variants=({"second_moment": "adafactor", "mask": "async", "alpha": "norm"},)),
    # the masked variants of adadiag / adadiag_pp run on the path test; this entry adds names (embeddings stay
    # AdamW), the resume, statistics and grad=None checks with a mask
    OptimEntry("adadiag_masked", AdaDiag, {"update_freq": 3, "mask": "async", "alpha": "norm"}, STRUCTURED_PATHS,
               ALL_DTYPES, ADADIAG_TOLERANCES, needs_names=False, named=True, bad_args=ADADIAG_BAD_ARGS,
               resume_variants=({"two_sided": True, "moment_space": "original"},)),
)


# ------------------------------------------------------------------------------------------------ helpers


def named_params(spec=MODEL_SPEC, dtype: torch.dtype = torch.float64,
                 seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Leaf tensors drawn in fp64 and cast, so that every dtype starts from the same values."""
    generator = torch.Generator().manual_seed(seed)
    return [(name, torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_())
            for name, shape in spec]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0, shapes=((6, 5), (7,), (3, 4, 2))):
    """Unnamed leaf tensors of the given shapes (drawn as :func:`named_params`)."""
    return [p for _, p in named_params([(str(i), s) for i, s in enumerate(shapes)], dtype, seed)]


def random_grads(params, step: int, none_every: int | None = None) -> list[torch.Tensor | None]:
    """A persistent direction plus noise, so that sign masks are neither empty nor full and momentum matters;
    with ``none_every``, the tensors with ``(step + index) % none_every == 0`` get no gradient."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads: list[torch.Tensor | None] = []
    for index, param in enumerate(params):
        if none_every and (step + index) % none_every == 0:
            grads.append(None)
            continue
        drift = torch.linspace(-1, 1, param.numel(), dtype=torch.float64).reshape(param.shape)
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        grads.append((0.5 * drift + noise).to(param.dtype))
    return grads


def set_grads(params, grads) -> None:
    for param, grad in zip(params, grads):
        param.grad = None if grad is None else grad.clone()


def run_steps(optimizer: Optimizer, params, steps: int, start: int = 0, none_every: int | None = None,
              schedule: bool = True) -> None:
    """Steps ``start .. start + steps - 1`` with :func:`random_grads`; with ``schedule``, lr follows :func:`lr_at`."""
    for step in range(start, start + steps):
        if schedule:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        set_grads(params, random_grads(params, step, none_every))
        optimizer.step()


def step_together(pairs, steps: int, none_every: int | None = None, each_step=None, schedule: bool = False) -> None:
    """Step every ``(optimizer, params)`` pair ``steps`` times on the same :func:`random_grads` (drawn for the
    first pair's params); ``each_step()``, if given, runs after each step of all of them. With ``schedule``, lr
    follows :func:`lr_at`."""
    for step in range(steps):
        grads = random_grads(pairs[0][1], step, none_every)
        for optimizer, params in pairs:
            if schedule:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
            set_grads(params, grads)
            optimizer.step()
        if each_step is not None:
            each_step()


def saved_and_loaded(obj: Any) -> Any:
    """``obj`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint travels."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def state_tensors(optimizer: Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    """``state_dict()["state"]``: per parameter index, its state tensors (plain numbers as 0-d tensors)."""
    return {index: {key: value if isinstance(value, torch.Tensor) else torch.tensor(value)
                    for key, value in state.items()}
            for index, state in optimizer.state_dict()["state"].items()}


def state_tensors_of(state_dict: dict) -> dict[int, dict[str, Any]]:
    """The ``"state"`` part of a state_dict as loaded (e.g. from a file), in :func:`state_tensors`' form."""
    return {index: dict(state) for index, state in state_dict["state"].items()}


def assert_same_state(actual: dict, expected: dict, rtol: float = 0.0, atol: float = 0.0, what: str = "",
                      per_key: dict[str, tuple[float, float]] | None = None) -> None:
    """Two ``state_dict()["state"]`` mappings hold the same keys, dtypes, shapes and (within the tolerance,
    exactly by default; ``per_key``: (rtol, atol) for some keys) values."""
    assert actual.keys() == expected.keys(), f"{what}: parameter indices {sorted(actual)} != {sorted(expected)}"
    for index in expected:
        assert actual[index].keys() == expected[index].keys(), f"{what}: state keys of parameter {index}"
        for key, value in expected[index].items():
            got = actual[index][key]
            if not isinstance(value, torch.Tensor):
                assert got == value, f"{what}: parameter {index} {key}"
                continue
            assert got.dtype == value.dtype, f"{what}: parameter {index} {key}: {got.dtype} != {value.dtype}"
            key_rtol, key_atol = (per_key or {}).get(key, (rtol, atol))
            if key_rtol == 0.0 and key_atol == 0.0:
                assert torch.equal(got, value), f"{what}: parameter {index} {key} differs"
            else:
                torch.testing.assert_close(got, value, rtol=key_rtol, atol=key_atol,
                                           msg=lambda m: f"{what}: parameter {index} {key}: {m}")
