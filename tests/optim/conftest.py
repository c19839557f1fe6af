"""Small real-data tasks for optimizer tests (no transformers needed), and a one-process device mesh."""

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

    def train_and_evaluate(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           steps: int) -> tuple[float, float]:
        """The validation loss before and after ``steps`` training steps."""
        with torch.no_grad():
            initial = self.loss(model, self.valid).item()
        for batch in self.batches(steps):
            optimizer.zero_grad()
            self.loss(model, batch).backward()
            optimizer.step()
        with torch.no_grad():
            final = self.loss(model, self.valid).item()
        return initial, final


@pytest.fixture(scope="session")
def char_task() -> CharTask:
    return CharTask()


class OneProcessMesh:
    """DTensor parameters on a 1-process CPU mesh."""

    def __init__(self, tensor_module) -> None:
        self.tensor_module = tensor_module
        self.mesh = tensor_module.init_device_mesh("cpu", (1,))

    def parameter(self, value: torch.Tensor, grad: torch.Tensor, sharded: bool = True) -> torch.nn.Parameter:
        """A DTensor parameter holding ``value``, with gradient ``grad``: sharded on dim 0, or replicated."""
        placement = [self.tensor_module.Shard(0) if sharded else self.tensor_module.Replicate()]
        param = torch.nn.Parameter(self.tensor_module.distribute_tensor(value, self.mesh, placement))
        param.grad = self.tensor_module.distribute_tensor(grad, self.mesh, placement)
        return param


@pytest.fixture
def single_process_mesh(tmp_path):
    """A :class:`OneProcessMesh` in a fresh gloo process group, destroyed afterwards."""
    dist = pytest.importorskip("torch.distributed")
    tensor_module = pytest.importorskip("torch.distributed.tensor")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs a fresh single-process group")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield OneProcessMesh(tensor_module)
    finally:
        dist.destroy_process_group()
