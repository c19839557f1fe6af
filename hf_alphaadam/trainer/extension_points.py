"""The private transformers internals that :mod:`.registry` extends, and the checks that they are still there.

transformers 5.x has no public extension point for new ``optim=`` names, so the registry adds to three private
ones (see its docstring). :func:`check_transformers_compatibility` checks all of them and
:func:`check_optimizer_names` only the first (the one ``TrainingArguments`` needs, available as soon as
``transformers.training_args`` is imported); each raises :class:`TransformersCompatibilityError`, saying what
changed and how to use the optimizers without registration, when a transformers release changed them.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from typing import Any, NamedTuple

__all__ = ["TransformersCompatibilityError", "check_optimizer_names", "check_transformers_compatibility",
           "incompatible"]


class TransformersCompatibilityError(RuntimeError):
    """The installed transformers no longer has the private extension points :func:`~.registry.register` relies on."""


class _ExtensionPoints(NamedTuple):
    optimizer_names: type[enum.Enum]
    handlers: dict[Any, Any]
    trainer_module: Any


_CONTEXT_FIELDS = ("args", "model", "optimizer_kwargs", "adam_kwargs", "optim_args")


def check_transformers_compatibility() -> _ExtensionPoints:
    """Check the transformers internals :func:`~.registry.register` extends; raise TransformersCompatibilityError if one
    changed. Returns ``(OptimizerNames, _OPTIMIZER_HANDLERS, transformers.trainer)``."""
    try:
        from transformers import trainer as trainer_module
        from transformers import trainer_optimizer
    except ImportError as error:
        raise incompatible(f"importing transformers.trainer / trainer_optimizer failed ({error})") from error
    names = check_optimizer_names()

    handlers = getattr(trainer_optimizer, "_OPTIMIZER_HANDLERS", None)
    if not isinstance(handlers, dict) or names.ADAMW_TORCH not in handlers:
        raise incompatible("transformers.trainer_optimizer._OPTIMIZER_HANDLERS (optim name -> handler) is "
                          "missing or has no 'adamw_torch' entry")
    if getattr(trainer_module, "_OPTIMIZER_HANDLERS", None) is not handlers:
        raise incompatible("transformers.trainer no longer dispatches through "
                          "trainer_optimizer._OPTIMIZER_HANDLERS")
    context = getattr(trainer_optimizer, "OptimizerContext", None)
    fields = tuple(f.name for f in dataclasses.fields(context)) if dataclasses.is_dataclass(context) else ()
    if not set(_CONTEXT_FIELDS) <= set(fields):
        raise incompatible(f"the handlers' OptimizerContext changed: expected the fields {_CONTEXT_FIELDS}, "
                          f"got {fields}")
    if len(inspect.signature(handlers[names.ADAMW_TORCH]).parameters) != 1:
        raise incompatible("optimizer handlers no longer take a single OptimizerContext argument")
    if not callable(getattr(trainer_module, "_parse_optim_args", None)):
        raise incompatible("transformers.trainer._parse_optim_args (the Trainer's optim_args splitter) is "
                          "missing")
    return _ExtensionPoints(names, handlers, trainer_module)


def incompatible(problem: str) -> TransformersCompatibilityError:
    """The error for a changed extension point ``problem``, naming the optimizers that cannot be registered."""
    import transformers

    from .registry import OPTIMIZERS

    return TransformersCompatibilityError(
        f"hf_alphaadam cannot register optim={sorted(OPTIMIZERS)} with transformers {transformers.__version__}: "
        f"{problem}. hf_alphaadam supports transformers>=5.2,<6 (tested with 5.23). Either install such a "
        "version, or skip registration and pass the optimizer explicitly: Trainer(..., optimizer_cls_and_kwargs="
        "hf_alphaadam.optimizer_cls_and_kwargs(args, model, name='alphaadam'))")


def check_optimizer_names() -> type[enum.Enum]:
    """``transformers.training_args.OptimizerNames``, checked to be the str Enum that the registry adds
    members to (the only internal ``TrainingArguments`` needs; importing it does not import the Trainer)."""
    try:
        from transformers import training_args
    except ImportError as error:
        raise incompatible(f"importing transformers.training_args failed ({error})") from error
    names = getattr(training_args, "OptimizerNames", None)
    if not (isinstance(names, type) and issubclass(names, enum.Enum) and issubclass(names, str)):
        raise incompatible(f"transformers.training_args.OptimizerNames is no longer a str Enum (got {names!r})")
    if not all(isinstance(getattr(names, attribute, None), kind) for attribute, kind in
               (("_member_map_", dict), ("_value2member_map_", dict), ("_member_names_", list))):
        raise incompatible("OptimizerNames lacks the Enum internals _member_map_ / _value2member_map_ / "
                          "_member_names_")
    if names._value2member_map_.get("adamw_torch") is not getattr(names, "ADAMW_TORCH", None):
        raise incompatible("OptimizerNames has no member ADAMW_TORCH = 'adamw_torch'")
    return names
