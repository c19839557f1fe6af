"""The optimizer catalog: every optimizer of the package by name, with the options its name fixes.

Each entry is an :class:`OptimizerSpec`: a name (the Trainer's ``optim=`` value), the class, the constructor
arguments the name fixes (``cautious_adamw`` is AlphaAdam with ``mask="sync", alpha="count"``) and the
``optim_args`` keys it accepts, derived from the class's option schema (``_schemas.py``) minus the fixed ones.
:func:`build` makes an optimizer from a name, as benchmarks and examples do::

    from hf_alphaadam.optim import catalog

    optimizer = catalog.build("cautious_adamw", model.named_parameters(), lr=3e-4, weight_decay=0.1)

The Trainer side (``trainer/registry.py``) registers every entry of :data:`OPTIMIZERS` with transformers. Adding
an optimizer means one entry here (or ``hf_alphaadam.add_optimizer(spec)`` from outside the package).

This module imports neither torch nor transformers: classes are named as ``"module:Class"`` and imported on
first use.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._options import NO_DEFAULT, TRAINING_ARGUMENT_KEYS, Option, OptionSchema, describe_options
from ._schemas import ADADIAG_SCHEMA, ADAPM_SCHEMA, ALPHAADAM_SCHEMA

__all__ = ["BUILTIN_OPTIMIZERS", "OPTIMIZERS", "OptimizerSpec", "build"]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer offered by name.

    Args:
        name: the name (lower case, e.g. ``"alphaadam"``; the Trainer's ``optim=`` value).
        optimizer_cls: the ``torch.optim.Optimizer`` subclass, or ``"module:ClassName"`` to import it on first use
            (for optimizers with optional dependencies, and to keep the catalog free of torch imports).
        defaults: constructor arguments this name implies. Those not also in ``options`` are fixed by the name.
        options: the ``optim_args`` keys the optimizer accepts (:class:`~._options.Option` each). Left out
            (``None``): derived from ``schema``, i.e. its options with ``optim_arg=True`` plus ``extra_options``,
            minus ``defaults``.
        adam_hyperparameters: the Trainer passes ``betas=(adam_beta1, adam_beta2)`` and ``eps=adam_epsilon`` from
            its ``TrainingArguments`` (``lr`` and ``weight_decay`` are always passed).
        description: one line for documentation.
        schema: the class's option schema (``None``: the class's ``OPTIONS`` attribute if the class is given and
            has one). Every ``defaults`` entry is checked against it.
        extra_options: options of ``schema`` that are not ``optim_args`` keys by default but are for this name
            (``alphaadam_8bit``: ``min_8bit_size`` and ``quantize_embeddings``).
    """

    name: str
    optimizer_cls: type | str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Option] | None = None
    adam_hyperparameters: bool = True
    description: str = ""
    schema: OptionSchema | None = None
    extra_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"optimizer name {self.name!r} must be lower case letters, digits and underscores")
        schema = self.schema
        if schema is None and not isinstance(self.optimizer_cls, str):
            schema = getattr(self.optimizer_cls, "OPTIONS", None)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "defaults", dict(self.defaults))
        object.__setattr__(self, "extra_options", tuple(self.extra_options))
        self._refuse_training_arguments(self.defaults)
        if schema is not None:
            for key, value in self.defaults.items():
                if key not in schema:
                    raise ValueError(f"{self.name}: default {key}={value!r} is not an option of {schema.name} "
                                     f"({', '.join(schema)})")
                schema.check(key, value)
            unknown = [key for key in self.extra_options if key not in schema]
            if unknown:
                raise ValueError(f"{self.name}: extra_options {unknown} are not options of {schema.name}")
        options = self.options
        if options is None:
            options = schema.optim_args(fixed=tuple(self.defaults), extra=self.extra_options) if schema else {}
        object.__setattr__(self, "options", dict(options))
        self._refuse_training_arguments(self.options)

    def _refuse_training_arguments(self, keys: Mapping[str, Any]) -> None:
        for key in keys:
            if key in TRAINING_ARGUMENT_KEYS:
                raise ValueError(f"{self.name}: {key!r} comes from the TrainingArguments field "
                                 f"{TRAINING_ARGUMENT_KEYS[key]} and cannot be a default or an optim_args option")

    @property
    def fixed(self) -> dict[str, Any]:
        """The constructor arguments the name fixes (``optim_args`` cannot change them)."""
        return {key: value for key, value in self.defaults.items() if key not in self.options}

    def option_defaults(self) -> dict[str, Any]:
        """The value each ``optim_args`` key takes when it is not given (the name's default, else the schema's)."""
        schema_defaults = self.schema.defaults() if self.schema is not None else {}
        merged = {**schema_defaults, **self.defaults}
        return {key: merged[key] for key in self.options if key in merged and merged[key] is not NO_DEFAULT}

    def resolve_class(self) -> type:
        """The optimizer class (imported now if it was given as ``"module:ClassName"``)."""
        if not isinstance(self.optimizer_cls, str):
            return self.optimizer_cls
        module_name, _, class_name = self.optimizer_cls.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def parse_optim_args(self, text: str | None) -> dict[str, Any]:
        """``optim_args`` parsed against :attr:`options` (an OptimArgsError, a ValueError, if it does not fit)."""
        from ..trainer.optim_args import parse_optim_args  # the string syntax belongs to the Trainer side

        return parse_optim_args(text, self.options, optimizer=self.name, fixed=self.defaults,
                                defaults=self.option_defaults())

    def help(self) -> str:
        """The name, what it fixes and each accepted ``optim_args`` key with its values, default and meaning."""
        fixed = ", ".join(f"{key}={value!r}" for key, value in self.fixed.items())
        lines = [f"{self.name}: {self.description}" + (f" (fixes {fixed})" if fixed else ""),
                 "optim_args: " + describe_options(self.options, self.option_defaults())]
        lines += [f"  {key}: {option.help}" for key, option in self.options.items() if option.help]
        return "\n".join(lines)

    def build(self, params: Iterable[Any], **kwargs: Any) -> Any:
        """The optimizer over ``params`` with this name's defaults and ``kwargs`` (a fixed key is an error)."""
        clashes = {key: value for key, value in kwargs.items() if key in self.fixed and value != self.fixed[key]}
        if clashes:
            raise ValueError(f"{self.name} fixes {self.fixed}; {clashes} would change it: use another name or the "
                             f"class {self.resolve_class().__name__} itself")
        return self.resolve_class()(params, **{**self.defaults, **kwargs})


