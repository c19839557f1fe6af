"""The Hugging Face Trainer side of the package: ``optim=`` registration and typed ``optim_args``.

Every optimizer of the catalog (:data:`OPTIMIZERS`, from :mod:`hf_alphaadam.optim.catalog`, which lists the
names, what each fixes and its ``optim_args``: ``OPTIMIZERS[name].help()``) is registered with transformers
lazily, as soon as transformers' training arguments are imported in a process that imported ``hf_alphaadam`` or
started with the package's ``.pth`` hook (:mod:`hf_alphaadam._autoregister`); see :mod:`.registry` for how, and
:mod:`.optim_args` for the ``optim_args`` syntax. Importing this package does not import transformers.
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
    register_training_arguments,
)

__all__ = ["BUILTIN_OPTIMIZERS", "OPTIMIZERS", "OptimArgsError", "Option", "OptimizerSpec",
           "TransformersCompatibilityError", "add_optimizer", "check_transformers_compatibility",
           "optimizer_cls_and_kwargs", "parse_optim_args", "register", "register_training_arguments"]
