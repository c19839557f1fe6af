"""AlphaMonitorCallback attached by itself when a Trainer creates one of the package's optimizers
(``hf_alphaadam.trainer.callback.attach_to_calling_trainer``), and its off switch ``HF_ALPHAADAM_MONITOR``."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback

import hf_alphaadam
from hf_alphaadam import AlphaMonitorCallback
from hf_alphaadam.trainer.callback import MONITOR_ENVIRONMENT_VARIABLE

STEPS = 2


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))


class TokenData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.tokens = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def make_trainer(tmp_path, optim: str = "alphaadam", report_to: str = "none", **kwargs) -> Trainer:
    args = TrainingArguments(str(tmp_path), optim=optim, max_steps=STEPS, per_device_train_batch_size=4,
                             logging_steps=1, use_cpu=True, report_to=report_to, save_strategy="no",
                             disable_tqdm=True, learning_rate=1e-3)
    return Trainer(model=tiny_llama(), args=args, train_dataset=TokenData(), **kwargs)


def monitors(trainer: Trainer) -> list[AlphaMonitorCallback]:
    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AlphaMonitorCallback)]


@pytest.fixture(autouse=True)
def monitor_switch_unset(monkeypatch):
    monkeypatch.delenv(MONITOR_ENVIRONMENT_VARIABLE, raising=False)


def test_attached_first_when_the_trainer_creates_the_optimizer_and_logs_alpha(tmp_path):
    trainer = make_trainer(tmp_path, report_to="tensorboard")
    assert monitors(trainer) == []  # nothing before the optimizer exists
    trainer.create_optimizer()
    callbacks = trainer.callback_handler.callbacks
    assert isinstance(callbacks[0], AlphaMonitorCallback) and len(monitors(trainer)) == 1
    assert any(isinstance(cb, TensorBoardCallback) for cb in callbacks[1:])  # the reporting ones come after it
    trainer.train()
    assert len(monitors(trainer)) == 1  # not attached a second time
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == STEPS
    for entry in logs:
        assert {"alpha/decay/mean", "alpha/decay/min", "alpha/decay/max", "mask_ratio/decay",
                "alpha/no_decay/mean", "mask_ratio/no_decay"} <= set(entry)
        assert math.isfinite(entry["alpha/decay/mean"]) and 0.0 <= entry["mask_ratio/decay"] <= 1.0


@pytest.mark.parametrize("given", ["instance", "class", "added"])
def test_not_doubled_when_the_user_passes_one(given, tmp_path):
    mine = AlphaMonitorCallback(per_tensor=True)
    if given == "instance":
        trainer = make_trainer(tmp_path, callbacks=[mine])
    elif given == "class":
        trainer = make_trainer(tmp_path, callbacks=[AlphaMonitorCallback])
    else:
        trainer = make_trainer(tmp_path)
        trainer.add_callback(mine)
    trainer.train()
    (only,) = monitors(trainer)
    if given != "class":
        assert only is mine
        assert any(key.startswith("alpha_tensor/") for key in trainer.state.log_history[0])
    assert trainer.callback_handler.callbacks[0] is only  # moved itself ahead of the reporting callbacks


def test_explicit_optimizer_cls_and_kwargs_gets_it_too(tmp_path):
    trainer = make_trainer(tmp_path, optim="adamw_torch")
    pair = hf_alphaadam.optimizer_cls_and_kwargs(trainer.args, trainer.model, name="cautious_adamw")
    trainer = make_trainer(tmp_path, optim="adamw_torch", optimizer_cls_and_kwargs=pair)
    trainer.create_optimizer()
    assert len(monitors(trainer)) == 1


def test_not_attached_to_other_optimizers_or_outside_a_trainer(tmp_path):
    trainer = make_trainer(tmp_path, optim="adamw_torch")
    trainer.create_optimizer()
    assert monitors(trainer) == []
    cls, kwargs = hf_alphaadam.optimizer_cls_and_kwargs(trainer.args, trainer.model, name="alphaadam")
    optimizer = cls(trainer.model.parameters(), **kwargs)  # built outside a Trainer: nothing to attach to
    assert type(optimizer).__name__ == "AlphaAdam" and monitors(trainer) == []


def test_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv(MONITOR_ENVIRONMENT_VARIABLE, "0")
    trainer = make_trainer(tmp_path)
    trainer.train()
    assert monitors(trainer) == []
    assert not any(key.startswith("alpha/") for entry in trainer.state.log_history for key in entry)
    monkeypatch.setenv(MONITOR_ENVIRONMENT_VARIABLE, "1")
    trainer = make_trainer(tmp_path)
    trainer.create_optimizer()
    assert len(monitors(trainer)) == 1


def test_a_bad_switch_value_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MONITOR_ENVIRONMENT_VARIABLE, "no")
    trainer = make_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"HF_ALPHAADAM_MONITOR='no' is not allowed: use 1 .* or 0"):
        trainer.create_optimizer()
