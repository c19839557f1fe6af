"""AlphaAdam through ``optim="alphaadam"`` + ``AlphaMonitorCallback`` in transformers' Trainer and TRL's trainers.

A tiny random Llama (hidden 32, 2 layers) and a BPE tokenizer trained at test time (``tests/conftest.py``) train
for a few steps on small real data: GSM8K problems (SFT, GRPO, RLOO with a final-number reward) and HH-RLHF
harmless-base pairs (DPO, Reward, KTO). Each test checks that the Trainer built an AlphaAdam, that the loss
stayed finite, and that alpha / mask-ratio statistics reached ``trainer.state.log_history``.
"""

from __future__ import annotations

import math
import re

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import hf_alphaadam  # noqa: E402, F401  (registers optim="alphaadam")
from hf_alphaadam import AlphaAdam, AlphaMonitorCallback  # noqa: E402

STEPS = 3


def common_args(tmp_path, **overrides) -> dict:
    """Training arguments shared by every trainer: CPU, fp32, no reporting or saving, a log line per step."""
    args = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-3,
                optim="alphaadam", logging_steps=1, report_to="none", use_cpu=True, bf16=False,
                save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0)
    args.update(overrides)
    return args


def trl_args(tmp_path, **overrides) -> dict:
    """TRL configs also default to bf16=True (fails on CPU) and to multi-process dataset preparation."""
    return common_args(tmp_path, dataset_num_proc=None, **overrides)


def unwrap_optimizer(optimizer):
    """The optimizer under accelerate's ``AcceleratedOptimizer`` wrapper."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, AlphaAdam):
        optimizer = optimizer.optimizer
    return optimizer


def assert_alphaadam_trained(trainer, steps: int = STEPS) -> list[dict]:
    """The Trainer used AlphaAdam, took ``steps`` steps with finite losses, and logged alpha and mask ratios."""
    assert isinstance(unwrap_optimizer(trainer.optimizer), AlphaAdam)
    assert trainer.state.global_step == steps
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses), history
    alpha_logs = [entry for entry in history if any(key.startswith("alpha/") for key in entry)]
    assert len(alpha_logs) >= steps - 1, history  # one log line per step (logging_steps=1)
    last = alpha_logs[-1]
    alpha_means = {key: value for key, value in last.items() if key.startswith("alpha/") and key.endswith("/mean")}
    mask_ratios = {key: value for key, value in last.items() if key.startswith("mask_ratio/")}
    assert alpha_means and mask_ratios, last
    assert any("/decay/" in key for key in alpha_means), sorted(last)  # the plugin's group names
    for value in alpha_means.values():
        assert math.isfinite(value) and value >= 1.0 - 1e-6  # ||u|| / ||phi * u|| >= 1
    for value in mask_ratios.values():
        assert 0.0 <= value <= 1.0
    return alpha_logs


def assert_ref_model_not_optimized(trainer) -> None:
    optimized = {id(p) for group in unwrap_optimizer(trainer.optimizer).param_groups for p in group["params"]}
    assert {id(p) for p in trainer.model.parameters() if p.requires_grad} == optimized
    if getattr(trainer, "ref_model", None) is not None:
        assert not optimized & {id(p) for p in trainer.ref_model.parameters()}


def causal_lm(path):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------- transformers


def test_transformers_trainer_causal_lm(tmp_path, tiny_llama_dir, tiny_tokenizer, stdlib_text):
    text = stdlib_text[:20_000]
    ids = tiny_tokenizer(text)["input_ids"]
    blocks = [ids[i:i + 64] for i in range(0, len(ids) - 64, 64)][:32]
    dataset = Dataset.from_dict({"input_ids": blocks})
    trainer = Trainer(
        model=causal_lm(tiny_llama_dir),
        args=TrainingArguments(**common_args(tmp_path, weight_decay=0.1)),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False),
        callbacks=[AlphaMonitorCallback()],
    )
    trainer.train()
    assert_alphaadam_trained(trainer)
    names = {group.get("name") for group in unwrap_optimizer(trainer.optimizer).param_groups}
    assert {"decay", "no_decay"} <= names


# ------------------------------------------------------------------------------------------------------------ TRL


def test_sft_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, gsm8k_rows):
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([
        {"messages": [{"role": "user", "content": row["question"]},
                      {"role": "assistant", "content": row["answer"]}]}
        for row in gsm8k_rows
    ])
    trainer = SFTTrainer(
        model=causal_lm(tiny_llama_dir),
        args=SFTConfig(**trl_args(tmp_path, max_length=64)),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
        callbacks=[AlphaMonitorCallback()],
    )
    trainer.train()
    assert_alphaadam_trained(trainer)


def test_dpo_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, preference_rows):
    from trl import DPOConfig, DPOTrainer

    # The reference model is rebuilt from the policy's config path: the model must come from a saved directory.
    trainer = DPOTrainer(
        model=causal_lm(tiny_llama_dir),
        args=DPOConfig(**trl_args(tmp_path, max_length=64)),
        train_dataset=Dataset.from_list(preference_rows),
        processing_class=tiny_tokenizer,
        callbacks=[AlphaMonitorCallback()],
    )
    assert trainer.ref_model is not None  # built from tiny_llama_dir, frozen: not in the optimizer
    trainer.train()
    assert_alphaadam_trained(trainer)
    assert_ref_model_not_optimized(trainer)
    assert any("rewards/margins" in entry for entry in trainer.state.log_history)


def test_reward_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, preference_rows):
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    dataset = Dataset.from_list([{"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
                                 for row in preference_rows])
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**trl_args(tmp_path, max_length=64)),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
        callbacks=[AlphaMonitorCallback()],
    )
    trainer.train()
    assert_alphaadam_trained(trainer)
    # the new score head is trained with the rest
    optimized = {id(p) for group in unwrap_optimizer(trainer.optimizer).param_groups for p in group["params"]}
    assert id(trainer.model.score.weight) in optimized


def test_kto_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, preference_rows):
    from trl import KTOConfig, KTOTrainer

    # Unpaired binary feedback: the chosen reply labelled desirable, the rejected one undesirable.
    rows = []
    for row in preference_rows:
        rows.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        rows.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    trainer = KTOTrainer(
        model=causal_lm(tiny_llama_dir),
        args=KTOConfig(**trl_args(tmp_path, max_length=64, per_device_train_batch_size=4)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
        callbacks=[AlphaMonitorCallback()],
    )
    assert trainer.ref_model is not None
    trainer.train()
    assert_alphaadam_trained(trainer)
    assert_ref_model_not_optimized(trainer)


def final_number(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the number after ``####``, else the last number in the text."""
    match = re.search(r"####\s*(-?[\d,]*\.?\d+)", text)
    if match is None:
        numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
        if not numbers:
            return None
        value = numbers[-1]
    else:
        value = match.group(1)
    return value.replace(",", "").rstrip(".")



