"""Small real-data tasks for optimizer tests (no transformers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHAKESPEARE = Path(__file__).resolve().parents[2] / "data" / "tinyshakespeare" / "input.txt"  # in-repository excerpt


def _real_text() -> str:
    """The first 200,000 characters of Tiny Shakespeare."""
    return SHAKESPEARE.read_text(encoding="utf-8")[:200_000]


class CharTask:
    """Next-character prediction from the previous ``context`` characters of real text."""

    def __init__(self, context: int = 8) -> None:
        text = _real_text()
        chars = sorted(set(text))
        self.vocab = len(chars)
        index = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([index[c] for c in text], dtype=torch.long)
        windows = data.unfold(0, context + 1, 1)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(windows.shape[0], generator=generator)
        self.train = windows[order[:20_000]]
        self.valid = windows[order[20_000:24_000]]
        self.context = context

    def model(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Embedding(self.vocab, 16),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * self.context, 128),
            torch.nn.GELU(),
            torch.nn.LayerNorm(128),
            torch.nn.Linear(128, self.vocab),
        ).to(dtype)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.float(), batch[:, -1])

    def batches(self, steps: int, batch_size: int = 64, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            yield self.train[torch.randint(0, self.train.shape[0], (batch_size,), generator=generator)]


@pytest.fixture(scope="session")
def char_task() -> CharTask:
    return CharTask()
