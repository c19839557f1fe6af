"""The registration of the package's optimizers with the Hugging Face Trainer.

The optimizers are the entries of the catalog (:mod:`hf_alphaadam.optim.catalog`: :data:`OPTIMIZERS`, one
:class:`OptimizerSpec` each with its ``optim=`` name, its class, the constructor arguments the name implies and the
typed ``optim_args`` it accepts; imported here, so ``registry.OPTIMIZERS`` is the catalog's dict). Adding an
optimizer means adding one catalog entry (or calling :func:`add_optimizer` from outside the package).

:func:`register` (idempotent) makes every name a valid ``optim=`` value for ``TrainingArguments``,
``HfArgumentParser`` / ``TrlParser`` command lines and YAML files, and the Trainer. It runs by itself, lazily
(:mod:`hf_alphaadam._autoregister`): :func:`register_training_arguments` (point 1 below) as soon as
``transformers.training_args`` is imported, the rest as soon as ``transformers.trainer`` is, in any process that
imported ``hf_alphaadam`` or that started with the package's ``.pth`` hook installed.

transformers 5.x has no public extension point for that, so this module -- and only this module -- extends three
private ones, checked by :func:`~.extension_points.check_transformers_compatibility` (which raises a clear error
when a release changes them):

1. ``transformers.training_args.OptimizerNames``: ``TrainingArguments.__post_init__`` converts ``optim`` with
   ``OptimizerNames(optim)`` and the argument parsers take their ``--optim`` choices from iterating the enum when
   the parser is built. A member is added per name. Its pickled form (``training_args.bin``) is
   ``registry._optimizer_name("alphaadam")``, so loading the file in a fresh process imports this package (and
   registers) by itself, even without the ``.pth`` hook; plain enum members would fail there with "'alphaadam' is
   not a valid OptimizerNames".
2. ``transformers.trainer_optimizer._OPTIMIZER_HANDLERS``: ``Trainer.get_optimizer_cls_and_kwargs`` dispatches
   on ``args.optim`` through this dict; a handler per name is added.
3. ``transformers.trainer._parse_optim_args``: the Trainer splits ``optim_args`` on "," and "=" *before* calling
   a handler and fails on a malformed string with "not enough values to unpack". It is wrapped so that such a
   failure says which entry is malformed instead (for every ``optim``; what it accepts is unchanged). The handlers
   themselves parse the raw ``args.optim_args`` string with the optimizer's schema, so that a duplicated key is
   not silently collapsed.

Besides, ``TrainingArguments.__post_init__`` (a public method) is wrapped so that ``optim_args`` of one of these
optimizers is parsed against its schema when the arguments are built: a typo fails before any model is loaded.

:func:`optimizer_cls_and_kwargs` is the same handler without any of this:
``Trainer(..., optimizer_cls_and_kwargs=hf_alphaadam.optimizer_cls_and_kwargs(args, model, name="alphaadam"))``.

The Trainer builds a "decay" and a "no_decay" param group (biases and norm weights get ``weight_decay=0``) and
passes them to the class a handler returns. The handler returns a small constructor class that names those
groups (``name``: ``"decay"`` / ``"no_decay"``), attaches each group's ``param_names`` from the model, under
DeepSpeed splits them into one group per tensor, and returns a real instance of the optimizer class. Built by a
Trainer, it also attaches an ``AlphaMonitorCallback`` to that Trainer unless it has one
(:func:`~.callback.attach_to_calling_trainer`; ``HF_ALPHAADAM_MONITOR=0`` turns this off).
"""

from __future__ import annotations

import enum
import functools
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..optim.catalog import BUILTIN_OPTIMIZERS, OPTIMIZERS, OptimizerSpec
from .distributed import check_distributed_setup, deepspeed_config, one_group_per_tensor
from .extension_points import TransformersCompatibilityError, check_optimizer_names, check_transformers_compatibility
from .optim_args import split_optim_args

