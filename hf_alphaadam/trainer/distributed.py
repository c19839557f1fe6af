"""What the Trainer plugin must know about the distributed setup before it builds an optimizer.

The package's optimizers compute per-tensor statistics (alpha, mask ratios) and, for some, shape-dependent
state. That is exact under DDP (every rank holds whole tensors), under FSDP2 (sharded DTensors, whose local sums
the optimizer adds over the shard group) and under DeepSpeed ZeRO-1/2/3 *if* every flat partition DeepSpeed
hands the optimizer belongs to one tensor: the plugin therefore gives DeepSpeed one param group per tensor,
each carrying the tensor's name and true element count (``whole_numel``).

Refused with a clear error (rather than computing wrong statistics):

- a DeepSpeed config with its own ``"optimizer"`` section (DeepSpeed would silently replace the optimizer the
  user asked for with ``optim=...``);
- FSDP1, whose ``use_orig_params`` views are 1-D slices of a flat parameter with no record of the tensor they
  came from.
"""

from __future__ import annotations

import json
import os
from typing import Any



def deepspeed_config(args: Any) -> dict[str, Any] | None:
    """The DeepSpeed config the Trainer will use (from ``--deepspeed`` or an ``accelerate launch`` config),
    or None when DeepSpeed is not in use."""
    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is not None:
        return hf_config.config
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        config = getattr(plugin, "deepspeed_config", None)
        if isinstance(config, dict):
            return config
        return {}
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if path and os.path.exists(path):
            with open(path) as handle:
                return json.load(handle)
        return {}
    return None


def fsdp_version(args: Any) -> int | None:
    """1 or 2 when the Trainer will shard with FSDP, else None."""
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    if plugin_args:
        return int(plugin_args.get("fsdp_version", 1))
    if _env_true("ACCELERATE_USE_FSDP"):
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


def check_distributed_setup(args: Any, optim_name: str) -> None:
    """Raise a ValueError for a setup in which ``optim_name`` would silently not run or compute wrong values."""
    config = deepspeed_config(args)
    if config and "optimizer" in config:
        kind = config["optimizer"].get("type", "?") if isinstance(config["optimizer"], dict) else "?"
        raise ValueError(
            f"optim={optim_name!r} was asked for, but the DeepSpeed config has its own \"optimizer\" section "
            f"(type {kind!r}), which DeepSpeed would use instead, silently. Remove the \"optimizer\" section from "
            "the DeepSpeed config (keep \"zero_optimization\"; a \"scheduler\" section is fine) so that DeepSpeed "
            "uses the Trainer's optimizer.")
    if fsdp_version(args) == 1:
        raise ValueError(
            f"optim={optim_name!r} does not support FSDP1: its use_orig_params views are 1-D slices of a flat "
            "parameter, so per-tensor alpha and mask ratios cannot be computed. Use FSDP2 "
            "(fsdp_config: {\"version\": 2}, or fsdp_version: 2 in the accelerate config).")


def one_group_per_tensor(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Split named param groups into one group per tensor for DeepSpeed ZeRO.

    Each new group keeps its parent's options and ``name`` (statistics of groups sharing a name are reported
    together), holds one parameter with its ``param_names`` entry, and records ``whole_numel`` so the optimizer
    can add the local sums of the tensor's flat partitions over the data-parallel group.
    """
    split = []
    for group in groups:
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ValueError("one_group_per_tensor needs groups with a 'param_names' entry per parameter")
        options = {key: value for key, value in group.items() if key not in ("params", "param_names")}
        for name, param in zip(names, group["params"]):
            # under ZeRO-3's zero.Init (accelerate's zero3_init_flag) the parameter is already an empty
            # placeholder: its real size is ds_numel
            whole_numel = int(getattr(param, "ds_numel", param.numel()))
            split.append({**options, "params": [param], "param_names": [name], "whole_numel": whole_numel})
    return split


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")
