"""AlphaMonitorCallback in a real Trainer: keys in log_history and TensorBoard, per-tensor names, warnings, and
when statistics() is read.

A tiny random Llama (hidden 32, 2 layers, vocab 128) trains for 6 steps on random tokens on the CPU, logging every
2 steps, so each run takes about a second.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.integrations import TensorBoardCallback  # noqa: E402

import hf_alphaadam  # noqa: E402
from hf_alphaadam import AlphaAdam, AlphaMonitorCallback  # noqa: E402
from hf_alphaadam.trainer.callback import find_statistics_optimizer  # noqa: E402
from _tiny_trainer import RandomTokens, tiny_llama  # noqa: E402

CALLBACK_LOGGER = "hf_alphaadam.trainer.callback"
LOGGING_STEPS = 2
MAX_STEPS = 6
LOG_STEPS = [2, 4, 6]
GROUPS = ("decay", "no_decay")


def named_alphaadam(model: torch.nn.Module, **kwargs) -> AlphaAdam:
    """AlphaAdam with the Trainer plugin's layout: groups "decay" (matrices) and "no_decay", with param_names."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [(name, p) for name, p in named if p.ndim >= 2]
    no_decay = [(name, p) for name, p in named if p.ndim < 2]
    return AlphaAdam([
        {"name": "decay", "params": [p for _, p in decay], "param_names": [n for n, _ in decay]},
        {"name": "no_decay", "params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay],
         "weight_decay": 0.0},
    ], lr=1e-3, **kwargs)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    args = dict(output_dir=str(tmp_path / "out"), use_cpu=True, logging_steps=LOGGING_STEPS, max_steps=MAX_STEPS,
                per_device_train_batch_size=4, report_to=["tensorboard"], save_strategy="no", disable_tqdm=True,
                seed=0, dataloader_num_workers=0)
    args.update(overrides)
    return TrainingArguments(**args)


@pytest.fixture
def tb_dir(tmp_path, monkeypatch):
    """Where the TensorBoard callback writes (transformers 5 reads it from TENSORBOARD_LOGGING_DIR)."""
    path = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(path))
    return path


def alpha_keys(entry: dict) -> set[str]:
    return {key for key in entry if key.startswith(("alpha", "mask_ratio"))}


def train_logs(trainer: Trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def run(tmp_path, callback=None, named_groups=True, **overrides) -> Trainer:
    """Train 6 steps; ``named_groups``: pass a "decay"/"no_decay" AlphaAdam, else let ``args.optim`` build one."""
    model = tiny_llama()
    optimizers = (named_alphaadam(model), None) if named_groups else (None, None)
    trainer = Trainer(model=model, args=training_args(tmp_path, **overrides), train_dataset=RandomTokens(),
                      optimizers=optimizers, callbacks=None if callback is None else [callback])
    trainer.train()
    return trainer


def test_group_statistics_reach_log_history(tmp_path, tb_dir):
    callback = AlphaMonitorCallback()
    trainer = run(tmp_path, callback)

    logs = train_logs(trainer)
    assert [entry["step"] for entry in logs] == LOG_STEPS
    expected = {f"alpha/{group}/{stat}" for group in GROUPS for stat in ("mean", "min", "max")}
    expected |= {f"mask_ratio/{group}" for group in GROUPS}
    for entry in logs:
        assert alpha_keys(entry) == expected
        for group in GROUPS:
            mean, low, high = (entry[f"alpha/{group}/{stat}"] for stat in ("mean", "min", "max"))
            assert 1.0 <= low <= mean <= high < 100.0  # alpha="norm": ||u|| / ||phi u|| >= 1
            assert 0.0 < entry[f"mask_ratio/{group}"] <= 1.0
    # the end-of-training summary is not a training log: no (stale) values there
    summary = trainer.state.log_history[-1]
    assert "train_loss" in summary and not alpha_keys(summary)
    # the callback moved itself ahead of the reporting callbacks
    assert trainer.callback_handler.callbacks[0] is callback


def test_group_statistics_reach_tensorboard(tmp_path, tb_dir):
    trainer = run(tmp_path, AlphaMonitorCallback())

    scalars = read_scalars(tb_dir)
    logs = {entry["step"]: entry for entry in train_logs(trainer)}
    for key in ("alpha/decay/mean", "alpha/decay/min", "alpha/decay/max", "mask_ratio/decay",
                "alpha/no_decay/mean", "mask_ratio/no_decay"):
        tag = "train/" + key  # TensorBoardCallback prefixes training keys with "train/"
        assert tag in scalars, sorted(scalars)
        assert [step for step, _ in scalars[tag]] == LOG_STEPS
        for step, value in scalars[tag]:
            assert value == pytest.approx(logs[step][key], rel=1e-6)


def test_per_tensor_keys_are_parameter_names(tmp_path, tb_dir):
    trainer = run(tmp_path, AlphaMonitorCallback(per_tensor=True))

    names = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    for entry in train_logs(trainer):
        assert {key.removeprefix("alpha_tensor/") for key in entry if key.startswith("alpha_tensor/")} == set(names)
        assert {key.removeprefix("mask_ratio_tensor/") for key in entry
                if key.startswith("mask_ratio_tensor/")} == set(names)
        for name in names:
            assert entry[f"alpha_tensor/{name}"] >= 1.0
            assert 0.0 <= entry[f"mask_ratio_tensor/{name}"] <= 1.0
        # the group summary agrees with its tensors
        decay = [entry[f"alpha_tensor/{n}"] for n, p in trainer.model.named_parameters() if p.ndim >= 2]
        assert entry["alpha/decay/max"] == pytest.approx(max(decay))
        assert entry["alpha/decay/mean"] == pytest.approx(sum(decay) / len(decay))
    assert "train/alpha_tensor/model.layers.0.self_attn.q_proj.weight" in read_scalars(tb_dir)


def test_without_statistics_warns_once_and_adds_nothing(tmp_path, tb_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        trainer = run(tmp_path, AlphaMonitorCallback(), named_groups=False, optim="adamw_torch")

    warnings = [r for r in caplog.records if r.name == CALLBACK_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "statistics()" in warnings[0].getMessage() and "AdamW" in warnings[0].getMessage()
    assert len(train_logs(trainer)) == len(LOG_STEPS)
    assert not any(alpha_keys(entry) for entry in trainer.state.log_history)


def test_statistics_read_only_on_training_logging_steps(tmp_path, tb_dir):
    """One statistics() call per training log: none on other steps, none for eval logs or the final summary,
    also with gradient accumulation."""
    model = tiny_llama()
    optimizer = named_alphaadam(model)
    args = training_args(tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=2,
                         eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=4)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), eval_dataset=RandomTokens(8, seed=1),
                      optimizers=(optimizer, None), callbacks=[AlphaMonitorCallback()])
    calls = []
    read = optimizer.statistics

    def spy(*a, **k):
        calls.append(trainer.state.global_step)
        return read(*a, **k)

    optimizer.statistics = spy
    trainer.train()

    assert calls == LOG_STEPS
    eval_logs = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in eval_logs] == [3, 6]
    assert not any(alpha_keys(entry) for entry in eval_logs)
    assert all("alpha/decay/mean" in entry for entry in train_logs(trainer))


