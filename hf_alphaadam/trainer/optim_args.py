"""Typed ``optim_args`` for the Trainer plugin: a schema per optimizer and a strict parser.

``TrainingArguments(optim_args="mask=sync,alpha_max=2")`` is one string of comma-separated ``key=value`` pairs.
Each optimizer of the plugin declares the keys it accepts as a mapping ``key -> Option``; :func:`parse_optim_args`
converts every value to its declared type and refuses, with a ``ValueError`` that names the key and lists what is
allowed: a malformed string (an entry without ``=``, an empty key), a key given twice, an unknown key, a value
of the wrong type or out of range, and keys that belong to ``TrainingArguments`` fields (``lr``, ``betas``,
``eps``, ``weight_decay``, ...: those are set with ``--learning_rate`` etc., never through ``optim_args``).
Nothing is silently ignored.

This module imports neither transformers nor torch.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TRAINING_ARGUMENT_KEYS", "OptimArgsError", "Option", "describe_options", "parse_optim_args",
           "split_optim_args"]

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

_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", re.Pattern: "regex"}


class OptimArgsError(ValueError):
    """A bad ``optim_args`` string: malformed, a duplicated or unknown key, or a value that does not convert."""


@dataclass(frozen=True)
class Option:
    """One key an optimizer accepts in ``optim_args``: the type its value converts to and the values allowed.

    Args:
        type: ``str``, ``int``, ``float``, ``bool`` (written ``true`` / ``false``) or ``re.Pattern`` (a regular
            expression, passed on as a string; optim_args cannot carry commas, so use ``|`` for alternatives).
        choices: for ``str``, the allowed values (required).
        min, max: for ``int`` / ``float``, optional bounds; ``min_inclusive`` / ``max_inclusive`` say whether the
            bound itself is allowed (default: yes).
        none: also accept ``none``, converted to ``None`` (e.g. "no clamp", "pick automatically").
        help: one line for error messages and documentation.
    """

    type: type
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    none: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"Option type must be one of str, int, float, bool, got {self.type!r}")
        if self.type is str and not self.choices:
            raise ValueError("a str Option needs its allowed values in `choices`")
        if self.choices and self.type is not str:
            raise ValueError(f"`choices` are for str options, not {_TYPE_NAMES[self.type]}")
        if (self.min is not None or self.max is not None) and self.type not in (int, float):
            raise ValueError(f"`min` / `max` are for int and float options, not {_TYPE_NAMES[self.type]}")
        object.__setattr__(self, "choices", tuple(self.choices))

    def allowed(self) -> str:
        """What this option accepts, in words: ``one of 'async', 'sync'``, ``a float >= 1, or none``, ..."""
        if self.type is str:
            text = "one of " + ", ".join(repr(choice) for choice in self.choices)
        elif self.type is re.Pattern:
            text = "a regular expression (alternatives with |)"
        elif self.type is bool:
            text = "true or false"
        else:
            text = "an integer" if self.type is int else "a float"
            bounds = []
            if self.min is not None:
                bounds.append((">= " if self.min_inclusive else "> ") + _number(self.min))
            if self.max is not None:
                bounds.append(("<= " if self.max_inclusive else "< ") + _number(self.max))
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (", or none" if self.none else "")

    def convert(self, key: str, text: str) -> Any:
        """The value ``text`` given for ``key``, converted to this option's type (OptimArgsError if it is not
        allowed)."""
        if self.none and text.lower() == "none":
            return None
        if self.type is str:
            if text in self.choices:
                return text
            raise OptimArgsError(f"{key}={text!r} is not allowed: {key} must be {self.allowed()}")
        if self.type is re.Pattern:
            try:
                re.compile(text)
            except re.error as error:
                raise OptimArgsError(f"{key}={text!r} is not a valid regular expression ({error}): "
                                     f"{key} must be {self.allowed()}") from None
            return text
        if self.type is bool:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            raise OptimArgsError(f"{key}={text!r} is not a boolean: {key} must be {self.allowed()}")
        try:
            value = int(text) if self.type is int else float(text)
        except ValueError:
            kind = "an integer" if self.type is int else "a number"
            raise OptimArgsError(f"{key}={text!r} is not {kind}: {key} must be {self.allowed()}") from None
        if not math.isfinite(value) or not self._in_range(value):
            raise OptimArgsError(f"{key}={text!r} is out of range: {key} must be {self.allowed()}")
        return value

    def _in_range(self, value: float) -> bool:
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            return False
        if self.max is not None and (value > self.max or (value == self.max and not self.max_inclusive)):
            return False
        return True


def describe_options(options: Mapping[str, Option], defaults: Mapping[str, Any] | None = None) -> str:
    """The allowed keys as one line for error messages: ``mask (one of 'async', ...; default 'async'), ...``."""
    if not options:
        return "(none: this optimizer takes no optim_args)"
    defaults = defaults or {}
    parts = []
    for key, option in options.items():
        default = f"; default {defaults[key]!r}" if key in defaults else ""
        parts.append(f"{key} ({option.allowed()}{default})")
    return ", ".join(parts)


def split_optim_args(text: Any) -> list[tuple[str, str]]:
    """``"a=1, b=x"`` -> ``[("a", "1"), ("b", "x")]``, keys and values stripped; ``None`` or ``""`` -> ``[]``.

    Raises OptimArgsError for a malformed string (a blank string, an empty entry, an entry without ``=`` or with
    more than one, an empty key) and TypeError for a value that is not a string.
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise TypeError(f"optim_args must be a string of comma-separated key=value pairs (e.g. 'key1=value1,"
                        f"key2=value2'), got {type(text).__name__} {text!r}")
    if not text:
        return []
    if not text.strip():
        raise OptimArgsError(f"optim_args={text!r} is blank: give comma-separated key=value pairs (e.g. "
                             "'key1=value1,key2=value2') or leave optim_args unset")
    pairs = []
    for index, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        problem = None
        if not entry:
            problem = f"entry {index} is empty (a doubled, leading or trailing comma)"
        elif "=" not in entry:
            problem = f"entry {entry!r} has no '=' (write {entry}=<value>)"
        elif entry.count("=") > 1:
            problem = f"entry {entry!r} has more than one '='"
        else:
            key, value = (part.strip() for part in entry.split("="))
            if not key:
                problem = f"entry {entry!r} has an empty key"
            else:
                pairs.append((key, value))
        if problem:
            raise OptimArgsError(f"optim_args={text!r} is malformed: {problem}; optim_args must be comma-separated "
                                 "key=value pairs, e.g. 'key1=value1,key2=value2'")
    return pairs


