"""``optim="alphaadam"`` / ``"cautious_adamw"`` through transformers: registration, argument parsing, the Trainer.

Covers: the private transformers extension points the registry relies on (a failing test here means a transformers
release changed them); ``TrainingArguments`` / ``to_dict`` / ``HfArgumentParser`` / ``TrlParser`` (command line and
YAML); ``training_args.bin`` loading in a fresh process; the Trainer's hyperparameters and decay / no-decay groups
reaching the optimizer; named groups and per-tensor names; 3 training steps on a tiny Llama; checkpoint resume;
``optim_args`` errors through the Trainer; the explicit ``optimizer_cls_and_kwargs`` helper; ``add_optimizer``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)
from transformers import trainer_optimizer
from transformers.training_args import OptimizerNames

import hf_alphaadam
from hf_alphaadam import AlphaAdam
from hf_alphaadam.trainer import registry
from hf_alphaadam.trainer.optim_args import Option
from hf_alphaadam.trainer.registry import (
    OPTIMIZERS,
    OptimizerSpec,
    TransformersCompatibilityError,
    add_optimizer,
    check_transformers_compatibility,
    optimizer_cls_and_kwargs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


# ---- helpers -----------------------------------------------------------------------------------------------------


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


class TokenData(torch.utils.data.Dataset):
    """Random token sequences (fixed seed) as causal-LM examples."""

    def __init__(self, size: int = 32, length: int = 16) -> None:
        self.tokens = torch.randint(0, 128, (size, length), generator=torch.Generator().manual_seed(1234))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def make_args(tmp_path, **overrides) -> TrainingArguments:
    args = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3,
                adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, weight_decay=0.1, optim="alphaadam",
                logging_steps=1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
                dataloader_num_workers=0)
    args.update(overrides)
    return TrainingArguments(**args)


def unwrap(optimizer):
    """The optimizer under accelerate's ``AcceleratedOptimizer`` wrapper(s)."""
    while not isinstance(optimizer, torch.optim.Optimizer) or type(optimizer).__name__ == "AcceleratedOptimizer":
        optimizer = optimizer.optimizer
    return optimizer


def groups_by_name(optimizer) -> dict[str, dict]:
    return {group["name"]: group for group in optimizer.param_groups}


# ---- the transformers internals the registry extends ---------------------------------------------------------------


def test_transformers_extension_points_are_as_expected():
    """If this fails, a transformers release changed what hf_alphaadam.trainer.registry relies on."""
    names, handlers, trainer_module = check_transformers_compatibility()
    assert names is OptimizerNames and issubclass(OptimizerNames, str)
    assert OptimizerNames("adamw_torch") is OptimizerNames.ADAMW_TORCH
    assert handlers is trainer_optimizer._OPTIMIZER_HANDLERS
    # Trainer.create_optimizer passes its param groups only to Optimizer subclasses (else: a factory called with
    # the model); the registry's constructor class relies on that.
    cls, _ = optimizer_cls_and_kwargs(make_args("unused"))
    assert issubclass(cls, torch.optim.Optimizer)
    assert trainer_optimizer.is_optimizer_factory(cls) is False
    assert "optimizer_cls_and_kwargs" in inspect.signature(Trainer.__init__).parameters
    assert list(inspect.signature(Trainer.get_optimizer_cls_and_kwargs).parameters) == ["args", "model"]
    context_fields = {f.name for f in dataclasses.fields(trainer_optimizer.OptimizerContext)}
    assert {"args", "model", "optim_args"} <= context_fields


def test_a_changed_transformers_gives_a_clear_error(monkeypatch, caplog):
    monkeypatch.delattr(trainer_optimizer, "_OPTIMIZER_HANDLERS")
    with pytest.raises(TransformersCompatibilityError) as raised:
        check_transformers_compatibility()
    message = str(raised.value)
    for fragment in [f"cannot register optim={sorted(hf_alphaadam.OPTIMIZERS)}", "transformers 5.",
                     "_OPTIMIZER_HANDLERS", "transformers>=5.2,<6", "optimizer_cls_and_kwargs="]:
        assert fragment in message
    with caplog.at_level(logging.WARNING, logger="hf_alphaadam.trainer.registry"):
        registry.register_at_import()  # the import-time call only warns: the optimizers stay importable
    assert "_OPTIMIZER_HANDLERS" in caplog.text
    monkeypatch.undo()

    class PlainNames:
        ADAMW_TORCH = "adamw_torch"

    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "OptimizerNames", PlainNames)
    with pytest.raises(TransformersCompatibilityError, match="OptimizerNames is no longer a str Enum"):
        check_transformers_compatibility()