def test_no_stale_values_for_a_second_log_at_the_same_step():
    """Unit level: a log without "loss", or a second one at the same global step, gets nothing."""
    model = torch.nn.Linear(4, 3)
    optimizer = AlphaAdam(model.parameters())
    model(torch.randn(2, 4)).square().sum().backward()
    optimizer.step()
    callback = AlphaMonitorCallback()
    state = SimpleNamespace(global_step=5, log_history=[], is_world_process_zero=True)

    def log(logs):
        state.log_history.append({**logs, "step": state.global_step})
        callback.on_log(None, state, None, logs=logs, optimizer=optimizer)
        return state.log_history[-1]

    assert "alpha/group0/mean" in log({"loss": 1.0})
    assert not alpha_keys(log({"loss": 1.0}))          # same step again: the optimizer has not stepped
    assert not alpha_keys(log({"eval_loss": 1.0}))     # not a training log
    state.global_step = 6
    assert "mask_ratio/group0" in log({"loss": 1.0})


def test_finds_statistics_through_wrappers():
    from accelerate.optimizer import AcceleratedOptimizer

    optimizer = AlphaAdam(torch.nn.Linear(2, 2).parameters())
    assert find_statistics_optimizer(optimizer) is optimizer
    assert find_statistics_optimizer(AcceleratedOptimizer(optimizer)) is optimizer
    # DeepSpeed: accelerate's DeepSpeedOptimizerWrapper -> ZeRO optimizer -> the torch optimizer
    deepspeed_like = SimpleNamespace(optimizer=SimpleNamespace(optimizer=optimizer))
    assert find_statistics_optimizer(deepspeed_like) is optimizer
    assert find_statistics_optimizer(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())) is None
    assert find_statistics_optimizer(None) is None
    loop = SimpleNamespace()
    loop.optimizer = loop
    assert find_statistics_optimizer(loop) is None


def test_left_behind_the_reporting_callbacks_values_miss_tensorboard(tmp_path, tb_dir, caplog, monkeypatch):
    """The trap the automatic move solves: if the callback cannot move itself, it says so, its values still reach
    log_history but not TensorBoard."""
    monkeypatch.setattr(AlphaMonitorCallback, "_calling_handler", lambda self: None)
    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        trainer = run(tmp_path, AlphaMonitorCallback())

    assert any("install(trainer)" in r.getMessage() for r in caplog.records if r.name == CALLBACK_LOGGER)
    assert all("alpha/decay/mean" in entry for entry in train_logs(trainer))
    scalars = read_scalars(tb_dir)
    assert "train/loss" in scalars and not any(tag.startswith("train/alpha/") for tag in scalars)


