"""AdaPM, AdaDiag (and their variants) through the Trainer by name, with typed optim_args."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import hf_alphaadam
from hf_alphaadam import AdaDiag, AdaPM, AlphaMonitorCallback
from hf_alphaadam.trainer.optim_args import OptimArgsError


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.tokens = (torch.randint(0, 64, (32, 1), generator=generator) + torch.arange(16)) % 64

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


@pytest.mark.parametrize("name,optim_args,cls,check", [
    ("adapm", "rank=2,mask=async,alpha=norm,none_modules=embed_tokens|o_proj", AdaPM,
     lambda group: group["rank"] == 2 and group["second_moment"] == "adam" and group["mask"] == "async"),
    ("adapm_mini", "rank=2,head_dim=8,tensor_threads=2", AdaPM, lambda group: group["second_moment"] == "mini"),
    ("adadiag", "update_freq=2,mask=async,alpha=norm", AdaDiag,
     lambda group: group["update_freq"] == 2 and group["two_sided"] is False),
    ("adadiag_pp", "update_freq=3,moment_space=original", AdaDiag,
     lambda group: group["two_sided"] is True and group["moment_space"] == "original"),
])
def test_trains_by_name(tmp_path, name, optim_args, cls, check):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    args = TrainingArguments(tmp_path, optim=name, optim_args=optim_args, learning_rate=3e-3, weight_decay=0.01,
                             max_steps=6, logging_steps=2, per_device_train_batch_size=8, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[AlphaMonitorCallback()])
    trainer.train()
    optimizer = trainer.optimizer.optimizer
    assert isinstance(optimizer, cls)
    assert all(check(group) for group in optimizer.param_groups)
    assert getattr(optimizer, "tensor_threads", None) == (2 if "tensor_threads=2" in optim_args else None)
    assert {group["name"] for group in optimizer.param_groups} == {"decay", "no_decay"}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    if "mask=async" in optim_args:
        assert any("alpha/decay/mean" in entry for entry in trainer.state.log_history)


@pytest.mark.parametrize("name,optim_args,fragment", [
    ("adapm", "rank=0", "rank='0' is out of range"),
    ("adapm", "none_modules=embed(", "not a valid regular expression"),
    ("adapm", "policy=half", "policy='half' is not allowed"),
    ("adapm", "tensor_threads=0", "tensor_threads='0' is out of range"),
    ("adadiag", "update_freq=0", "update_freq='0' is out of range"),
    ("adadiag_pp", "moment_space=diagonal", "moment_space='diagonal' is not allowed"),
    ("adadiag", "two_sided=true", "two_sided"),
])
def test_bad_optim_args_are_refused(tmp_path, name, optim_args, fragment):
    with pytest.raises(OptimArgsError) as info:  # already while the arguments are built
        TrainingArguments(tmp_path, optim=name, optim_args=optim_args, use_cpu=True, report_to="none")
    assert fragment in str(info.value)
    args = TrainingArguments(tmp_path, optim=name, use_cpu=True, report_to="none")
    args.optim_args = optim_args  # changed afterwards: the handler refuses it too
    with pytest.raises(OptimArgsError) as info:
        hf_alphaadam.optimizer_cls_and_kwargs(args)
    assert fragment in str(info.value)


def test_alphaadam_8bit_by_name(tmp_path):
    pytest.importorskip("bitsandbytes")
    from hf_alphaadam import AlphaAdam

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    args = TrainingArguments(tmp_path, optim="alphaadam_8bit", optim_args="min_8bit_size=4096", learning_rate=3e-3,
                             max_steps=3, per_device_train_batch_size=8, use_cpu=True, report_to="none",
                             save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens())
    trainer.train()
    optimizer = trainer.optimizer.optimizer
    assert isinstance(optimizer, AlphaAdam) and optimizer.param_groups[0]["state_bits"] == 8
    mlp = model.model.layers[0].mlp.up_proj.weight  # 8192 elements: quantized
    assert optimizer.state[mlp]["exp_avg_codes"].dtype == torch.uint8
    assert "exp_avg" in optimizer.state[model.model.embed_tokens.weight]  # embeddings stay 32-bit
