"""The typed ``optim_args`` parser: conversion to the declared types, and a clear ValueError for every bad string.

Uses a schema with every option kind (str choices, bounded float / int, bool, optional "none") plus the real
schemas of ``alphaadam`` and ``cautious_adamw`` from the registry.
"""

from __future__ import annotations

import pytest

from hf_alphaadam.trainer.optim_args import (
    TRAINING_ARGUMENT_KEYS,
    OptimArgsError,
    Option,
    describe_options,
    parse_optim_args,
    split_optim_args,
)
from hf_alphaadam.trainer.registry import OPTIMIZERS

SCHEMA = {
    "mode": Option(str, choices=("fast", "slow", "none")),
    "scale": Option(float, min=1.0, none=True),
    "rate": Option(float, min=0.0, max=1.0, min_inclusive=False),
    "count": Option(int, min=1, max=8),
    "flag": Option(bool),
    "auto": Option(bool, none=True),
}


def parse(text):
    return parse_optim_args(text, SCHEMA, optimizer="toy")


@pytest.mark.parametrize("text", [None, ""])
def test_no_options(text):
    assert parse(text) == {}


@pytest.mark.parametrize("text", ["   ", "\t"])
def test_a_blank_string_is_a_clear_error(text):
    with pytest.raises(ValueError, match=r"is blank: give comma-separated key=value pairs .* or leave optim_args unset"):
        parse(text)


def test_values_convert_to_their_declared_types():
    parsed = parse("mode=slow,scale=2.5,rate=1,count=3,flag=true,auto=False")
    assert parsed == {"mode": "slow", "scale": 2.5, "rate": 1.0, "count": 3, "flag": True, "auto": False}
    assert type(parsed["scale"]) is float and type(parsed["rate"]) is float and type(parsed["count"]) is int


def test_none_only_where_declared_and_none_as_a_choice_stays_a_string():
    assert parse("scale=none,auto=NONE") == {"scale": None, "auto": None}
    assert parse("mode=none") == {"mode": "none"}  # a choice named "none", not None
    with pytest.raises(ValueError, match="flag='none' is not a boolean"):
        parse("flag=none")


def test_whitespace_around_keys_and_values_is_stripped():
    assert parse(" mode = fast , count= 2 ") == {"mode": "fast", "count": 2}


def test_bounds_are_inclusive_unless_declared_exclusive():
    assert parse("scale=1,count=1")["scale"] == 1.0
    assert parse("count=8") == {"count": 8}
    with pytest.raises(ValueError, match=r"rate='0' is out of range: rate must be a float > 0 and <= 1"):
        parse("rate=0")


# (optim_args, fragments the message must contain). Every message also lists the allowed keys.
BAD = [
    # malformed strings
    ("mode", ["malformed", "entry 'mode' has no '='", "write mode=<value>", "key1=value1,key2=value2"]),
    ("mode=fast,count", ["entry 'count' has no '='"]),
    ("=fast", ["entry '=fast' has an empty key"]),
    (" =fast", ["has an empty key"]),
    ("mode=fast,,count=2", ["entry 2 is empty"]),
    ("mode=fast,", ["entry 2 is empty", "trailing comma"]),
    ("mode=a=b", ["entry 'mode=a=b' has more than one '='"]),
    # duplicated and unknown keys
    ("mode=fast,mode=slow", ["key 'mode' is given more than once"]),
    ("count=2,count=2", ["key 'count' is given more than once"]),
    ("moed=fast", ["unknown key 'moed'", "did you mean 'mode'?"]),
    ("zzz=1", ["unknown key 'zzz'"]),
    ("Mode=fast", ["unknown key 'Mode'"]),
    # keys that belong to TrainingArguments fields
    ("lr=0.1", ["key 'lr' is not allowed in optim_args", "learning_rate", "--learning_rate"]),
    ("betas=0.9", ["key 'betas'", "adam_beta1 / adam_beta2", "--adam_beta1 / --adam_beta2"]),
    ("beta2=0.95", ["key 'beta2'", "--adam_beta2"]),
    ("eps=1e-6", ["key 'eps'", "--adam_epsilon"]),
    ("weight_decay=0.1", ["key 'weight_decay'", "--weight_decay"]),
    # bad values
    ("mode=medium", ["mode='medium' is not allowed", "mode must be one of 'fast', 'slow', 'none'"]),
    ("mode=", ["mode='' is not allowed"]),
    ("mode=FAST", ["mode='FAST' is not allowed"]),
    ("scale=big", ["scale='big' is not a number", "scale must be a float >= 1, or none"]),
    ("scale=0.5", ["scale='0.5' is out of range", "a float >= 1, or none"]),
    ("scale=inf", ["scale='inf' is out of range"]),
    ("scale=nan", ["scale='nan' is out of range"]),
    ("rate=1.5", ["rate='1.5' is out of range", "a float > 0 and <= 1"]),
    ("count=1.5", ["count='1.5' is not an integer", "an integer >= 1 and <= 8"]),
    ("count=0", ["count='0' is out of range"]),
    ("count=none", ["count='none' is not an integer"]),
    ("flag=yes", ["flag='yes' is not a boolean", "flag must be true or false"]),
    ("flag=1", ["flag='1' is not a boolean"]),
    ("auto=maybe", ["auto must be true or false, or none"]),
]


