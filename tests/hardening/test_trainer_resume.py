"""Through the Trainer: a resume with other ``optim`` / ``optim_args`` is a clear error unless adopted, and a bad
``optim_args`` fails when ``TrainingArguments`` is built."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_DISABLED", "true")

from transformers import Trainer, TrainingArguments  # noqa: E402

import hf_alphaadam  # noqa: E402,F401  (registers optim="alphaadam", ...)
from hf_alphaadam.trainer.optim_args import OptimArgsError  # noqa: E402
from _tiny_trainer import RandomTokens, tiny_llama  # noqa: E402


def trainer(output_dir, max_steps: int, **overrides) -> Trainer:
    args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, max_steps=max_steps, save_steps=2,
                             per_device_train_batch_size=4, report_to=[], disable_tqdm=True, seed=0,
                             dataloader_num_workers=0, logging_steps=1, **{"optim": "alphaadam", **overrides})
    return Trainer(model=tiny_llama(layers=1), args=args, train_dataset=RandomTokens(32))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An AlphaAdam run's checkpoint at step 2."""
    output = tmp_path_factory.mktemp("run")
    trainer(output, max_steps=2).train()
    path = output / "checkpoint-2"
    assert (path / "optimizer.pt").is_file()
    return path


@pytest.mark.parametrize("overrides, difference", [
    (dict(optim_args="mask=sync"), r"param group 'decay': mask 'async' \(saved\) -> 'sync' \(now\)"),
    (dict(optim="cautious_adamw"), r"mask 'async' \(saved\) -> 'sync' \(now\).*alpha 'norm' \(saved\) -> 'count'"),
    (dict(optim_args="alpha_max=1"), r"alpha_max None \(saved\) -> 1.0 \(now\)"),
])
def test_resume_with_other_settings_is_a_clear_error(checkpoint, tmp_path, overrides, difference):
    resumed = trainer(tmp_path, max_steps=4, **overrides)
    with pytest.raises(ValueError, match=difference + r".*adopt_changed_settings=true"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_resume_with_another_optimizer_kind_is_refused(checkpoint, tmp_path):
    resumed = trainer(tmp_path, max_steps=4, optim="adapm", optim_args="adopt_changed_settings=true,policy=full")
    with pytest.raises(ValueError, match="written by AlphaAdam, but this optimizer is a AdaPM"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_resume_with_adopted_settings_continues_with_them(checkpoint, tmp_path):
    resumed = trainer(tmp_path, max_steps=4, optim_args="mask=sync,alpha_max=1,adopt_changed_settings=true")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    optimizer = resumed.optimizer.optimizer  # accelerate's wrapper -> AlphaAdam
    assert {(g["mask"], g["alpha_max"]) for g in optimizer.param_groups} == {("sync", 1.0)}
    assert all(float(s["step"]) == 4 for s in optimizer.state.values())  # the saved moments went on


def test_resume_with_the_same_settings_needs_nothing(checkpoint, tmp_path):
    resumed = trainer(tmp_path, max_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3


@pytest.mark.parametrize("optim_args, message", [
    ("mask=snyc", r"mask='snyc' is not allowed"),
    ("alpah_max=2", r"unknown key 'alpah_max' \(did you mean 'alpha_max'\?\)"),
    ("   ", r"optim_args='   ' is blank"),
])
def test_bad_optim_args_fail_when_the_training_arguments_are_built(tmp_path, optim_args, message):
    with pytest.raises(OptimArgsError, match=message):
        TrainingArguments(output_dir=str(tmp_path), optim="alphaadam", optim_args=optim_args, use_cpu=True,
                          report_to=[])
    assert issubclass(OptimArgsError, ValueError)