BUILTIN_OPTIMIZERS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec(
        "alphaadam", "hf_alphaadam.optim:AlphaAdam", schema=ALPHAADAM_SCHEMA,
        description="AlphaAdam: asynchronous sign-agreement mask, norm-restoring alpha (arXiv 2501.18094)"),
    OptimizerSpec(
        "cautious_adamw", "hf_alphaadam.optim:AlphaAdam", schema=ALPHAADAM_SCHEMA,
        defaults={"mask": "sync", "alpha": "count"},
        description="Cautious AdamW (the paper's CAdamW baseline): AlphaAdam with mask=sync, alpha=count"),
    OptimizerSpec(
        "alphaadam_8bit", "hf_alphaadam.optim:AlphaAdam", schema=ALPHAADAM_SCHEMA, defaults={"state_bits": 8},
        extra_options=("min_8bit_size", "quantize_embeddings"),
        description="AlphaAdam with 8-bit blockwise-quantized moments (bitsandbytes)"),
    OptimizerSpec(
        "adapm", "hf_alphaadam.optim:AdaPM", schema=ADAPM_SCHEMA, defaults={"second_moment": "adam"},
        description="AdaPM-style partial momentum: none / low-rank / full momentum per block (arXiv 2510.09103)"),
    OptimizerSpec(
        "adapm_mini", "hf_alphaadam.optim:AdaPM", schema=ADAPM_SCHEMA, defaults={"second_moment": "mini"},
        description="AdaPM-style partial momentum with an Adam-mini-style compact second moment"),
    OptimizerSpec(
        "adadiag", "hf_alphaadam.optim:AdaDiag", schema=ADADIAG_SCHEMA, defaults={"two_sided": False},
        description="AdaDiag: Adam in a one-sided SVD-rotated basis (arXiv 2502.07488)"),
    OptimizerSpec(
        "adadiag_pp", "hf_alphaadam.optim:AdaDiag", schema=ADADIAG_SCHEMA, defaults={"two_sided": True},
        description="AdaDiag++: Adam in a two-sided SVD-rotated basis (arXiv 2502.07488)"),
)

#: name -> spec: the optimizers the Trainer plugin registers (``hf_alphaadam.add_optimizer`` adds to it).
OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in BUILTIN_OPTIMIZERS}


def build(name: str, params: Iterable[Any], **kwargs: Any) -> Any:
    """``OPTIMIZERS[name].build(params, **kwargs)``: the named optimizer over ``params`` (tensors, param groups or
    ``(name, tensor)`` pairs) with ``kwargs`` on top of the name's defaults."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name].build(params, **kwargs)
