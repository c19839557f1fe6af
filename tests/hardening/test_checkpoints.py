"""``last_complete_checkpoint`` opens every model / optimizer / scheduler file and skips damaged checkpoints; the
recipes' ``--resume_from_checkpoint true`` uses it."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from hf_alphaadam.trainer.checkpoint import last_complete_checkpoint, unreadable_files

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write_checkpoint(directory: Path, step: int, state: bool = True) -> Path:
    """A checkpoint with the Trainer's files: model.safetensors, optimizer.pt, scheduler.pt, rng_state.pth,
    training_args.bin and (written last) trainer_state.json."""
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.randn(64, 32), "bias": torch.zeros(32)}, str(path / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.randn(64, 32)}}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"python": 1}, path / "rng_state.pth")
    torch.save({"args": 1}, path / "training_args.bin")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_a_complete_checkpoint_opens(tmp_path):
    path = write_checkpoint(tmp_path, 4)
    assert unreadable_files(str(path)) == {}
    assert last_complete_checkpoint(str(tmp_path)) == str(path)


@pytest.mark.parametrize("file, damage", [
    ("optimizer.pt", cut),
    ("scheduler.pt", lambda path: path.write_bytes(b"")),
    ("model.safetensors", cut),
    ("model.safetensors", lambda path: cut(path, 0.0001)),  # inside the header
    ("rng_state.pth", lambda path: path.write_bytes(b"not a zip archive")),
])
def test_a_damaged_file_makes_the_checkpoint_skipped_with_a_warning(tmp_path, caplog, file, damage):
    good = write_checkpoint(tmp_path, 2)
    bad = write_checkpoint(tmp_path, 4)
    damage(bad / file)
    assert file in unreadable_files(str(bad))
    with caplog.at_level(logging.WARNING, logger="hf_alphaadam.trainer.checkpoint"):
        assert last_complete_checkpoint(str(tmp_path)) == str(good)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "checkpoint-4" in warning and file in warning


def test_a_truncated_optimizer_file_would_have_failed_the_resume(tmp_path):
    """What the check spares the user: torch.load of the cut file fails deep inside the resume."""
    path = write_checkpoint(tmp_path, 2)
    cut(path / "optimizer.pt")
    with pytest.raises((RuntimeError, OSError)):  # "PytorchStreamReader failed reading zip archive" or EINVAL
        torch.load(path / "optimizer.pt", weights_only=True)
    assert last_complete_checkpoint(str(tmp_path)) is None


def test_recipes_resume_from_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """A half-written checkpoint-20 (weights only, no trainer_state.json) no longer makes `true` crash."""
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.delitem(sys.modules, "common", raising=False)  # restored afterwards: other tests patch that module
    from common import checkpoint_to_resume

    good = write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 20, state=False)
    args = SimpleNamespace(resume_from_checkpoint="true", output_dir=str(tmp_path))
    assert checkpoint_to_resume(args) == str(good)
    assert checkpoint_to_resume(SimpleNamespace(resume_from_checkpoint="true", output_dir=str(tmp_path / "no"))) \
        is None
