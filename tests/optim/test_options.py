"""The option schema (``optim/_options.py``, ``optim/_schemas.py``) and the optimizer catalog (``optim/catalog.py``).

- A table of bad values for every option of every schema: the schema refuses each one naming the key, and so does
  the optimizer class (the same exception type), both as a constructor argument and as a param-group override.
- Each schema's defaults are the constructor's defaults, and each constructor argument is declared in the schema.
- Every ``optim_args`` key of every catalog entry is a constructor argument of its class.
- ``_options`` / ``_schemas`` import only the standard library; the catalog imports no transformers.
- ``check_group`` normalises; schemas refuse an option declared twice; ``doc()`` / ``help()`` come from the schema.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_alphaadam.optim import AdaDiag, AdaPM, AlphaAdam, catalog
from hf_alphaadam.optim._options import (
    NO_DEFAULT,
    TRAINING_ARGUMENT_KEYS,
    OptimArgsError,
    Option,
    OptionSchema,
    OptionTypeError,
)
from hf_alphaadam.optim._schemas import ADADIAG_SCHEMA, ADAM, ADAPM_SCHEMA, ALPHAADAM_SCHEMA, MASK, PRECISION

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {AlphaAdam: ALPHAADAM_SCHEMA, AdaPM: ADAPM_SCHEMA, AdaDiag: ADADIAG_SCHEMA}
NAN = math.nan

# ---- the bad-value table ------------------------------------------------------------------------------------------

# key -> bad values: wrong type, out of range, unknown choice, a bool where a number is expected, NaN
BAD_VALUES: dict[str, list] = {
    "lr": ["fast", -1e-3, NAN, math.inf, True, None, torch.tensor([1e-3, 1e-3])],
    "betas": [0.9, (0.9,), (0.9, 0.99, 0.999), (1.0, 0.999), (0.9, -0.1), (0.9, NAN), ("a", 0.9), (True, 0.9), None],
    "eps": [0.0, -1e-8, NAN, "1e-8", True, None],
    "weight_decay": [-0.1, NAN, math.inf, "0.1", True, None],
    "maximize": [1, "yes", None],
    "mask": ["later", "ASYNC", 1, None],
    "alpha": ["max", True, None],
    "alpha_max": [0.5, -1.0, NAN, "2", True],
    "first_step": ["skip", None],
    "state_dtype": ["int8", "bf32", 8, torch.int8],
    "foreach": ["yes", 1, 0.0],
    "fused": ["yes", 0],
    "state_bits": [16, 4, True, "8", 8.5, None],
    "min_8bit_size": [-1, 1.5, True, "4096", None],
    "quantize_embeddings": [1, "true", None],
    "bf16_update": ["round", None],
    "adopt_changed_settings": [1, "yes", None],
    # AdaPM
    "rank": [0, -2, 2.5, True, "16", None],
    "head_dim": [0, 2.5, True, "64"],
    "refit_iters": [-1, 1.5, True, "1", None],
    "residual": ["fira", None],
    "residual_clip": [0.0, -1.0, NAN, "1", True, None],
    "policy": ["fancy", None],
    "none_modules": [3, "(", [], ["q_proj", 3]],
    "full_modules": [3, "[", []],
    "lowrank_modules": [3, "(", ()],
    "lm_head": ["low", None],
    "other": ["half", None],
    "fused_qkv_modules": [3, "("],
    "transposed_modules": [3, "("],
    "dense_fallback": [1, "false", None],
    "seed": [1.5, True, "0", None],
    "log_policy": [1, "yes", None],
    "tensor_threads": [0, -2, 1.5, True, "2"],
    # AdaDiag
    "update_freq": [0, -3, 1.5, True, "10", None],
    "two_sided": ["yes", 1, None],
    "side": ["top", None],
    "moment_space": ["both", None],
    "reproject": [1, None],
    "align_signs": [0, None],
    "rotate": [3, 1.5, "(unclosed", None],
    "max_dim": [0, 1.5, True, "8192"],
}
# the same key with other choices per optimizer
BAD_VALUES_PER_CLASS = {(AdaPM, "second_moment"): ["adafactor", "lion", None],
                        (AdaDiag, "second_moment"): ["mini", "lion", None]}
UNCHECKED = {"partition_group"}  # any object (a process group)


def bad_values(cls, key):
    return BAD_VALUES_PER_CLASS.get((cls, key), BAD_VALUES.get(key, []))


def named_params():
    torch.manual_seed(0)
    return [("model.layers.0.mlp.up_proj.weight", torch.nn.Parameter(torch.randn(6, 4))),
            ("model.layers.0.mlp.up_proj.bias", torch.nn.Parameter(torch.randn(6)))]


def construct(cls, params, **kwargs):
    if cls is AdaPM and "log_policy" not in kwargs:
        kwargs["log_policy"] = False
    return cls(params, **kwargs)


CASES = [(cls, key, value) for cls, schema in SCHEMAS.items() for key in schema for value in bad_values(cls, key)]


def checked_by_the_class_today(case):
    """AdaPM does not check log_policy yet; foreach / fused test ``in (None, True, False)``, which lets 1 and 0.0
    through. The schema refuses them: these cases flip when the classes use it."""
    return True


def case_id(case):
    cls, key, value = case
    return f"{cls.__name__}-{key}={value!r}"


def schema_error(schema, key, value):
    with pytest.raises((TypeError, ValueError)) as raised:
        schema.check(key, value)
    assert key in str(raised.value)
    return raised.value


def test_every_option_of_every_schema_has_bad_values_of_each_kind():
    for cls, schema in SCHEMAS.items():
        for key, option in schema.items():
            values = bad_values(cls, key)
            if key in UNCHECKED:
                assert option.types == (object,)
                continue
            assert values, f"{cls.__name__}.{key} has no bad values in the table"
            kinds = set(option.types)
            items = [item for value in values for item in (value if isinstance(value, tuple) else (value,))]
            if kinds <= {int, float}:
                assert any(item is True for item in items), f"{key}: no bool where a number is expected"
                assert any(isinstance(item, str) for item in items), f"{key}: no wrong-type value"
            if float in kinds:
                assert any(isinstance(item, float) and math.isnan(item) for item in items), f"{key}: no NaN"
            if option.min is not None:
                assert any(type(item) in (int, float) and not option._in_range(item) for item in items), (
                    f"{key}: no value out of range")
            if option.choices and str in kinds:
                assert any(isinstance(v, str) and v not in option.choices for v in values), f"{key}: no unknown choice"
            if not option.none:
                assert None in values, f"{key}: no None, which it does not allow"


@pytest.mark.parametrize("case", [case if checked_by_the_class_today(case) else pytest.param(
    case, marks=pytest.mark.xfail(strict=True, reason="lead wires the classes")) for case in CASES], ids=case_id)
def test_bad_value_is_refused_by_the_schema_and_by_the_class(case):
    cls, key, value = case
    schema = SCHEMAS[cls]
    error = schema_error(schema, key, value)
    with pytest.raises((TypeError, ValueError)) as raised:
        construct(cls, named_params(), **{key: value})
    assert key in str(raised.value), raised.value
    assert isinstance(error, type(raised.value)), (f"the schema raises {type(error).__name__}: {error}; the class "
                                                   f"raises {type(raised.value).__name__}: {raised.value}")
    if schema[key].in_group:  # as a param-group override, checked by add_param_group
        with pytest.raises(type(raised.value)) as raised:
            construct(cls, [{"params": [torch.nn.Parameter(torch.randn(3))], "param_names": ["a.bias"]},
                            {"params": [torch.nn.Parameter(torch.randn(3))], "param_names": ["b.bias"], key: value}])
        assert key in str(raised.value)
        with pytest.raises(type(error)):
            schema.check_group({"params": [], key: value})


def test_wrong_types_are_type_errors_and_also_value_errors():
    error = schema_error(ALPHAADAM_SCHEMA, "state_bits", "8")
    assert isinstance(error, OptionTypeError) and isinstance(error, TypeError) and isinstance(error, ValueError)
    error = schema_error(ALPHAADAM_SCHEMA, "state_bits", 16)  # the right type, not allowed: a ValueError only
    assert type(error) is ValueError


@pytest.mark.parametrize("schema, key, value, fragments", [
    (ALPHAADAM_SCHEMA, "alpha_max", 0.5, ["alpha_max must be >= 1, got 0.5", "upper clamp of alpha"]),
    (ALPHAADAM_SCHEMA, "alpha_max", "2", ["alpha_max must be None or a number >= 1, got '2'"]),
    (ALPHAADAM_SCHEMA, "alpha_max", NAN, ["alpha_max must be a finite number >= 1, got nan"]),
    (ALPHAADAM_SCHEMA, "betas", (1.0, 0.999), ["betas[0] must be in [0, 1), got 1.0"]),
    (ALPHAADAM_SCHEMA, "betas", 0.9, ["betas must be a pair of numbers in [0, 1), got 0.9"]),
    (ALPHAADAM_SCHEMA, "mask", "later", ["mask must be one of ('async', 'sync', 'none'), got 'later'"]),
    (ALPHAADAM_SCHEMA, "state_bits", True, ["state_bits must be 32 or 8, got True"]),
    (ALPHAADAM_SCHEMA, "fused", "yes", ["fused must be True, False or None, got 'yes'"]),
    (ALPHAADAM_SCHEMA, "lr", torch.ones(2), ["lr as a tensor must have one element, got shape (2,)"]),
    (ALPHAADAM_SCHEMA, "state_dtype", torch.int8, ["state_dtype must be one of (", "got torch.int8"]),
    (ADAPM_SCHEMA, "tensor_threads", "2", ["tensor_threads must be None or an integer >= 1, got '2'"]),
    (ADAPM_SCHEMA, "full_modules", 3, ["full_modules must be a regex string", "got 3"]),
    (ADAPM_SCHEMA, "lowrank_modules", "(", ["lowrank_modules='(' is not a valid regular expression"]),
    (ADADIAG_SCHEMA, "rotate", 3, ["rotate must be True, False or a regex string", "got 3"]),
    (ADADIAG_SCHEMA, "update_freq", 0, ["update_freq must be an integer >= 1, got 0", "steps between basis"]),
    (ADAPM_SCHEMA, "tensor_threads", 0, ["tensor_threads must be None or an integer >= 1, got 0"]),
    (ADAPM_SCHEMA, "residual_clip", 0.0, ["residual_clip must be > 0, got 0.0"]),
])
def test_messages_name_the_key_the_value_and_what_is_allowed(schema, key, value, fragments):
    message = str(schema_error(schema, key, value))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- good values and normalisation ----------------------------------------------------------------------------------


def test_check_group_normalises_in_place_and_leaves_other_entries():
    group = {"params": ["p"], "name": "decay", "initial_lr": 0.1, "state_dtype": torch.bfloat16,
             "lr": torch.tensor(0.1)}
    assert ALPHAADAM_SCHEMA.check_group(group) is group
    assert group["state_dtype"] == "bfloat16" and group["params"] == ["p"] and group["initial_lr"] == 0.1
    for given, saved in [("bf16", "bfloat16"), ("fp32", "float32"), (torch.float16, "float16"), ("float64", "float64"),
                         (None, None)]:
        assert ALPHAADAM_SCHEMA.check("state_dtype", given) == saved
    assert ADAPM_SCHEMA.check("none_modules", ["q_proj", "k_proj"]) == "(?:q_proj)|(?:k_proj)"
    assert ADADIAG_SCHEMA.check("rotate", True) is True and ADADIAG_SCHEMA.check("rotate", "q_proj") == "q_proj"
    assert ALPHAADAM_SCHEMA.check("betas", [0.5, 0.0]) == [0.5, 0.0]


def test_check_arguments_splits_group_entries_from_constructor_settings():
    group, settings = ADAPM_SCHEMA.check_arguments({"rank": 4, "state_dtype": "bf16", "tensor_threads": 2,
                                                    "log_policy": False})
    assert group == {"rank": 4, "state_dtype": "bfloat16"}
    assert settings == {"tensor_threads": 2, "log_policy": False}
    with pytest.raises(TypeError, match=r"AdaPM got unknown options \['rnak'\]"):
        ADAPM_SCHEMA.check_arguments({"rnak": 4})


def test_group_level_checks_run_after_the_options():
    def rank_fits_head_dim(group):
        if group.get("head_dim") is not None and group["rank"] > group["head_dim"]:
            raise ValueError(f"rank={group['rank']} is larger than head_dim={group['head_dim']}")

    schema = OptionSchema("Toy", {"rank": ADAPM_SCHEMA["rank"], "head_dim": ADAPM_SCHEMA["head_dim"]},
                          checks=(rank_fits_head_dim,))
    schema.check_group({"rank": 2, "head_dim": 4})
    with pytest.raises(ValueError, match="rank=8 is larger than head_dim=4"):
        schema.check_group({"rank": 8, "head_dim": 4})
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):  # per-option checks come first
        schema.check_group({"rank": 0, "head_dim": 4})


def test_no_option_is_declared_twice():
    with pytest.raises(ValueError, match="option 'mask' is declared twice"):
        OptionSchema("Twice", MASK, {"mask": MASK["mask"]})
    with pytest.raises(ValueError, match="override of 'mask_mode', which is not one of its options"):
        OptionSchema("Typo", MASK, overrides={"mask_mode": {"default": "sync"}})
    with pytest.raises(ValueError, match="the Option's default 'fast' is not allowed"):
        Option(str, choices=("async",), default="fast")


def test_fragments_keep_one_declaration_per_option():
    assert ALPHAADAM_SCHEMA["mask"] is MASK["mask"] and ADAPM_SCHEMA["alpha_max"] is MASK["alpha_max"]
    assert ADAPM_SCHEMA["lr"] is ADAM["lr"] and ADADIAG_SCHEMA["eps"] is ADAM["eps"]
    assert ADAPM_SCHEMA["mask"].default == "none" and ADAPM_SCHEMA["mask"].choices == MASK["mask"].choices


# (module, its constant, the schema's value): the optimizers' code compares against these
CONSTANTS = [
    ("_masking", "MASK_MODES", MASK["mask"].choices), ("_masking", "ALPHA_MODES", MASK["alpha"].choices),
    ("_masking", "FIRST_STEP_MODES", MASK["first_step"].choices),
    ("_quantized", "STATE_BITS", PRECISION["state_bits"].choices),
    ("_quantized", "BF16_UPDATE_MODES", PRECISION["bf16_update"].choices),
    ("_quantized", "MIN_8BIT_SIZE", PRECISION["min_8bit_size"].default),
    ("_policy", "SECOND_MOMENTS", ADAPM_SCHEMA["second_moment"].choices),
    ("_policy", "POLICIES", ADAPM_SCHEMA["lm_head"].choices), ("_policy", "POLICIES", ADAPM_SCHEMA["other"].choices),
    ("_policy", "GROUP_POLICIES", ADAPM_SCHEMA["policy"].choices),
    ("adapm", "RESIDUALS", ADAPM_SCHEMA["residual"].choices),
    ("adadiag", "SIDES", ADADIAG_SCHEMA["side"].choices),
    ("adadiag", "MOMENT_SPACES", ADADIAG_SCHEMA["moment_space"].choices),
    ("adadiag", "SECOND_MOMENTS", ADADIAG_SCHEMA["second_moment"].choices),
]


@pytest.mark.parametrize("module, name, declared", CONSTANTS, ids=[f"{m}.{n}" for m, n, _ in CONSTANTS])
def test_choice_constants_of_the_optimizers_agree_with_the_schema(module, name, declared):
    """Where an optimizer module still holds its own copy of a choice tuple (until it imports the schema's), the
    copy allows the same values."""
    value = getattr(importlib.import_module(f"hf_alphaadam.optim.{module}"), name, declared)
    assert (set(value) == set(declared)) if isinstance(declared, tuple) else value == declared


# ---- the schemas against the constructors --------------------------------------------------------------------------


def constructor_defaults(cls):
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, params
    return {p.name: p.default for p in parameters}


@pytest.mark.parametrize("cls", list(SCHEMAS), ids=lambda cls: cls.__name__)
def test_schema_defaults_are_the_constructor_defaults(cls):
    defaults = constructor_defaults(cls)
    schema = SCHEMAS[cls]
    assert set(defaults) == set(schema), (f"constructor only: {sorted(set(defaults) - set(schema))}; "
                                          f"schema only: {sorted(set(schema) - set(defaults))}")
    assert schema.defaults() == defaults
    assert all(option.default is not NO_DEFAULT for option in schema.values())


@pytest.mark.parametrize("cls", list(SCHEMAS), ids=lambda cls: cls.__name__)
def test_param_groups_hold_exactly_the_group_options(cls):
    optimizer = construct(cls, named_params())
    group = optimizer.param_groups[0]
    in_group = {key for key, option in SCHEMAS[cls].items() if option.in_group}
    assert set(optimizer.defaults) == in_group
    assert in_group <= set(group) and not {key for key in SCHEMAS[cls] if key not in in_group} & set(group)


@pytest.mark.parametrize("cls", list(SCHEMAS), ids=lambda cls: cls.__name__)
def test_the_classes_use_their_schema(cls):
    assert cls.OPTIONS is SCHEMAS[cls]
    assert SCHEMAS[cls].doc().splitlines()[1] in cls.__doc__  # the Args: block comes from OPTIONS.doc()


def test_doc_and_help_come_from_the_schema():
    for schema in SCHEMAS.values():
        doc = schema.doc(params="parameters or param groups.")
        assert doc.splitlines()[:2] == ["    Args:", "        params: parameters or param groups."]
        for key, option in schema.items():
            assert re.search(rf"^        {key}: ", doc, re.MULTILINE), key
            assert option.doc and option.help, f"{schema.name}.{key} has no doc or help"
        assert all(len(line) <= 120 for line in doc.splitlines())
        assert [line.split(":")[0] for line in schema.help().splitlines()] == list(schema)
    assert "Default ``'none'``" in ADAPM_SCHEMA.doc().split("        mask:")[1].split("\n        alpha:")[0]


def test_document_fills_the_args_line_of_a_class_docstring():
    class Toy:
        """A toy.

        Args:

        Read the statistics after a step.
        """
        __doc__ = MASK_SCHEMA.document(__doc__, params="the parameters.")

    lines = Toy.__doc__.split("\n")
    assert lines[:4] == ["A toy.", "", "        Args:", "            params: the parameters."]
    assert lines[4].startswith("            mask: ``'async'``") and "Read the statistics after a step." in lines[-2]
    with pytest.raises(ValueError, match="needs exactly one 'Args:' line to fill, found 0"):
        MASK_SCHEMA.document("No arguments here.")


MASK_SCHEMA = OptionSchema("Masked", MASK)


# ---- optim_args conversion ---------------------------------------------------------------------------------------


def test_convert_of_the_new_kinds():
    assert PRECISION["state_bits"].convert("state_bits", "8") == 8
    with pytest.raises(OptimArgsError, match="state_bits='16' is not allowed: state_bits must be one of 32, 8"):
        PRECISION["state_bits"].convert("state_bits", "16")
    rotate = ADADIAG_SCHEMA["rotate"]
    assert rotate.convert("rotate", "true") is True and rotate.convert("rotate", "q_proj|k_proj") == "q_proj|k_proj"
    with pytest.raises(OptimArgsError, match="not a valid regular expression"):
        rotate.convert("rotate", "(")
    assert ALPHAADAM_SCHEMA["state_dtype"].convert("state_dtype", "bf16") == "bf16"  # the constructor normalises
    with pytest.raises(OptimArgsError, match="cannot be given in optim_args"):
        ALPHAADAM_SCHEMA["partition_group"].convert("partition_group", "x")


# ---- the catalog -------------------------------------------------------------------------------------------------

ALPHAADAM_OPTIM_ARGS = {"mask", "alpha", "alpha_max", "first_step", "state_dtype", "foreach", "fused", "bf16_update",
                        "adopt_changed_settings"}


def test_catalog_entries_and_their_optim_args():
    specs = catalog.OPTIMIZERS
    assert list(specs) == ["alphaadam", "cautious_adamw", "alphaadam_8bit", "adapm", "adapm_mini", "adadiag",
                           "adadiag_pp"]
    assert set(specs["alphaadam"].options) == ALPHAADAM_OPTIM_ARGS
    assert set(specs["cautious_adamw"].options) == ALPHAADAM_OPTIM_ARGS - {"mask", "alpha"}
    assert set(specs["alphaadam_8bit"].options) == ALPHAADAM_OPTIM_ARGS | {"min_8bit_size", "quantize_embeddings"}
    assert specs["cautious_adamw"].fixed == {"mask": "sync", "alpha": "count"}
    assert specs["alphaadam_8bit"].fixed == {"state_bits": 8}
    assert "second_moment" not in specs["adapm_mini"].options and "two_sided" not in specs["adadiag_pp"].options
    for spec in specs.values():
        assert not set(spec.options) & set(TRAINING_ARGUMENT_KEYS)
        assert spec.schema is SCHEMAS[spec.resolve_class()]


@pytest.mark.parametrize("name", list(catalog.OPTIMIZERS))
def test_every_optim_args_key_is_a_constructor_argument(name):
    spec = catalog.OPTIMIZERS[name]
    arguments = set(constructor_defaults(spec.resolve_class()))
    assert set(spec.options) <= arguments and set(spec.defaults) <= arguments
    for key, option in spec.options.items():  # each default converts back from its optim_args spelling
        default = spec.option_defaults()[key]
        text = "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert option.convert(key, text) == default, key


def test_build_from_the_catalog():
    optimizer = catalog.build("cautious_adamw", named_params(), lr=0.01)
    assert type(optimizer) is AlphaAdam
    group = optimizer.param_groups[0]
    assert (group["mask"], group["alpha"], group["lr"]) == ("sync", "count", 0.01)
    assert catalog.build("adadiag_pp", named_params()).param_groups[0]["two_sided"] is True
    with pytest.raises(ValueError, match=r"cautious_adamw fixes .*'mask': 'sync'.*\{'mask': 'async'\} would change it"):
        catalog.build("cautious_adamw", named_params(), mask="async")
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'; choose one of \['adadiag'"):
        catalog.build("adamw", named_params())


def test_help_comes_from_the_schema():
    text = catalog.OPTIMIZERS["adapm_mini"].help()
    assert text.startswith("adapm_mini: AdaPM-style partial momentum with an Adam-mini-style compact second moment "
                           "(fixes second_moment='mini')")
    for key, option in catalog.OPTIMIZERS["adapm_mini"].options.items():
        assert f"{key} ({option.allowed()}" in text and f"  {key}: {option.help}" in text


def test_bad_catalog_entries_are_refused():
    with pytest.raises(ValueError, match="mask must be one of"):
        catalog.OptimizerSpec("bad", "hf_alphaadam.optim:AlphaAdam", schema=ALPHAADAM_SCHEMA, defaults={"mask": "x"})
    with pytest.raises(ValueError, match="default rnak=4 is not an option of AdaPM"):
        catalog.OptimizerSpec("bad", "hf_alphaadam.optim:AdaPM", schema=ADAPM_SCHEMA, defaults={"rnak": 4})
    with pytest.raises(ValueError, match=r"extra_options \['bits'\] are not options of AlphaAdam"):
        catalog.OptimizerSpec("bad", "hf_alphaadam.optim:AlphaAdam", schema=ALPHAADAM_SCHEMA, extra_options=("bits",))


def test_the_registry_serves_the_catalog():
    from hf_alphaadam.trainer import optim_args, registry

    assert registry.OPTIMIZERS is catalog.OPTIMIZERS and registry.OptimizerSpec is catalog.OptimizerSpec
    assert optim_args.Option is Option and optim_args.OptimArgsError is OptimArgsError


# ---- imports -------------------------------------------------------------------------------------------------------

STDLIB = {"__future__", "dataclasses", "math", "re", "textwrap", "collections", "collections.abc", "typing"}


@pytest.mark.parametrize("module", ["_options.py", "_schemas.py"])
def test_the_schema_modules_import_only_the_standard_library(module):
    tree = ast.parse((REPO_ROOT / "hf_alphaadam" / "optim" / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= STDLIB | {"._options"}, imported - STDLIB


def test_options_and_catalog_import_no_trainer_side():
    code = ("import sys, json, hf_alphaadam.optim._options, hf_alphaadam.optim._schemas, hf_alphaadam.optim.catalog\n"
            "print('REPORT ' + json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                            env={"PATH": "", "HF_ALPHAADAM_AUTOREGISTER": "0", "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    modules = json.loads(result.stdout.split("REPORT ", 1)[1])
    heavy = [name for name in modules if name.split(".")[0] in {"transformers", "accelerate", "peft", "datasets",
                                                                 "deepspeed", "bitsandbytes", "trl"}]
    assert heavy == [] and not [name for name in modules if name.startswith("hf_alphaadam.trainer")]