def test_install_puts_the_callback_first(tmp_path, tb_dir, caplog, monkeypatch):
    monkeypatch.setattr(AlphaMonitorCallback, "_calling_handler", lambda self: None)  # only install() moves it
    model = tiny_llama()
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=RandomTokens(),
                      optimizers=(named_alphaadam(model), None), callbacks=[AlphaMonitorCallback()])
    callback = AlphaMonitorCallback().install(trainer)
    callbacks = trainer.callback_handler.callbacks
    assert callbacks[0] is callback
    assert sum(isinstance(cb, AlphaMonitorCallback) for cb in callbacks) == 1  # the first one was replaced
    assert any(isinstance(cb, TensorBoardCallback) for cb in callbacks)

    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        trainer.train()
    assert not [r for r in caplog.records if r.name == CALLBACK_LOGGER]
    scalars = read_scalars(tb_dir)
    assert [step for step, _ in scalars["train/alpha/decay/mean"]] == LOG_STEPS


def test_add_callback_after_construction(tmp_path, tb_dir):
    model = tiny_llama()
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=RandomTokens(),
                      optimizers=(named_alphaadam(model), None))
    trainer.add_callback(AlphaMonitorCallback)  # a class works too: the handler instantiates it
    trainer.train()
    assert isinstance(trainer.callback_handler.callbacks[0], AlphaMonitorCallback)
    assert "train/mask_ratio/no_decay" in read_scalars(tb_dir)


def _alphaadam_registered() -> bool:
    try:
        TrainingArguments(output_dir="unused", optim="alphaadam", use_cpu=True, report_to="none")
    except (ValueError, KeyError):
        return False
    return True


@pytest.mark.skipif(not _alphaadam_registered(), reason="optim='alphaadam' is not registered (trainer/registry.py)")
def test_with_optim_alphaadam(tmp_path, tb_dir):
    trainer = run(tmp_path, AlphaMonitorCallback(per_tensor=True), named_groups=False, optim="alphaadam",
                  weight_decay=0.01)  # with weight_decay=0 the registry names both groups "no_decay"

    assert find_statistics_optimizer(trainer.optimizer) is not None
    scalars = read_scalars(tb_dir)
    names = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    for entry in train_logs(trainer):
        for group in GROUPS:
            assert entry[f"alpha/{group}/mean"] >= 1.0
            assert 0.0 < entry[f"mask_ratio/{group}"] <= 1.0
            assert f"train/alpha/{group}/mean" in scalars
        assert all(f"alpha_tensor/{name}" in entry for name in names)


def test_exported_from_the_package():
    assert hf_alphaadam.AlphaMonitorCallback is AlphaMonitorCallback
    assert callable(hf_alphaadam.plot_alpha)


def test_non_finite_statistics_are_logged_as_they_are_with_one_warning(caplog):
    """A NaN update: alpha NaN and nonfinite/<group> in the logs, and one warning the first time only."""
    model = torch.nn.Linear(4, 3)
    optimizer = AlphaAdam(model.parameters())
    callback = AlphaMonitorCallback()
    state = SimpleNamespace(global_step=0, log_history=[], is_world_process_zero=True)

    def step_and_log(bad: bool) -> dict:
        model.zero_grad()
        model(torch.randn(2, 4)).square().sum().backward()
        if bad:
            model.weight.grad[0, 0] = float("nan")
        optimizer.step()
        state.global_step += 1
        logs = {"loss": 1.0}
        state.log_history.append({**logs, "step": state.global_step})
        callback.on_log(None, state, None, logs=logs, optimizer=optimizer)
        return logs

    with caplog.at_level(logging.WARNING, logger=CALLBACK_LOGGER):
        healthy = step_and_log(bad=False)
        assert healthy["nonfinite/group0"] == 0 and healthy["alpha/group0/mean"] == healthy["alpha/group0/mean"]
        assert not caplog.records
        sick = step_and_log(bad=True)
        assert sick["nonfinite/group0"] == 1
        assert sick["alpha/group0/mean"] != sick["alpha/group0/mean"]  # NaN, not the guarded 1
        assert state.log_history[-1]["nonfinite/group0"] == 1
        step_and_log(bad=True)
    warnings = [r for r in caplog.records if "non-finite optimizer statistics" in r.getMessage()]
    assert len(warnings) == 1 and "nonfinite/group0=1" in warnings[0].getMessage()


def test_zero_element_parameters_leave_the_logged_mask_ratio_finite():
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    weight = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = AlphaAdam([weight, empty])
    weight.grad, empty.grad = torch.ones(3, 3), torch.zeros(0, 3)
    optimizer.step()
    callback = AlphaMonitorCallback()
    state = SimpleNamespace(global_step=1, log_history=[{"loss": 1.0, "step": 1}], is_world_process_zero=True)
    logs = {"loss": 1.0}
    callback.on_log(None, state, None, logs=logs, optimizer=optimizer)
    assert logs["mask_ratio/group0"] == 1.0 and logs["nonfinite/group0"] == 0