def gsm8k_correctness(completions, answer, **kwargs) -> list[float]:
    """1.0 where the completion's final number equals the reference's ``#### N``, else 0.0."""
    rewards = []
    for completion, reference in zip(completions, answer):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        predicted = final_number(text)
        rewards.append(1.0 if predicted is not None and predicted == final_number(reference) else 0.0)
    return rewards


def digit_share(completions, **kwargs) -> list[float]:
    """Fraction of digits in the completion: a dense shaping reward, so that a random policy's completions get
    different rewards (non-zero advantages, non-zero gradients) even when none of them is correct."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]


def gsm8k_prompts(rows) -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"]}
                              for row in rows])


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_online_rl_trainer(name, tmp_path, tiny_llama_dir, tiny_tokenizer, gsm8k_rows):
    """GRPO and RLOO: 4 sampled completions per GSM8K prompt, rewarded by final-answer correctness."""
    import trl

    config_cls, trainer_cls = {"grpo": (trl.GRPOConfig, trl.GRPOTrainer),
                               "rloo": (trl.RLOOConfig, trl.RLOOTrainer)}[name]
    extra = {"beta": 0.0} if name == "grpo" else {}  # RLOO keeps its default KL term (reference from the path)
    args = config_cls(**common_args(tmp_path, per_device_train_batch_size=4, num_generations=4,
                                 max_completion_length=16, **extra))
    trainer = trainer_cls(
        model=causal_lm(tiny_llama_dir),
        reward_funcs=[gsm8k_correctness, digit_share],
        args=args,
        train_dataset=gsm8k_prompts(gsm8k_rows),
        processing_class=tiny_tokenizer,
        callbacks=[AlphaMonitorCallback()],
    )
    assert (trainer.ref_model is not None) == (name == "rloo")
    trainer.train()
    alpha_logs = assert_alphaadam_trained(trainer)
    assert_ref_model_not_optimized(trainer)
    first = trainer.state.log_history[0]
    assert "rewards/gsm8k_correctness/mean" in first and "rewards/digit_share/mean" in first, first
    assert any(entry.get("grad_norm", 0) > 0 for entry in alpha_logs)  # the policy really received gradients
