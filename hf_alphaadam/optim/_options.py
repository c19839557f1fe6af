"""One declaration per optimizer option: its type, default, allowed values and documentation.

An :class:`Option` says what one constructor argument (and param-group entry) accepts. An :class:`OptionSchema` is
the ordered set of an optimizer class's options, built from shared fragments plus the optimizer's own options
(the fragments and the schemas of the package's optimizers are declared in :mod:`._schemas`). Everything that
checks or describes an option reads it from there: the constructors and param-group overrides
(:meth:`OptionSchema.check_group`), the Trainer's ``optim_args`` strings (:meth:`Option.convert`, with the parser
in ``trainer/optim_args.py``), the catalog's ``help()`` and the classes' ``Args:`` docstrings
(:meth:`OptionSchema.doc`).

Errors name the key, the bad value and what is allowed. A value of the wrong type raises :class:`OptionTypeError`,
which is a TypeError and also a ValueError (some constructors raised ValueError for those before the schema); a
value of the right type but not allowed (out of range, not a choice, a regex that does not compile) raises a
ValueError. A range error states the range: ``rank must be an integer >= 1``, ``tensor_threads must be None or an
integer >= 1``, ``alpha_max must be >= 1``, ``betas[0] must be in [0, 1)``.

This module imports neither torch nor transformers (it runs before either is needed).
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NO_DEFAULT", "TRAINING_ARGUMENT_KEYS", "OptimArgsError", "Option", "OptionSchema", "OptionTypeError",
           "describe_options"]

# optim_args keys that would duplicate a TrainingArguments field -> that field. They are refused so that the
# Trainer's learning rate, betas, epsilon and weight decay (and its no-decay group) are the only source.
TRAINING_ARGUMENT_KEYS: dict[str, str] = {
    "lr": "learning_rate",
    "learning_rate": "learning_rate",
    "betas": "adam_beta1 / adam_beta2",
    "beta1": "adam_beta1",
    "beta2": "adam_beta2",
    "adam_beta1": "adam_beta1",
    "adam_beta2": "adam_beta2",
    "eps": "adam_epsilon",
    "epsilon": "adam_epsilon",
    "adam_epsilon": "adam_epsilon",
    "weight_decay": "weight_decay",
    "wd": "weight_decay",
}

# `object`: any value, unchecked (a process group); never an optim_args key
_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", re.Pattern: "regex", object: "object"}


class OptimArgsError(ValueError):
    """A bad ``optim_args`` string: malformed, a duplicated or unknown key, or a value that does not convert."""


class OptionTypeError(TypeError, ValueError):
    """An option value of the wrong type (a TypeError; also a ValueError, as some constructors raised before)."""


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: The ``default`` of an Option that has none (an ``optim_args``-only declaration, e.g. a third-party optimizer's).
NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Option:
    """What one option accepts, and its documentation.

    Args:
        type: ``str`` (one of ``choices``), ``int``, ``float``, ``bool`` (``true`` / ``false`` in optim_args),
            ``re.Pattern`` (a regular expression string, or a list of them joined with ``|``; optim_args cannot
            carry commas, so use ``|`` there), ``object`` (any value, unchecked), or a tuple of these for a value
            that may be either (``(bool, re.Pattern)``: a flag or a regex).
        choices: for ``str``, the allowed values (required); for ``int``, optionally the allowed values.
        min, max: for ``int`` / ``float``, optional bounds; ``min_inclusive`` / ``max_inclusive`` say whether the
            bound itself is allowed (default: yes). Floats must also be finite.
        none: also accept ``None`` (``none`` in optim_args), e.g. "no clamp", "pick automatically".
        help: one line for error messages, ``help()`` and the optim_args listing.
        default: the constructor's default (:data:`NO_DEFAULT`: none declared).
        doc: the ``Args:`` entry of the class docstring (without the default, which :meth:`OptionSchema.doc` adds).
        optim_arg: whether the Trainer's ``optim_args`` may set it (lr / betas / eps / weight_decay come from
            ``TrainingArguments``; objects and tensors cannot be written in a string).
        in_group: whether it is a param-group entry (saved in ``state_dict()``); ``False`` for constructor-only
            settings.
        pair: the value is a pair ``(first, second)`` of values of ``type`` (``betas``).
        tensor: also accept a one-element tensor (duck-typed: ``numel()``), checked by its value (``lr``).
        normalize: applied to a Python value before it is checked (e.g. a ``torch.bfloat16`` dtype -> its saved
            name ``"bfloat16"``); it returns the value unchanged when it does not apply.
    """

    type: Any
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    none: bool = False
    help: str = ""
    default: Any = NO_DEFAULT
    doc: str = ""
    optim_arg: bool = True
    in_group: bool = True
    pair: bool = False
    tensor: bool = False
    normalize: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if not types or any(kind not in _TYPE_NAMES for kind in types):
            raise TypeError(f"Option type must be one of str, int, float, bool, re.Pattern, object or a tuple of "
                            f"them, got {self.type!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if str in types and not self.choices:
            raise ValueError("a str Option needs its allowed values in `choices`")
        if self.choices and not (types == (str,) and all(isinstance(c, str) for c in self.choices)
                                 or types == (int,) and all(_is_int(c) for c in self.choices)):
            raise ValueError(f"`choices` are for str options (and int options with int values), not "
                             f"{self._type_name()} with choices {self.choices!r}")
        if (self.min is not None or self.max is not None) and not set(types) <= {int, float}:
            raise ValueError(f"`min` / `max` are for int and float options, not {self._type_name()}")
        if self.default is not NO_DEFAULT:
            try:
                self.check("default", self.default)
            except ValueError as error:
                raise ValueError(f"the Option's default {self.default!r} is not allowed by it: {error}") from None

    @property
    def types(self) -> tuple[Any, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def _type_name(self) -> str:
        return " or ".join(_TYPE_NAMES[kind] for kind in self.types)

    # ---- descriptions ------------------------------------------------------------------------------------------

    def allowed(self) -> str:
        """What this option accepts in ``optim_args``, in words: ``one of 'async', 'sync'``, ``a float >= 1, or
        none``, ..."""
        types = self.types
        if self.choices:
            text = "one of " + ", ".join(repr(choice) for choice in self.choices)
        elif types == (bool, re.Pattern):
            text = "true, false or a regular expression (alternatives with |)"
        elif re.Pattern in types:
            text = "a regular expression (alternatives with |)"
        elif bool in types:
            text = "true or false"
        elif object in types:
            text = "a Python object (not expressible in optim_args)"
        else:
            text = ("an integer" if types == (int,) else "a float") + self._bounds(" and ")
        return text + (", or none" if self.none else "")

    def expected(self) -> str:
        """What this option accepts as a Python value, in words, for the constructor's errors."""
        types = self.types
        none = " or None" if self.none else ""
        if object in types:
            return "any value"
        if self.pair:
            return f"a pair of {'integers' if types == (int,) else 'numbers'}{self._bounds(None)}"
        if types == (str,):
            return f"one of {self.choices!r}{none}"
        if self.choices:  # int choices
            values = [repr(choice) for choice in self.choices]
            return ", ".join(values[:-1]) + " or " + values[-1] + (", or None" if self.none else "")
        if types == (bool,):
            return "True, False or None" if self.none else "a bool (True or False)"
        if types == (re.Pattern,):
            return "a regex string (use '|' between alternatives), a list of them" + (" or None" if self.none else "")
        if types == (bool, re.Pattern):
            return "True, False or a regex string (use '|' between alternatives)" + none
        return ("None or " if self.none else "") + self._one_expected()

    def _one_expected(self) -> str:
        kind = "an integer" if self.types == (int,) else "a number"
        return kind + self._bounds(" and ") + (" or a one-element tensor" if self.tensor else "")

    def _bounds(self, joiner: str | None) -> str:
        """`` >= 1``, `` > 0 and <= 1`` (with ``joiner=" and "``); an interval ``in [0, 1)`` with ``joiner=None``."""
        if joiner is None and self.min is not None and self.max is not None:
            return (f" in {'[' if self.min_inclusive else '('}{_number(self.min)}, {_number(self.max)}"
                    f"{']' if self.max_inclusive else ')'}")
        bounds = []
        if self.min is not None:
            bounds.append((">= " if self.min_inclusive else "> ") + _number(self.min))
        if self.max is not None:
            bounds.append(("<= " if self.max_inclusive else "< ") + _number(self.max))
        return (" " + (joiner or " and ").join(bounds)) if bounds else ""

    def _why(self) -> str:
        return f" ({self.help})" if self.help else ""

    # ---- Python values ------------------------------------------------------------------------------------------

    def check(self, key: str, value: Any) -> Any:
        """``value`` as the constructor or a param group received it, normalised (e.g. a dtype to its name);
        raises an OptionTypeError / ValueError naming ``key``, ``value`` and what is allowed."""
        if self.normalize is not None:
            value = self.normalize(value)
        if value is None:
            if self.none or object in self.types:
                return None
            raise OptionTypeError(f"{key} must be {self.expected()}, got None{self._why()}")
        if not self.pair:
            return self._check_one(key, value)
        if not isinstance(value, (tuple, list)):
            raise OptionTypeError(f"{key} must be {self.expected()}, got {value!r}{self._why()}")
        if len(value) != 2:
            raise ValueError(f"{key} must be {self.expected()}, got {len(value)} values {value!r}{self._why()}")
        for index, item in enumerate(value):
            self._check_one(f"{key}[{index}]", item)
        return value

    def _check_one(self, key: str, value: Any) -> Any:
        types = self.types
        if object in types or (bool in types and isinstance(value, bool)):
            return value
        if re.Pattern in types and isinstance(value, (str, list, tuple)):
            return _regex(key, value, self.expected())
        if str in types and isinstance(value, str):
            if value in self.choices:
                return value
            raise ValueError(f"{key} must be {self.expected()}, got {value!r}{self._why()}")
        if int in types or float in types:
            number = self._number(key, value)
            if self.choices and value not in self.choices:
                raise ValueError(f"{key} must be {self.expected()}, got {value!r}{self._why()}")
            if not math.isfinite(number):
                raise ValueError(f"{key} must be a finite number{self._bounds(None)}, got {value!r}{self._why()}")
            if not self._in_range(number):  # an integer's range reads "an integer >= 1", a number's ">= 1"
                allowed = self.expected() if self.types == (int,) else self._bounds(None).strip()
                raise ValueError(f"{key} must be {allowed}, got {value!r}{self._why()}")
            return value
        raise OptionTypeError(f"{key} must be {self.expected()}, got {value!r}{self._why()}")

    def _number(self, key: str, value: Any) -> float:
        """The value as a float for the range check (an OptionTypeError if it is not a number of this type)."""
        if self.tensor and callable(getattr(value, "numel", None)):
            if value.numel() != 1:
                raise ValueError(f"{key} as a tensor must have one element, got shape {tuple(value.shape)}"
                                 f"{self._why()}")
            return float(value)
        if _is_int(value) or (float in self.types and isinstance(value, float)):
            return float(value)
        raise OptionTypeError(f"{key} must be {self.expected()}, got {value!r}{self._why()}")

    def _in_range(self, value: float) -> bool:
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            return False
        if self.max is not None and (value > self.max or (value == self.max and not self.max_inclusive)):
            return False
        return True

    # ---- optim_args text -----------------------------------------------------------------------------------------

    def convert(self, key: str, text: str) -> Any:
        """The ``optim_args`` value ``text`` given for ``key``, converted to this option's type (OptimArgsError if
        it is not allowed). Not normalised: ``state_dtype=bf16`` stays ``"bf16"`` (the constructor normalises)."""
        types = self.types
        if self.none and text.lower() == "none":
            return None
        if self.pair or object in types:
            raise OptimArgsError(f"{key}={text!r}: {key} cannot be given in optim_args ({self.expected()})")
        if types == (str,):
            if text in self.choices:
                return text
            raise OptimArgsError(f"{key}={text!r} is not allowed: {key} must be {self.allowed()}")
        if bool in types and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if re.Pattern in types:
            try:
                re.compile(text)
            except re.error as error:
                raise OptimArgsError(f"{key}={text!r} is not a valid regular expression ({error}): "
                                     f"{key} must be {self.allowed()}") from None
            return text
        if bool in types:
            raise OptimArgsError(f"{key}={text!r} is not a boolean: {key} must be {self.allowed()}")
        try:
            value = int(text) if types == (int,) else float(text)
        except ValueError:
            kind = "an integer" if types == (int,) else "a number"
            raise OptimArgsError(f"{key}={text!r} is not {kind}: {key} must be {self.allowed()}") from None
        if self.choices and value not in self.choices:
            raise OptimArgsError(f"{key}={text!r} is not allowed: {key} must be {self.allowed()}")
        if not math.isfinite(value) or not self._in_range(value):
            raise OptimArgsError(f"{key}={text!r} is out of range: {key} must be {self.allowed()}")
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _regex(key: str, value: Any, expected: str) -> str:
    """A regex string, or a non-empty list / tuple of them joined with ``|``; checked to compile."""
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(item, str) for item in value):
            raise OptionTypeError(f"{key} must be {expected} (a non-empty list of regex strings), got {value!r}")
        value = "|".join(f"(?:{item})" for item in value)
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"{key}={value!r} is not a valid regular expression: {error}") from None
    return value