def parse_optim_args(
    text: str | None,
    options: Mapping[str, Option],
    *,
    optimizer: str,
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Parse ``text`` against ``options`` into constructor keyword arguments with typed values.

    Args:
        text: the raw ``optim_args`` string (``None`` or ``""``: no options).
        options: the keys this optimizer accepts.
        optimizer: the ``optim`` name, for error messages.
        fixed: constructor arguments the ``optim`` name pins (e.g. ``mask="sync"`` for ``cautious_adamw``); giving
            one of these keys is an error that says so.
        defaults: default values shown in error messages.

    Raises:
        OptimArgsError (a ValueError) naming the offending key and listing the allowed keys.
    """
    fixed = fixed or {}
    allowed = f"allowed keys for optim={optimizer!r}: {describe_options(options, defaults)}"
    try:
        pairs = split_optim_args(text)
    except OptimArgsError as error:
        raise OptimArgsError(f"{error}; {allowed}") from None
    parsed: dict[str, Any] = {}
    for key, value in pairs:
        where = f"optim_args={text!r} for optim={optimizer!r}"
        if key in TRAINING_ARGUMENT_KEYS:
            field = TRAINING_ARGUMENT_KEYS[key]
            flags = " / ".join(f"--{name.strip()}" for name in field.split("/"))
            raise OptimArgsError(f"{where}: key {key!r} is not allowed in optim_args; set the TrainingArguments "
                                 f"field {field} instead ({flags}). {allowed}")
        if key in fixed and key not in options:
            raise OptimArgsError(f"{where}: key {key!r} is fixed to {fixed[key]!r} by optim={optimizer!r} and "
                                 f"cannot be changed. {allowed}")
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptimArgsError(f"{where}: unknown key {key!r}{hint}. {allowed}")
        if key in parsed:
            raise OptimArgsError(f"{where}: key {key!r} is given more than once. {allowed}")
        try:
            parsed[key] = options[key].convert(key, value)
        except OptimArgsError as error:
            raise OptimArgsError(f"{where}: {error}. {allowed}") from None
    return parsed


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