def test_register_is_idempotent_and_exported():
    assert hf_alphaadam.register is registry.register
    assert hf_alphaadam.optimizer_cls_and_kwargs is registry.optimizer_cls_and_kwargs
    members, handlers = list(OptimizerNames), dict(trainer_optimizer._OPTIMIZER_HANDLERS)
    hf_alphaadam.register()
    hf_alphaadam.register()
    assert list(OptimizerNames) == members
    assert handlers.keys() == trainer_optimizer._OPTIMIZER_HANDLERS.keys()
    values = [member.value for member in OptimizerNames]
    assert values.count("alphaadam") == 1 and values.count("cautious_adamw") == 1
    assert values.index("adamw_torch") < values.index("alphaadam")  # appended after the built-in names


# ---- TrainingArguments and argument parsers --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alphaadam", "cautious_adamw"])
def test_training_arguments_accept_the_names(name, tmp_path):
    args = make_args(tmp_path, optim=name, optim_args="alpha_max=2")
    assert isinstance(args.optim, OptimizerNames) and args.optim == name
    assert OptimizerNames(name) is args.optim is OptimizerNames[name.upper()] is getattr(OptimizerNames,
                                                                                           name.upper())
    assert args.to_dict()["optim"] == name
    assert json.loads(args.to_json_string())["optim"] == name
    assert trainer_optimizer._OPTIMIZER_HANDLERS.get(args.optim) is not None


def test_unknown_names_still_fail_listing_ours(tmp_path):
    with pytest.raises(ValueError, match=r"alphaadamz is not a valid OptimizerNames.*'alphaadam'"):
        make_args(tmp_path, optim="alphaadamz")


def test_hf_argument_parser_command_line_and_yaml(tmp_path):
    parser = HfArgumentParser(TrainingArguments)  # built after `import hf_alphaadam`: the choices include ours
    choices = next(action.choices for action in parser._actions if action.dest == "optim")
    assert "alphaadam" in choices and "cautious_adamw" in choices
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "alphaadam",
                                                  "--optim_args", "mask=sync", "--use_cpu", "true"])
    assert args.optim is OptimizerNames.ALPHAADAM and args.optim_args == "mask=sync"

    config = tmp_path / "args.yaml"
    config.write_text(f"output_dir: {tmp_path}\noptim: cautious_adamw\noptim_args: alpha_max=2\nuse_cpu: true\n")
    (args,) = parser.parse_yaml_file(str(config))
    assert args.optim is OptimizerNames.CAUTIOUS_ADAMW and args.optim_args == "alpha_max=2"


def test_trl_parser_command_line_and_yaml(tmp_path):
    trl = pytest.importorskip("trl")
    config = tmp_path / "sft.yaml"
    config.write_text(f"output_dir: {tmp_path}\noptim: cautious_adamw\noptim_args: alpha_max=10\n"
                      "use_cpu: true\nbf16: false\n")
    (args,) = trl.TrlParser(trl.SFTConfig).parse_args_and_config(["--config", str(config)])
    assert args.optim is OptimizerNames.CAUTIOUS_ADAMW and args.optim_args == "alpha_max=10"
    # the command line overrides the YAML
    (args,) = trl.TrlParser(trl.SFTConfig).parse_args_and_config(
        ["--config", str(config), "--optim", "alphaadam", "--optim_args", "mask=sync,alpha=count"])
    assert args.optim is OptimizerNames.ALPHAADAM and args.optim_args == "mask=sync,alpha=count"
    _, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert kwargs["mask"] == "sync" and kwargs["alpha"] == "count"


# ---- the Trainer -------------------------------------------------------------------------------------------------


def test_create_optimizer_respects_training_arguments_and_groups(tmp_path):
    model = tiny_llama()
    trainer = Trainer(model=model, args=make_args(tmp_path), train_dataset=TokenData())
    optimizer = unwrap(trainer.create_optimizer())
    assert type(optimizer) is AlphaAdam
    groups = groups_by_name(optimizer)
    assert list(groups) == ["decay", "no_decay"]
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-3 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
        assert group["mask"] == "async" and group["alpha"] == "norm" and group["alpha_max"] is None
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0

    names = {id(param): name for name, param in model.named_parameters()}
    for group in optimizer.param_groups:  # param_names are the model's names, in the group's order
        assert group["param_names"] == [names[id(param)] for param in group["params"]]
    assert "model.layers.0.self_attn.q_proj.weight" in groups["decay"]["param_names"]
    assert all(param.dim() == 1 for param in groups["no_decay"]["params"])  # norm weights (Llama has no biases)
    assert all("norm" in name for name in groups["no_decay"]["param_names"])
    assert all(param.dim() == 2 for param in groups["decay"]["params"])
    assert len(groups["decay"]["params"]) + len(groups["no_decay"]["params"]) == len(list(model.parameters()))