def describe_options(options: Mapping[str, Option], defaults: Mapping[str, Any] | None = None) -> str:
    """The allowed keys as one line for error messages: ``mask (one of 'async', ...; default 'async'), ...``.
    A default of ``None`` is not shown (``, or none`` already says that None is allowed)."""
    if not options:
        return "(none: this optimizer takes no optim_args)"
    defaults = defaults or {}
    parts = []
    for key, option in options.items():
        default = f"; default {defaults[key]!r}" if defaults.get(key) is not None else ""
        parts.append(f"{key} ({option.allowed()}{default})")
    return ", ".join(parts)


class OptionSchema(Mapping[str, Option]):
    """The options of one optimizer class, in order: a read-only mapping ``key -> Option``.

    Args:
        name: the optimizer class's name (for documentation).
        fragments: mappings ``key -> Option`` (shared fragments and the optimizer's own options), in order. A key
            given twice is an error: each option is declared once.
        overrides: ``key -> {field: value}`` changes of a fragment's options for this optimizer (e.g. another
            default or doc text).
        checks: group-level rules that involve several options, each called with the whole group after every
            option was checked (``check(group)`` raises on a bad combination).
    """

    def __init__(self, name: str, *fragments: Mapping[str, Option],
                 overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 checks: tuple[Callable[[dict[str, Any]], None], ...] = ()) -> None:
        options: dict[str, Option] = {}
        for fragment in fragments:
            for key, option in fragment.items():
                if key in options:
                    raise ValueError(f"{name}: option {key!r} is declared twice")
                options[key] = option
        for key, changes in (overrides or {}).items():
            if key not in options:
                raise ValueError(f"{name}: override of {key!r}, which is not one of its options {list(options)}")
            options[key] = dataclasses.replace(options[key], **changes)
        self.name = name
        self._options = options
        self.checks = tuple(checks)

    def __getitem__(self, key: str) -> Option:
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __repr__(self) -> str:
        return f"OptionSchema({self.name!r}, {list(self._options)})"

    def defaults(self) -> dict[str, Any]:
        """``key -> default`` of every option (param-group entries and constructor-only settings)."""
        return {key: option.default for key, option in self.items()}

    def check(self, key: str, value: Any) -> Any:
        """One option's value, checked and normalised (see :meth:`Option.check`)."""
        return self[key].check(key, value)

    def check_group(self, group: dict[str, Any]) -> dict[str, Any]:
        """Check, and normalise in place, every option entry of a param group (or of the constructor's defaults),
        then the group-level rules. Entries that are not options (``params``, ``name``, ``initial_lr``, ...) are
        left alone. The first bad value raises (see the module docstring). Returns ``group``."""
        for key, option in self.items():
            if option.in_group and key in group:
                group[key] = option.check(key, group[key])
        for rule in self.checks:
            rule(group)
        return group

    def check_arguments(self, arguments: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The constructor's keyword arguments, checked: ``(group defaults, constructor-only settings)``, each
        normalised. A key that is not an option is a TypeError."""
        unknown = [key for key in arguments if key not in self]
        if unknown:
            raise TypeError(f"{self.name} got unknown options {unknown}; its options are {list(self)}")
        group = {key: value for key, value in arguments.items() if self[key].in_group}
        settings = {key: self.check(key, value) for key, value in arguments.items() if not self[key].in_group}
        return self.check_group(group), settings

    def optim_args(self, fixed: Mapping[str, Any] | tuple[str, ...] = (), extra: tuple[str, ...] = ()
                   ) -> dict[str, Option]:
        """The options ``optim_args`` accepts: those with ``optim_arg=True`` plus ``extra``, minus ``fixed``."""
        return {key: option for key, option in self.items()
                if (option.optim_arg or key in extra) and key not in fixed}

    def help(self, defaults: Mapping[str, Any] | None = None) -> str:
        """One line per option: ``key: allowed values; default ...  -- help``."""
        defaults = {**self.defaults(), **(defaults or {})}
        return "\n".join(f"{key}: {option.expected()}; default {defaults[key]!r} -- {option.help}"
                         for key, option in self.items())

    def doc(self, params: str = "", indent: str = "    ", width: int = 116) -> str:
        """The ``Args:`` block of the class docstring: ``params`` first (not an option), then each option's
        ``doc`` and its default, wrapped to ``width`` columns (``indent``: the indentation of the ``Args:`` line;
        entries are indented 4 more, their continuation lines 8)."""
        entries = ([("params", params)] if params else []) + [
            (key, f"{option.doc or option.help} Default ``{option.default!r}``.".strip())
            for key, option in self.items()]
        lines = [f"{indent}Args:"]
        for key, text in entries:
            lines += textwrap.wrap(f"{key}: {text}", width=width, initial_indent=indent + "    ",
                                   subsequent_indent=indent + "        ", break_on_hyphens=False)
        return "\n".join(lines)

    def document(self, docstring: str, params: str = "") -> str:
        """``docstring`` with its (empty) ``Args:`` line replaced by :meth:`doc`, for a class body::

            class AlphaAdam(...):
                \"""AlphaAdam ...

                Args:

                After each step ...
                \"""
                OPTIONS = ALPHAADAM_SCHEMA
                __doc__ = OPTIONS.document(__doc__, params="parameters, param groups, ...")
        """
        lines = docstring.split("\n")
        at = [index for index, line in enumerate(lines) if line.strip() == "Args:"]
        if len(at) != 1:
            raise ValueError(f"{self.name}: the docstring needs exactly one 'Args:' line to fill, found {len(at)}")
        indent = lines[at[0]][:len(lines[at[0]]) - len(lines[at[0]].lstrip())]
        lines[at[0]] = self.doc(params=params, indent=indent or "    ")
        return "\n".join(lines)
