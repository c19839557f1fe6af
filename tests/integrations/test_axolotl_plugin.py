"""The axolotl plugin (hf_alphaadam.integrations.axolotl) against a stand-in of axolotl's plugin interface.

axolotl is not installed in this environment (it is large; examples/axolotl/README.md records a real run in a
separate one). The stand-in ``axolotl.integrations.base.BasePlugin`` has the hooks axolotl 0.19-0.21 calls, with
their signatures and default results; plugins are loaded the way axolotl's ``load_plugin`` does it (``module.Class``
from the config's ``plugins:`` list, instantiated without arguments), and ``register`` gets the raw config.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback

from hf_alphaadam import AlphaMonitorCallback
from hf_alphaadam.trainer.optim_args import OptimArgsError

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "axolotl" / "sft_lora.yaml"
PLUGIN = "hf_alphaadam.integrations.axolotl.AlphaAdamPlugin"


class StandInBasePlugin:
    """axolotl's BasePlugin hooks (src/axolotl/integrations/base.py), each doing what the base class does."""

    def __init__(self):
        pass

    def register(self, cfg):
        return None

    def get_input_args(self):
        return None

    def get_training_args_mixin(self):
        return None

    def pre_model_load(self, cfg):
        return None

    def post_model_load(self, cfg, model):
        return None

    def get_trainer_cls(self, cfg):
        return None

    def post_trainer_create(self, cfg, trainer):
        return None

    def get_training_args(self, cfg):
        return None

    def create_optimizer(self, cfg, trainer):
        return None

    def add_callbacks_pre_trainer(self, cfg, model):
        return []

    def add_callbacks_post_trainer(self, cfg, trainer):
        return []

    def post_train(self, cfg, model):
        return None


class StandInConfig(dict):
    """axolotl's DictDefault: a dict whose missing keys read as None, also as attributes."""

    def __getattr__(self, name):
        return self.get(name)


@pytest.fixture
def plugin_module(monkeypatch):
    """hf_alphaadam.integrations.axolotl imported over the stand-in axolotl package (and forgotten afterwards)."""
    base = types.ModuleType("axolotl.integrations.base")
    base.BasePlugin = StandInBasePlugin
    for name, module in [("axolotl", types.ModuleType("axolotl")),
                         ("axolotl.integrations", types.ModuleType("axolotl.integrations")),
                         ("axolotl.integrations.base", base)]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "hf_alphaadam.integrations.axolotl", raising=False)
    module = importlib.import_module("hf_alphaadam.integrations.axolotl")
    yield module
    sys.modules.pop("hf_alphaadam.integrations.axolotl", None)


def load_plugin(name: str):
    """What axolotl's load_plugin does with an entry of ``plugins:``."""
    module_name, class_name = name.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)()


def example_config(**changes) -> StandInConfig:
    config = StandInConfig(yaml.safe_load(EXAMPLE.read_text()))
    config.update(changes)
    return config


def training_arguments(config, plugin, tmp_path) -> TrainingArguments:
    """What axolotl's trainer builder does: optim / optim_args from the config, then the plugins' training args."""
    optim_args = config.get("optim_args")
    if isinstance(optim_args, dict):  # axolotl's own join
        optim_args = ",".join(f"{key}={value}" for key, value in optim_args.items())
    kwargs = {"optim": config["optimizer"], "optim_args": optim_args}
    kwargs.update(plugin.get_training_args(config) or {})
    return TrainingArguments(str(tmp_path), use_cpu=True, report_to="tensorboard", **kwargs)


def test_the_example_config_loads_the_plugin_and_builds_alphaadam(plugin_module, tmp_path):
    config = example_config()
    assert config["plugins"] == [PLUGIN]
    plugin = load_plugin(PLUGIN)
    assert isinstance(plugin, StandInBasePlugin)
    plugin.register(config)
    args = training_arguments(config, plugin, tmp_path)
    assert args.optim.value == "alphaadam" and args.optim_args == "alpha_max=10"
    _, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert (kwargs["alpha_max"], kwargs["mask"], kwargs["alpha"]) == (10.0, "async", "norm")
    (callback,) = plugin.add_callbacks_pre_trainer(config, model=None)
    assert isinstance(callback, AlphaMonitorCallback)
    for key in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"):  # axolotl's CUDA-only kernels are off
        assert config[key] is False


