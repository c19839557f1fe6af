"""Typed ``optim_args`` for the Trainer plugin: the string syntax and a strict parser.

``TrainingArguments(optim_args="mask=sync,alpha_max=2")`` is one string of comma-separated ``key=value`` pairs.
Each optimizer of the plugin accepts the keys of its catalog entry (``hf_alphaadam.optim.catalog``), a mapping
``key -> Option`` taken from the optimizer's option schema (``hf_alphaadam/optim/_options.py``, where
:class:`Option` and its :meth:`~Option.convert` live). :func:`parse_optim_args` converts every value to its
declared type and refuses, with a ``ValueError`` that names the key and lists what is allowed: a malformed string
(an entry without ``=``, an empty key), a key given twice, an unknown key, a value of the wrong type or out of
range, and keys that belong to ``TrainingArguments`` fields (``lr``, ``betas``, ``eps``, ``weight_decay``, ...:
those are set with ``--learning_rate`` etc., never through ``optim_args``). Nothing is silently ignored.

This module imports no transformers.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ..optim._options import TRAINING_ARGUMENT_KEYS, OptimArgsError, Option, describe_options

__all__ = ["TRAINING_ARGUMENT_KEYS", "OptimArgsError", "Option", "describe_options", "parse_optim_args",
           "split_optim_args"]


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

