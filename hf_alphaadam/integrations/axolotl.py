"""The axolotl plugin: hf_alphaadam's optimizers and the alpha monitor in ``axolotl train config.yaml``.

List it in the config (see ``examples/axolotl/``)::

    plugins:
      - hf_alphaadam.integrations.axolotl.AlphaAdamPlugin
    optimizer: alphaadam             # or cautious_adamw, alphaadam_8bit, adapm, adapm_mini, adadiag, adadiag_pp
    optim_args:                      # a dict or a "key=value,..." string, checked against the optimizer's schema
      alpha_max: 10

axolotl hands ``optimizer`` and ``optim_args`` to ``TrainingArguments(optim=..., optim_args=...)``, so the
Trainer builds the optimizer through the package's registration. What the plugin adds:

- :meth:`AlphaAdamPlugin.register` registers the ``optim=`` names (so the plugin works without the ``.pth``
  start-up hook too) and checks the configuration when axolotl loads it: the ``optim_args`` against the chosen
  optimizer's schema, and the combinations below, each refused with an error that says what to change;
- :meth:`AlphaAdamPlugin.get_training_args` passes ``optim_args`` on as the package's own string form (a YAML dict
  keeps its types: ``true`` / ``false``, ``none``);
- :meth:`AlphaAdamPlugin.add_callbacks_pre_trainer` adds an ``AlphaMonitorCallback`` (``HF_ALPHAADAM_MONITOR=0``
  leaves it out), and :meth:`AlphaAdamPlugin.post_trainer_create` puts it ahead of the reporting callbacks.

Refused combinations (with one of the package's optimizers):

- a DeepSpeed config with its own ``"optimizer"`` section: DeepSpeed would use it instead of ``optimizer:``;
- DeepSpeed's ``offload_optimizer``: DeepSpeed then steps the offloaded partitions with its own CPU Adam;
- ``relora``: at each restart ReLoRA prunes the tensors named ``exp_avg`` / ``exp_avg_sq`` in place; here that
  also masks the pruned coordinates out of the next step, and the 8-bit, low-rank and rotated states are missed.

With any other ``optimizer`` the plugin does nothing (and says so once).

Importing this module needs axolotl (its ``BasePlugin`` is the base class).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

try:
    from axolotl.integrations.base import BasePlugin
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("hf_alphaadam.integrations.axolotl is an axolotl plugin and needs axolotl "
                      "(`pip install axolotl`); without axolotl use `optim=` with the Trainer directly") from error

from ..trainer import registry
from ..trainer.callback import MONITOR_ENVIRONMENT_VARIABLE, AlphaMonitorCallback

logger = logging.getLogger(__name__)

__all__ = ["AlphaAdamPlugin", "AxolotlConfigError", "optim_args_string"]


class AxolotlConfigError(ValueError):
    """An axolotl configuration that the plugin cannot run with one of the package's optimizers."""


def optim_args_string(optim_args: Any) -> str | None:
    """axolotl's ``optim_args`` (None, a ``"key=value,..."`` string or a dict of scalars) as the string the
    package parses. Dict values are written ``true`` / ``false`` / ``none`` / ``str(value)``."""
    if optim_args is None or isinstance(optim_args, str):
        return optim_args
    if not isinstance(optim_args, dict):
        raise AxolotlConfigError(f"optim_args must be a dict or a 'key=value,...' string, got "
                                 f"{type(optim_args).__name__} {optim_args!r}")
    entries = []
    for key, value in optim_args.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            text = "none"
        elif isinstance(value, (int, float, str)):
            text = str(value)
        else:
            raise AxolotlConfigError(f"optim_args[{key!r}] = {value!r}: values must be numbers, strings, booleans "
                                     "or null")
        entries.append(f"{key}={text}")
    return ",".join(entries)


class AlphaAdamPlugin(BasePlugin):
    """axolotl plugin for hf_alphaadam's optimizers (see the module docstring)."""

    def register(self, cfg: dict) -> None:
        registry.register()
        name = cfg.get("optimizer")
        if name not in registry.OPTIMIZERS:
            logger.warning("hf_alphaadam's axolotl plugin is listed but optimizer=%r is not one of its optimizers "
                           "(%s): the plugin does nothing", name, ", ".join(sorted(registry.OPTIMIZERS)))
            return
        registry.OPTIMIZERS[name].parse_optim_args(optim_args_string(cfg.get("optim_args")))
        _check_combinations(cfg, name)

    def get_training_args(self, cfg: Any) -> dict[str, Any] | None:
        if not self._active(cfg):
            return None
        return {"optim_args": optim_args_string(cfg.get("optim_args"))}

    def add_callbacks_pre_trainer(self, cfg: Any, model: Any) -> list[Any]:
        if not self._active(cfg) or os.environ.get(MONITOR_ENVIRONMENT_VARIABLE, "1") == "0":
            return []
        return [AlphaMonitorCallback()]

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, AlphaMonitorCallback):
                callback.install(trainer)
                return

    @staticmethod
    def _active(cfg: Any) -> bool:
        return cfg.get("optimizer") in registry.OPTIMIZERS


def _check_combinations(cfg: dict, name: str) -> None:
    if cfg.get("relora"):
        raise AxolotlConfigError(
            f"optimizer={name!r} cannot be used with relora: at each restart ReLoRA prunes the moment tensors "
            "named exp_avg / exp_avg_sq in place, which with these optimizers also masks the pruned coordinates "
            "out of the next step (the mask reads the previous momentum) and misses the 8-bit, low-rank (AdaPM) "
            "and rotated (AdaDiag) states; turn relora off or use an AdamW optimizer")
    deepspeed = _deepspeed_config(cfg.get("deepspeed"))
    if deepspeed is None:
        return
    if "optimizer" in deepspeed:
        raise AxolotlConfigError(f"optimizer={name!r} with a DeepSpeed config that has its own \"optimizer\" "
                                 "section: DeepSpeed would use that one instead; remove the section")
    offload = deepspeed.get("zero_optimization", {}).get("offload_optimizer") or {}
    if offload.get("device", "none") != "none":
        raise AxolotlConfigError(f"optimizer={name!r} with DeepSpeed's offload_optimizer (device="
                                 f"{offload.get('device')!r}): DeepSpeed then steps the offloaded partitions with "
                                 "its own CPU Adam; remove offload_optimizer from the DeepSpeed config")


def _deepspeed_config(value: Any) -> dict | None:
    """axolotl's ``deepspeed`` setting (None, a path to a JSON file, a JSON string or a dict) as a dict, or None
    when it is none of these here."""
    if value is None or isinstance(value, dict):
        return value
    path = Path(str(value))
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    try:
        return json.loads(str(value))
    except json.JSONDecodeError:
        # axolotl resolves it later (and fails there if it is wrong); the Trainer plugin checks the optimizer
        # section again when it builds the optimizer
        logger.info("deepspeed=%r is not a local JSON file: its optimizer settings are checked when the "
                    "optimizer is built", value)
        return None
