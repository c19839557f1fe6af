"""AlphaAdam on PEFT LoRA adapters through ``optim="alphaadam"``: only the adapters are optimized and monitored.

The tiny random Llama and the test-time BPE tokenizer come from ``tests/conftest.py``. LoRA (r=4) wraps
``q_proj`` / ``v_proj``; after a few steps the base weights must be bit-identical and the adapters moved, and the
per-tensor statistics of ``AlphaMonitorCallback(per_tensor=True)`` must name the ``lora_`` tensors.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("peft")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import hf_alphaadam  # noqa: E402, F401  (registers optim="alphaadam")
from hf_alphaadam import AlphaAdam, AlphaMonitorCallback  # noqa: E402

STEPS = 3


def lora_config() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def training_args(tmp_path, **overrides) -> dict:
    # A high learning rate makes the adapters' change obvious after a few steps.
    args = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-2,
                weight_decay=0.1, optim="alphaadam", logging_steps=1, report_to="none", use_cpu=True, bf16=False,
                save_strategy="no", disable_tqdm=True, seed=0)
    args.update(overrides)
    return args


def unwrap_optimizer(optimizer):
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, AlphaAdam):
        optimizer = optimizer.optimizer
    return optimizer


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def assert_only_adapters_trained(model, optimizer, before: dict[str, torch.Tensor]) -> None:
    optimizer = unwrap_optimizer(optimizer)
    assert isinstance(optimizer, AlphaAdam)
    names = {id(param): name for name, param in model.named_parameters()}
    optimized = [param for group in optimizer.param_groups for param in group["params"]]
    assert optimized
    for param in optimized:
        assert param.requires_grad
        assert "lora_" in names[id(param)], names[id(param)]
    lora_names = {name for name in before if "lora_" in name}
    assert {names[id(param)] for param in optimized} == lora_names  # every adapter tensor, nothing else
    after = dict(model.named_parameters())
    for name, old in before.items():
        if "lora_" in name:
            assert not torch.equal(after[name].detach(), old), f"adapter {name} did not move"
        else:
            assert torch.equal(after[name].detach(), old), f"base weight {name} changed"


def assert_lora_alpha_logged(history: list[dict]) -> None:
    alpha_logs = [entry for entry in history if any(key.startswith("alpha/") for key in entry)]
    assert len(alpha_logs) >= STEPS - 1, history
    last = alpha_logs[-1]
    # per_tensor=True: alpha_tensor/<parameter name> and mask_ratio_tensor/<parameter name> for every tensor
    per_tensor = {key: value for key, value in last.items() if key.startswith("alpha_tensor/")}
    ratios = {key: value for key, value in last.items() if key.startswith("mask_ratio_tensor/")}
    assert per_tensor and ratios, sorted(last)
    # they name adapters only: the frozen base is not optimized, so it has no statistics
    assert all("lora_" in key for key in list(per_tensor) + list(ratios)), sorted(per_tensor)
    assert any("lora_A" in key for key in per_tensor) and any("lora_B" in key for key in per_tensor)
    assert all(math.isfinite(value) and value >= 1.0 - 1e-6 for value in per_tensor.values()), per_tensor
    assert all(0.0 <= value <= 1.0 for value in ratios.values()), ratios
    assert any(key.startswith("alpha/") and key.endswith("/mean") for key in last)  # the group summary too


def lm_dataset(tokenizer, text: str, blocks: int = 16, length: int = 48) -> Dataset:
    ids = tokenizer(text[:20_000])["input_ids"]
    return Dataset.from_dict({"input_ids": [ids[i:i + length] for i in range(0, blocks * length, length)]})


def test_lora_with_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, stdlib_text):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = get_peft_model(base, lora_config())
    # LoRA starts with B = 0, so lora_A's first gradient is exactly zero: a real edge case for the mask and alpha.
    before = snapshot(model)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**training_args(tmp_path)),
        train_dataset=lm_dataset(tiny_tokenizer, stdlib_text),
        data_collator=DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False),
        callbacks=[AlphaMonitorCallback(per_tensor=True)],
    )
    trainer.train()
    assert trainer.state.global_step == STEPS
    assert_only_adapters_trained(model, trainer.optimizer, before)
    assert_lora_alpha_logged(trainer.state.log_history)


def test_lora_with_sft_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, gsm8k_rows):
    """TRL wraps the model itself from ``peft_config``."""
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    dataset = Dataset.from_list([
        {"messages": [{"role": "user", "content": row["question"]},
                      {"role": "assistant", "content": row["answer"]}]}
        for row in gsm8k_rows
    ])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
        args=SFTConfig(**training_args(tmp_path, max_length=64, dataset_num_proc=None)),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
        peft_config=lora_config(),
        callbacks=[AlphaMonitorCallback(per_tensor=True)],
    )
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.global_step == STEPS
    assert_only_adapters_trained(trainer.model, trainer.optimizer, before)
    assert_lora_alpha_logged(trainer.state.log_history)


def test_lora_with_dpo_trainer(tmp_path, tiny_llama_dir, tiny_tokenizer, preference_rows):
    """With LoRA, DPO's reference model is the base with the adapters disabled (no second model)."""
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
        args=DPOConfig(**training_args(tmp_path, max_length=64, dataset_num_proc=None)),
        train_dataset=Dataset.from_list(preference_rows),
        processing_class=tiny_tokenizer,
        peft_config=lora_config(),
        callbacks=[AlphaMonitorCallback(per_tensor=True)],
    )
    assert trainer.ref_model is None
    before = snapshot(trainer.model)
    trainer.train()
    assert_only_adapters_trained(trainer.model, trainer.optimizer, before)
    assert_lora_alpha_logged(trainer.state.log_history)