__all__ = ["BUILTIN_OPTIMIZERS", "OPTIMIZERS", "OptimizerSpec", "TransformersCompatibilityError", "add_optimizer",
           "check_transformers_compatibility", "optimizer_cls_and_kwargs", "register", "register_training_arguments"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Building the optimizer from TrainingArguments (no transformers internals needed here)
# ----------------------------------------------------------------------------------------------------------------


def optimizer_cls_and_kwargs(args: Any, model: nn.Module | None = None, *,
                             name: str | None = None) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The ``(optimizer class, kwargs)`` pair the Trainer instantiates as ``cls(param_groups, **kwargs)``.

    Usable without any registration:
    ``Trainer(model=model, args=args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args, model, name=...))``.

    Args:
        args: the ``TrainingArguments``; ``learning_rate``, ``adam_beta1/2``, ``adam_epsilon``, ``weight_decay``
            and ``optim_args`` are used.
        model: the model whose parameters will be optimized; if given, each group gets ``param_names`` so that
            per-tensor statistics are keyed by parameter name.
        name: which optimizer (a key of :data:`OPTIMIZERS`); defaults to ``args.optim``.

    The returned class is a constructor, not the optimizer class: calling it with the Trainer's param groups names
    them ``"decay"`` / ``"no_decay"`` and returns an instance of the real optimizer class.
    """
    spec = _spec_for(args, name)
    check_distributed_setup(args, spec.name)
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "weight_decay": args.weight_decay}
    if spec.adam_hyperparameters:
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    kwargs.update(spec.defaults)
    kwargs.update(spec.option_defaults())  # every optim_args key explicit: the log line shows the whole setting
    kwargs.update(spec.parse_optim_args(args.optim_args))
    param_names = None if model is None else {id(param): key for key, param in model.named_parameters()}
    per_tensor = deepspeed_config(args) is not None
    return _trainer_constructor(spec.resolve_class(), param_names, per_tensor), kwargs


def _spec_for(args: Any, name: str | None) -> OptimizerSpec:
    optim = getattr(args, "optim", None)
    optim = getattr(optim, "value", optim)  # an OptimizerNames member or a plain string
    if name is not None and optim in OPTIMIZERS and optim != name:
        raise ValueError(f"args.optim={optim!r} but name={name!r}: leave out name, or make them agree")
    chosen = name if name is not None else optim
    if chosen not in OPTIMIZERS:
        given = f"name={name!r}" if name is not None else f"args.optim={optim!r}"
        raise ValueError(f"{given} is not an optimizer of hf_alphaadam; choose one of {sorted(OPTIMIZERS)} "
                         "(pass name=... when args.optim is a transformers optimizer)")
    return OPTIMIZERS[chosen]


def _trainer_constructor(optimizer_cls: type[torch.optim.Optimizer], param_names: Mapping[int, str] | None,
                         per_tensor: bool) -> type[torch.optim.Optimizer]:
    """A ``torch.optim.Optimizer`` subclass whose construction returns an ``optimizer_cls`` instance built on
    named param groups.

    It has to be an ``Optimizer`` subclass: the Trainer passes its decay / no-decay groups only to such classes
    (anything else is treated as a Muon-style factory and called with the model). Since ``__new__`` returns an
    object that is not an instance of this class, Python skips ``__init__`` and the caller gets the real optimizer.
    """

    def __new__(cls, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
        groups = _named_groups(params, param_names, kwargs.get("weight_decay", 0.0), per_tensor)
        if per_tensor:  # DeepSpeed ZeRO: a flat partition must belong to one tensor (see distributed.py)
            groups = one_group_per_tensor(groups)
        optimizer = optimizer_cls(groups, **kwargs)
        summary: dict[str, int] = {}
        for index, group in enumerate(optimizer.param_groups):
            group_name = str(group.get("name", f"group{index}"))
            summary[group_name] = summary.get(group_name, 0) + len(group["params"])
        logger.info("%s(%s) over param groups %s (tensors per group name)", optimizer_cls.__name__,
                    ", ".join(f"{key}={value!r}" for key, value in kwargs.items()), summary)
        if "transformers.trainer" in sys.modules:  # built by a Trainer: it gets the alpha monitor
            from .callback import attach_to_calling_trainer

            attach_to_calling_trainer()
        return optimizer

    name = f"{optimizer_cls.__name__}WithTrainerGroups"
    return type(name, (torch.optim.Optimizer,), {"__new__": __new__, "__doc__": _trainer_constructor.__doc__,
                                                 "__module__": __name__, "__qualname__": name})


def _named_groups(params: Iterable[Any], param_names: Mapping[int, str] | None, default_weight_decay: float,
                  need_names: bool) -> list[dict[str, Any]]:
    """``params`` (tensors or param-group dicts) as param groups that have a ``name`` and, when the parameter
    names are known (or ``need_names``), ``param_names``. ``(name, tensor)`` pairs are passed through.

    A group without a ``name`` is called ``"decay"`` if its weight decay is > 0 and ``"no_decay"`` otherwise,
    except for the Trainer's own pair of groups ``[decay, no_decay]``: those keep these names even when
    ``weight_decay=0`` (the TrainingArguments default), so that weight matrices and norm / bias vectors are
    still reported apart.
    """
    params = list(params)
    if not params or isinstance(params[0], tuple):
        return params  # empty (the optimizer reports it) or already named pairs
    groups = [dict(group) for group in params] if isinstance(params[0], dict) else [{"params": params}]
    trainer_pair = (len(groups) == 2 and not any("name" in group for group in groups)
                    and groups[0].get("weight_decay") == default_weight_decay
                    and groups[1].get("weight_decay") == 0.0)
    for index, group in enumerate(groups):
        group["params"] = list(group["params"])
        if trainer_pair:
            group["name"] = ("decay", "no_decay")[index]
        elif "name" not in group:
            group["name"] = "decay" if group.get("weight_decay", default_weight_decay) > 0 else "no_decay"
        if "param_names" not in group and (param_names is not None or need_names):
            known = param_names or {}
            group["param_names"] = [known.get(id(param), f"{group['name']}.{position}")
                                    for position, param in enumerate(group["params"])]
    return groups


# ----------------------------------------------------------------------------------------------------------------
# Registration with transformers (with .extension_points, the only place that touches transformers internals)
# ----------------------------------------------------------------------------------------------------------------


def register_training_arguments() -> None:
    """Point 1 only: add an ``OptimizerNames`` member per name of :data:`OPTIMIZERS` (idempotent), so that
    ``TrainingArguments`` and the argument parsers accept the names. Needs only ``transformers.training_args``
    (run by the lazy registration as soon as that module is imported); the Trainer still needs :func:`register`.
    """
    names = check_optimizer_names()
    for spec in OPTIMIZERS.values():
        _add_member(names, spec.name)
    _check_optim_args_in_training_arguments()


def register() -> None:
    """Make every optimizer in :data:`OPTIMIZERS` a valid ``optim=`` value of transformers (idempotent).

    Runs by itself when ``transformers.trainer`` is imported in a process that imported ``hf_alphaadam`` (or has
    the ``.pth`` hook); calling it again is harmless. Argument parsers take their ``--optim`` choices when they are
    built. Raises TransformersCompatibilityError if transformers' internals changed.
    """
    names, handlers, trainer_module = check_transformers_compatibility()
    for spec in OPTIMIZERS.values():
        member = _add_member(names, spec.name)
        handlers[member] = functools.partial(_handle, spec.name)
    _wrap_parse_optim_args(trainer_module)
    _check_optim_args_in_training_arguments()
    logger.debug("registered optim=%s with transformers", sorted(OPTIMIZERS))


def add_optimizer(spec: OptimizerSpec, *, replace: bool = False) -> None:
    """Add ``spec`` to :data:`OPTIMIZERS` and register it with transformers (for optimizers outside the package;
    the package's own are entries of :data:`BUILTIN_OPTIMIZERS`)."""
    existing = OPTIMIZERS.get(spec.name)
    if existing is not None and existing != spec and not replace:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered; pass replace=True to replace it")
    OPTIMIZERS[spec.name] = spec
    register()


def _handle(name: str, ctx: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The ``_OPTIMIZER_HANDLERS`` entry of ``name``. The context's pre-split ``optim_args`` dict is not used:
    :func:`optimizer_cls_and_kwargs` parses the raw ``ctx.args.optim_args`` string."""
    return optimizer_cls_and_kwargs(ctx.args, ctx.model, name=name)


def _add_member(names: type[enum.Enum], value: str) -> enum.Enum:
    """Add ``NAME = "value"`` to the str Enum ``names`` (or return the member if it exists)."""
    existing = names._value2member_map_.get(value)
    if existing is not None:
        if not getattr(existing, "_hf_alphaadam_", False):
            logger.warning("transformers already has optim=%r; hf_alphaadam's optimizer of that name replaces it "
                           "in the Trainer", value)
        return existing
    member_name = value.upper()
    if member_name in names._member_map_:
        raise TransformersCompatibilityError(f"{names.__name__}.{member_name} already exists with the value "
                                             f"{names._member_map_[member_name].value!r}, not {value!r}")
    member = str.__new__(names, value)
    member._name_ = member_name
    member._value_ = value
    member.__objclass__ = names
    member._sort_order_ = len(names._member_names_)
    member._hf_alphaadam_ = True
    # pickled as registry._optimizer_name(value): unpickling imports (and so registers) hf_alphaadam
    member.__reduce_ex__ = functools.partial(_reduce_member, value)
    names._member_map_[member_name] = member
    names._value2member_map_[value] = member
    names._member_names_.append(member_name)
    type.__setattr__(names, member_name, member)
    return member


def _reduce_member(value: str, protocol: int) -> tuple[Any, tuple[str]]:
    return _optimizer_name, (value,)


def _optimizer_name(value: str) -> enum.Enum:
    """Unpickle an ``OptimizerNames`` member added by this package (importing this module has registered it)."""
    from transformers.training_args import OptimizerNames

    if value not in OptimizerNames._value2member_map_:
        register_training_arguments()
    return OptimizerNames(value)


def _wrap_parse_optim_args(trainer_module: Any) -> None:
    """Make the Trainer's ``optim_args`` splitter name the malformed entry instead of "not enough values to
    unpack". It returns the same results as before; a string it rejects still raises a ValueError (now naming
    the entry) and a non-string a TypeError instead of an AttributeError."""
    original = trainer_module._parse_optim_args
    if getattr(original, "_hf_alphaadam_", False):
        return

    @functools.wraps(original)
    def parse_optim_args_naming_the_problem(optim_args: Any) -> dict[str, str]:
        try:
            return original(optim_args)
        except (ValueError, AttributeError) as error:
            try:
                split_optim_args(optim_args)
            except (ValueError, TypeError) as clear:
                raise clear from error
            raise

    parse_optim_args_naming_the_problem._hf_alphaadam_ = True
    trainer_module._parse_optim_args = parse_optim_args_naming_the_problem


def _check_optim_args_in_training_arguments() -> None:
    """Make ``TrainingArguments(optim=<one of ours>, optim_args=...)`` parse ``optim_args`` against the
    optimizer's schema when the arguments are built, so that a typo fails before any model is loaded (the
    handler parses the same string again when the Trainer builds the optimizer)."""
    from transformers.training_args import TrainingArguments

    original = TrainingArguments.__post_init__
    if getattr(original, "_hf_alphaadam_", False):
        return

    @functools.wraps(original)
    def post_init_checking_optim_args(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        optim = getattr(self.optim, "value", self.optim)
        if optim in OPTIMIZERS:
            OPTIMIZERS[optim].parse_optim_args(self.optim_args)

    post_init_checking_optim_args._hf_alphaadam_ = True
    TrainingArguments.__post_init__ = post_init_checking_optim_args


def register_at_import() -> None:
    """:func:`register`, logging a warning instead of raising when transformers changed, so that the optimizers
    themselves stay importable."""
    try:
        register()
    except TransformersCompatibilityError as error:
        logger.warning("%s", error)
