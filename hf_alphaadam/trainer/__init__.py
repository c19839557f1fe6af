"""The Hugging Face Trainer side of the package: ``optim=`` registration and typed ``optim_args``.

Importing ``hf_alphaadam`` registers the optimizers of :data:`OPTIMIZERS` (``alphaadam``, ``cautious_adamw``)
with transformers; see :mod:`.registry` for how, and :mod:`.optim_args` for the ``optim_args`` schema.
"""

from .optim_args import Option, OptimArgsError, parse_optim_args
from .registry import (
    BUILTIN_OPTIMIZERS,
    OPTIMIZERS,
    OptimizerSpec,
    TransformersCompatibilityError,
    add_optimizer,
    check_transformers_compatibility,
    optimizer_cls_and_kwargs,
    register,
)

__all__ = ["BUILTIN_OPTIMIZERS", "OPTIMIZERS", "OptimArgsError", "Option", "OptimizerSpec",
           "TransformersCompatibilityError", "add_optimizer", "check_transformers_compatibility",
           "optimizer_cls_and_kwargs", "parse_optim_args", "register"]
