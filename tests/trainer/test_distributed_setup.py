"""The plugin's checks of the distributed setup (no processes launched here)."""

from __future__ import annotations

import json

import pytest
import torch

from hf_alphaadam import AlphaAdam
from hf_alphaadam.trainer.checkpoint import last_complete_checkpoint
from hf_alphaadam.trainer.distributed import check_distributed_setup, fsdp_version, one_group_per_tensor


class Args:
    """A stand-in for TrainingArguments with only the attributes the checks read."""

    def __init__(self, deepspeed_config=None, fsdp=None):
        self.hf_deepspeed_config = type("HfConfig", (), {"config": deepspeed_config})() if deepspeed_config else None
        self.deepspeed_plugin = None
        self.fsdp_plugin_args = {"fsdp_version": fsdp} if fsdp else None


def test_deepspeed_optimizer_section_is_refused_with_what_to_remove(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    args = Args({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 2}})
    with pytest.raises(ValueError, match=r"\"optimizer\" section \(type 'AdamW'\).*Remove the \"optimizer\""):
        check_distributed_setup(args, "alphaadam")
    check_distributed_setup(Args({"zero_optimization": {"stage": 2}}), "alphaadam")  # no optimizer section: fine


def test_deepspeed_config_from_accelerate_launch_environment(monkeypatch, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    with pytest.raises(ValueError, match="DeepSpeed config has its own"):
        check_distributed_setup(Args(), "alphaadam")


def test_fsdp1_refused_fsdp2_accepted(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(ValueError, match="does not support FSDP1.*Use FSDP2"):
        check_distributed_setup(Args(fsdp=1), "alphaadam")
    check_distributed_setup(Args(fsdp=2), "alphaadam")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp_version(Args()) == 2


def test_one_group_per_tensor_keeps_options_names_and_counts():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    named = list(model.named_parameters())
    groups = [{"params": [p for _, p in named[::2]], "param_names": [n for n, _ in named[::2]],
               "weight_decay": 0.1, "name": "decay"},
              {"params": [p for _, p in named[1::2]], "param_names": [n for n, _ in named[1::2]],
               "weight_decay": 0.0, "name": "no_decay"}]
    split = one_group_per_tensor(groups)
    assert [g["param_names"] for g in split] == [["0.weight"], ["1.weight"], ["0.bias"], ["1.bias"]]
    assert [g["whole_numel"] for g in split] == [12, 8, 4, 2]
    assert [g["name"] for g in split] == ["decay", "decay", "no_decay", "no_decay"]
    optimizer = AlphaAdam(split, lr=1e-2)
    model(torch.randn(5, 3)).sum().backward()
    with pytest.raises(RuntimeError, match="initialized"):  # whole_numel groups need torch.distributed
        optimizer.step()
    with pytest.raises(ValueError, match="param_names"):
        one_group_per_tensor([{"params": [named[0][1]]}])


def test_one_group_per_tensor_uses_zero3_placeholder_size():
    placeholder = torch.nn.Parameter(torch.empty(0))  # what zero.Init leaves in the module
    placeholder.ds_numel = 4096
    (group,) = one_group_per_tensor([{"params": [placeholder], "param_names": ["w"]}])
    assert group["whole_numel"] == 4096


def test_last_complete_checkpoint_skips_partial_directories(tmp_path):
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
    for step, complete in [(2, True), (4, True), (6, False)]:
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        if complete:
            (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text("{\"global_st")  # killed while writing
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