def test_trainer_groups_keep_their_names_without_weight_decay(tmp_path):
    """weight_decay=0 (the TrainingArguments default): the Trainer's two groups are still "decay" (weight
    matrices) and "no_decay" (norm weights, biases), so their statistics stay apart."""
    trainer = Trainer(model=tiny_llama(), args=make_args(tmp_path, weight_decay=0.0))
    groups = groups_by_name(unwrap(trainer.create_optimizer()))
    assert list(groups) == ["decay", "no_decay"]
    assert groups["decay"]["weight_decay"] == 0.0 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(param.dim() == 2 for param in groups["decay"]["params"])
    assert all(param.dim() == 1 for param in groups["no_decay"]["params"])


@pytest.fixture(scope="module")
def alphaadam_run(tmp_path_factory):
    """3 steps of optim="alphaadam" (alpha_max=10) with a checkpoint after step 2."""
    out = tmp_path_factory.mktemp("alphaadam-run")
    args = make_args(out, optim_args="alpha_max=10", save_strategy="steps", save_steps=2)
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=TokenData())
    trainer.train()
    return trainer, out


def test_alphaadam_trains_three_steps(alphaadam_run):
    trainer, _ = alphaadam_run
    check_trained(trainer, mask="async", alpha="norm", alpha_max=10.0)


def test_cautious_adamw_trains_three_steps(tmp_path):
    trainer = Trainer(model=tiny_llama(), args=make_args(tmp_path, optim="cautious_adamw"), train_dataset=TokenData())
    trainer.train()
    check_trained(trainer, mask="sync", alpha="count", alpha_max=None)


def check_trained(trainer, mask, alpha, alpha_max) -> None:
    optimizer = unwrap(trainer.optimizer)
    assert isinstance(optimizer, AlphaAdam)
    assert trainer.state.global_step == STEPS
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    for group in optimizer.param_groups:
        assert (group["mask"], group["alpha"], group["alpha_max"]) == (mask, alpha, alpha_max)
    statistics = optimizer.statistics(per_tensor=True)
    assert set(statistics["groups"]) == {"decay", "no_decay"}
    assert "model.layers.0.self_attn.q_proj.weight" in statistics["tensors"]
    assert "model.norm.weight" in statistics["tensors"]
    assert all(math.isfinite(value["alpha"]) for value in statistics["tensors"].values())


