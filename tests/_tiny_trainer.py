"""A tiny Llama and random-token data for Trainer tests (importable from every test folder: ``tests/`` is on
``sys.path`` through its conftest)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


class RandomTokens(torch.utils.data.Dataset):
    """``count`` sequences of ``length`` random token ids below 128, as ``input_ids`` and ``labels``."""

    def __init__(self, count: int = 64, length: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, 128, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    """A seeded Llama with vocabulary 128, hidden size 32 and ``layers`` layers."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)