@pytest.mark.parametrize("text, fragments", BAD, ids=[text for text, _ in BAD])
def test_bad_optim_args_raise_a_clear_value_error(text, fragments):
    with pytest.raises(ValueError) as raised:
        parse(text)
    message = str(raised.value)
    assert isinstance(raised.value, OptimArgsError)
    for fragment in [*fragments, "allowed keys for optim='toy'", "mode (one of 'fast', 'slow', 'none')",
                     "count (an integer >= 1 and <= 8)", "flag (true or false)"]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="optim_args must be a string of comma-separated key=value pairs"):
        parse({"mode": "fast"})


def test_fixed_keys_are_refused_naming_the_value_they_are_fixed_to():
    with pytest.raises(ValueError, match=r"key 'mode' is fixed to 'fast' by optim='toy'"):
        parse_optim_args("mode=slow", {"count": SCHEMA["count"]}, optimizer="toy", fixed={"mode": "fast"})


def test_no_options_at_all():
    with pytest.raises(ValueError, match=r"unknown key 'a'.*this optimizer takes no optim_args"):
        parse_optim_args("a=1", {}, optimizer="plain")
    assert parse_optim_args("", {}, optimizer="plain") == {}


def test_split_keeps_order_and_raw_values():
    assert split_optim_args("b=2, a = x") == [("b", "2"), ("a", "x")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(type=list), "Option type must be one of"),
    (dict(type=str), "needs its allowed values"),
    (dict(type=int, choices=("a",)), "`choices` are for str options"),
    (dict(type=bool, min=0), "`min` / `max` are for int and float options"),
])
def test_bad_option_definitions_are_refused(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Option(**kwargs)


def test_describe_shows_defaults():
    text = describe_options({"mode": SCHEMA["mode"], "scale": SCHEMA["scale"]}, {"mode": "fast"})
    assert text == "mode (one of 'fast', 'slow', 'none'; default 'fast'), scale (a float >= 1, or none)"


# ---- the registered optimizers' schemas --------------------------------------------------------------------------


def test_alphaadam_schema():
    spec = OPTIMIZERS["alphaadam"]
    assert spec.parse_optim_args("mask=sync,alpha=count,alpha_max=2") == {"mask": "sync", "alpha": "count",
                                                                          "alpha_max": 2.0}
    assert spec.parse_optim_args("first_step=masked,state_dtype=bf16,foreach=false,alpha_max=none") == {
        "first_step": "masked", "state_dtype": "bf16", "foreach": False, "alpha_max": None}
    with pytest.raises(ValueError) as raised:
        spec.parse_optim_args("mask=cautious")
    message = str(raised.value)
    assert "mask='cautious' is not allowed: mask must be one of 'async', 'sync', 'none'" in message
    assert "mask (one of 'async', 'sync', 'none'; default 'async')" in message
    assert "alpha_max (a float >= 1, or none)" in message


def test_cautious_adamw_fixes_mask_and_alpha():
    spec = OPTIMIZERS["cautious_adamw"]
    assert spec.parse_optim_args("alpha_max=10") == {"alpha_max": 10.0}
    with pytest.raises(ValueError, match=r"key 'mask' is fixed to 'sync' by optim='cautious_adamw'"):
        spec.parse_optim_args("mask=async")
    with pytest.raises(ValueError, match=r"key 'alpha' is fixed to 'count'"):
        spec.parse_optim_args("alpha=norm")


def test_no_registered_option_shadows_a_training_argument():
    for spec in OPTIMIZERS.values():
        assert not set(spec.options) & set(TRAINING_ARGUMENT_KEYS)
        assert not set(spec.defaults) & set(TRAINING_ARGUMENT_KEYS)