def test_resume_from_checkpoint_reproduces_the_run(alphaadam_run, tmp_path):
    straight, out = alphaadam_run
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").exists()
    args = make_args(out, optim_args="alpha_max=10", save_strategy="no")
    resumed = Trainer(model=tiny_llama(seed=1), args=args, train_dataset=TokenData())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    optimizer = unwrap(resumed.optimizer)
    assert isinstance(optimizer, AlphaAdam) and resumed.state.global_step == STEPS
    assert list(groups_by_name(optimizer)) == ["decay", "no_decay"]
    assert all(float(state["step"]) == STEPS for state in optimizer.state.values())
    for (name, expected), (_, actual) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)
    # the optimizer state round-trips through state_dict() / load_state_dict()
    copy = unwrap(Trainer(model=tiny_llama(), args=args).create_optimizer())
    copy.load_state_dict(optimizer.state_dict())
    assert [g["param_names"] for g in copy.param_groups] == [g["param_names"] for g in optimizer.param_groups]


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import HfArgumentParser, TrainingArguments

    early_parser = HfArgumentParser(TrainingArguments)  # built before hf_alphaadam is imported
    imported_before = "hf_alphaadam" in sys.modules
    args = torch.load(sys.argv[1], weights_only=False)  # no `import hf_alphaadam` anywhere in this script
    report = {"imported_before": imported_before, "imported_after": "hf_alphaadam" in sys.modules,
              "optim": args.optim.value, "optim_type": type(args.optim).__name__, "optim_args": args.optim_args}
    argv = ["--output_dir", "unused", "--optim", "alphaadam"]
    try:
        early_parser.parse_args_into_dataclasses(argv)
        report["early_parser"] = "accepted"
    except SystemExit:
        report["early_parser"] = "rejected"
    (late,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(argv)
    report["late_parser"] = late.optim.value
    print("REPORT " + json.dumps(report))
""")


def test_training_args_bin_loads_in_a_fresh_process(alphaadam_run, tmp_path):
    _, out = alphaadam_run
    script = tmp_path / "load_args.py"
    script.write_text(FRESH_PROCESS)
    # without the .pth start-up hook (tests/trainer/test_autoregister.py covers it): only the pickle imports us
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "HF_ALPHAADAM_AUTOREGISTER": "0"}
    result = subprocess.run([sys.executable, str(script), str(out / "checkpoint-2" / "training_args.bin")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    # unpickling the optim member imports hf_alphaadam by itself, which registers the names
    assert report["imported_before"] is False and report["imported_after"] is True
    assert report["optim"] == "alphaadam" and report["optim_type"] == "OptimizerNames"
    assert report["optim_args"] == "alpha_max=10"
    # argparse takes its --optim choices when the parser is built: build parsers after `import hf_alphaadam`
    assert report["early_parser"] == "rejected" and report["late_parser"] == "alphaadam"


# ---- optim_args errors reach the user through the Trainer ---------------------------------------------------------


@pytest.mark.parametrize("optim, optim_args, fragments", [
    ("alphaadam", "mask", ["entry 'mask' has no '='", "write mask=<value>"]),
    ("alphaadam", "mask=sync,", ["entry 2 is empty"]),
    ("alphaadam", "=sync", ["has an empty key", "allowed keys for optim='alphaadam'"]),
    ("alphaadam", "mask=sync,mask=async", ["key 'mask' is given more than once", "alpha_max (a float >= 1"]),
    ("alphaadam", "alpha_maxx=2", ["unknown key 'alpha_maxx'", "did you mean 'alpha_max'?"]),
    ("alphaadam", "lr=0.1", ["key 'lr' is not allowed", "--learning_rate"]),
    ("alphaadam", "alpha_max=0.5", ["alpha_max='0.5' is out of range"]),
    ("cautious_adamw", "mask=async", ["key 'mask' is fixed to 'sync' by optim='cautious_adamw'"]),
])
def test_optim_args_errors_through_the_trainer(optim, optim_args, fragments, tmp_path):
    # building the TrainingArguments already parses optim_args (a typo fails before the model is loaded) ...
    with pytest.raises(ValueError) as raised:
        make_args(tmp_path, optim=optim, optim_args=optim_args)
    for fragment in fragments:
        assert fragment in str(raised.value)
    # ... and the Trainer's handler parses it again (for arguments changed after construction)
    args = make_args(tmp_path, optim=optim)
    args.optim_args = optim_args
    with pytest.raises(ValueError) as raised:
        Trainer.get_optimizer_cls_and_kwargs(args, tiny_llama())  # what Trainer.create_optimizer calls
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_optim_args_error_from_create_optimizer(tmp_path):
    args = make_args(tmp_path)
    args.optim_args = "alpha=cautious"  # set after construction, which would have refused it
    trainer = Trainer(model=tiny_llama(), args=args)
    with pytest.raises(ValueError, match="alpha='cautious' is not allowed: alpha must be one of 'norm', 'count'"):
        trainer.create_optimizer()


def test_builtin_optimizers_are_unchanged(tmp_path):
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(make_args(tmp_path, optim="sgd", optim_args="momentum=0.9"))
    assert cls is torch.optim.SGD and kwargs["momentum"] == 0.9
    # a malformed string still fails with a ValueError, now naming the entry
    with pytest.raises(ValueError, match="entry 'momentum' has no '='"):
        Trainer.get_optimizer_cls_and_kwargs(make_args(tmp_path, optim="sgd", optim_args="momentum"))


# ---- the explicit helper and the group constructor -------------------------------------------------------------


def test_explicit_helper_without_registration_lookup(tmp_path):
    args = make_args(tmp_path, optim="adamw_torch", optim_args="alpha_max=3")
    with pytest.raises(ValueError, match=r"args.optim='adamw_torch' is not an optimizer of hf_alphaadam"):
        optimizer_cls_and_kwargs(args)
    model = tiny_llama()
    trainer = Trainer(model=model, args=args,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args, name="cautious_adamw"))
    optimizer = unwrap(trainer.create_optimizer())
    assert type(optimizer) is AlphaAdam
    groups = groups_by_name(optimizer)
    assert list(groups) == ["decay", "no_decay"]
    assert (groups["decay"]["mask"], groups["decay"]["alpha"], groups["decay"]["alpha_max"]) == ("sync", "count", 3.0)
    assert groups["decay"]["lr"] == 3e-3 and groups["no_decay"]["weight_decay"] == 0.0
    assert "param_names" not in groups["decay"]  # no model given: statistics fall back to decay.0, decay.1, ...

    with_model = Trainer(model=model, args=args,
                         optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args, model, name="alphaadam"))
    groups = groups_by_name(unwrap(with_model.create_optimizer()))
    assert "model.layers.1.mlp.down_proj.weight" in groups["decay"]["param_names"]


def test_explicit_name_must_agree_with_a_registered_optim(tmp_path):
    with pytest.raises(ValueError, match="args.optim='alphaadam' but name='cautious_adamw'"):
        optimizer_cls_and_kwargs(make_args(tmp_path), name="cautious_adamw")


def test_constructor_on_plain_parameters_and_named_pairs(tmp_path):
    model = tiny_llama()
    cls, kwargs = optimizer_cls_and_kwargs(make_args(tmp_path), model)
    optimizer = cls(model.parameters(), **kwargs)
    assert type(optimizer) is AlphaAdam
    assert [group["name"] for group in optimizer.param_groups] == ["decay"]  # weight_decay=0.1 > 0
    assert optimizer.param_groups[0]["param_names"][0] == "model.embed_tokens.weight"
    optimizer = cls(model.named_parameters(), **kwargs)  # (name, tensor) pairs keep their names
    assert optimizer.param_groups[0]["param_names"][0] == "model.embed_tokens.weight"
    cls, kwargs = optimizer_cls_and_kwargs(make_args(tmp_path, weight_decay=0.0))
    assert cls(model.parameters(), **kwargs).param_groups[0]["name"] == "no_decay"


def test_deepspeed_gets_one_group_per_tensor():
    model = tiny_llama()
    args = SimpleNamespace(optim="alphaadam", optim_args=None, learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999,
                           adam_epsilon=1e-8, weight_decay=0.1,
                           hf_deepspeed_config=SimpleNamespace(config={"zero_optimization": {"stage": 2}}))
    cls, kwargs = optimizer_cls_and_kwargs(args, model)
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    optimizer = cls([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], **kwargs)
    assert len(optimizer.param_groups) == len(decay) + len(no_decay)
    first = optimizer.param_groups[0]
    assert first["name"] == "decay" and first["param_names"] == ["model.embed_tokens.weight"]
    assert first["whole_numel"] == model.model.embed_tokens.weight.numel()
    args.hf_deepspeed_config.config["optimizer"] = {"type": "AdamW"}
    with pytest.raises(ValueError, match="DeepSpeed config has its own \"optimizer\" section"):
        optimizer_cls_and_kwargs(args, model)


# ---- adding an optimizer -------------------------------------------------------------------------------------------


@pytest.fixture
def toy_sgd():
    """An SGD entry registered for one test, then removed again (registry, enum member, handler)."""
    spec = OptimizerSpec("toy_sgd", "torch.optim:SGD", defaults={"momentum": 0.5},
                         options={"momentum": Option(float, min=0.0, max=1.0), "nesterov": Option(bool)},
                         adam_hyperparameters=False)
    add_optimizer(spec)
    yield spec
    member = OptimizerNames("toy_sgd")
    del OPTIMIZERS["toy_sgd"]
    del trainer_optimizer._OPTIMIZER_HANDLERS[member]
    del OptimizerNames._value2member_map_["toy_sgd"], OptimizerNames._member_map_["TOY_SGD"]
    OptimizerNames._member_names_.remove("TOY_SGD")
    type.__delattr__(OptimizerNames, "TOY_SGD")


def test_add_optimizer_is_one_declarative_entry(toy_sgd, tmp_path):
    add_optimizer(toy_sgd)  # the same spec again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        add_optimizer(dataclasses.replace(toy_sgd, defaults={}))
    args = make_args(tmp_path, optim="toy_sgd", optim_args="nesterov=true,momentum=0.9")
    model = tiny_llama()
    trainer = Trainer(model=model, args=args)
    optimizer = unwrap(trainer.create_optimizer())
    assert type(optimizer) is torch.optim.SGD
    groups = groups_by_name(optimizer)
    assert groups["decay"]["momentum"] == 0.9 and groups["decay"]["nesterov"] is True
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["lr"] == 3e-3
    with pytest.raises(ValueError, match=r"unknown key 'dampening'.*momentum \(a float >= 0 and <= 1; default 0.5\)"):
        Trainer.get_optimizer_cls_and_kwargs(make_args(tmp_path, optim="toy_sgd", optim_args="dampening=0.1"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="AlphaAdam2"), "must be lower case"),
    (dict(name="bad", options={"lr": Option(float)}), "'lr' comes from the TrainingArguments field learning_rate"),
    (dict(name="bad", defaults={"weight_decay": 0.1}), "'weight_decay' comes from the TrainingArguments"),
])
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerSpec(optimizer_cls=AlphaAdam, **kwargs)