def test_dict_optim_args_keep_their_types(plugin_module, tmp_path):
    config = example_config(optimizer="adapm", optim_args={"rank": 2, "dense_fallback": False,
                                                           "tensor_threads": None, "policy": "lowrank"})
    plugin = load_plugin(PLUGIN)
    plugin.register(config)
    assert plugin.get_training_args(config) == {
        "optim_args": "rank=2,dense_fallback=false,tensor_threads=none,policy=lowrank"}
    _, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_arguments(config, plugin, tmp_path))
    assert (kwargs["rank"], kwargs["dense_fallback"], kwargs["tensor_threads"], kwargs["policy"]) == (
        2, False, None, "lowrank")
    with pytest.raises(plugin_module.AxolotlConfigError, match=r"optim_args\['rank'\] = \[2\]: values must be"):
        plugin_module.optim_args_string({"rank": [2]})
    with pytest.raises(plugin_module.AxolotlConfigError, match="optim_args must be a dict or a 'key=value"):
        plugin_module.optim_args_string(3)


def test_bad_optim_args_are_refused_when_the_config_loads(plugin_module):
    plugin = load_plugin(PLUGIN)
    with pytest.raises(OptimArgsError, match="unknown key 'alpha_maxx'.*did you mean 'alpha_max'"):
        plugin.register(example_config(optim_args={"alpha_maxx": 2}))
    with pytest.raises(OptimArgsError, match="key 'lr' is not allowed"):
        plugin.register(example_config(optim_args="lr=0.1"))


@pytest.mark.parametrize("changes, message", [
    ({"relora": True}, "cannot be used with relora"),
    ({"deepspeed": {"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}},
     "DeepSpeed config that has its own \"optimizer\" section"),
    ({"deepspeed": json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})},
     "offload_optimizer \\(device='cpu'\\)"),
])
def test_unsupported_combinations_are_refused(plugin_module, changes, message):
    with pytest.raises(plugin_module.AxolotlConfigError, match=message):
        load_plugin(PLUGIN).register(example_config(**changes))


def test_deepspeed_from_a_file(plugin_module, tmp_path):
    plugin = load_plugin(PLUGIN)
    config_file = tmp_path / "zero2.json"
    config_file.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "none"}}}))
    plugin.register(example_config(deepspeed=str(config_file)))  # no offload, no optimizer section: fine
    config_file.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(plugin_module.AxolotlConfigError, match="its own \"optimizer\" section"):
        plugin.register(example_config(deepspeed=str(config_file)))


def test_other_optimizers_make_the_plugin_a_no_op(plugin_module, caplog, tmp_path):
    plugin = load_plugin(PLUGIN)
    config = example_config(optimizer="adamw_torch", optim_args=None)
    with caplog.at_level("WARNING", logger="hf_alphaadam.integrations.axolotl"):
        plugin.register(config)
    assert "optimizer='adamw_torch' is not one of its optimizers" in caplog.text
    assert plugin.get_training_args(config) is None
    assert plugin.add_callbacks_pre_trainer(config, model=None) == []


def test_monitor_off_switch_and_callback_order(plugin_module, monkeypatch, tmp_path):
    plugin = load_plugin(PLUGIN)
    config = example_config()
    monkeypatch.setenv("HF_ALPHAADAM_MONITOR", "0")
    assert plugin.add_callbacks_pre_trainer(config, model=None) == []
    monkeypatch.delenv("HF_ALPHAADAM_MONITOR")
    callbacks = plugin.add_callbacks_pre_trainer(config, model=None)
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model=model, args=training_arguments(config, plugin, tmp_path), callbacks=callbacks)
    assert not isinstance(trainer.callback_handler.callbacks[0], AlphaMonitorCallback)  # user callbacks go last
    plugin.post_trainer_create(config, trainer)
    assert trainer.callback_handler.callbacks[0] is callbacks[0]
    assert any(isinstance(cb, TensorBoardCallback) for cb in trainer.callback_handler.callbacks[1:])


def test_without_axolotl_the_import_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "axolotl", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "hf_alphaadam.integrations.axolotl", raising=False)
    with pytest.raises(ImportError, match="is an axolotl plugin and needs axolotl"):
        importlib.import_module("hf_alphaadam.integrations.axolotl")
