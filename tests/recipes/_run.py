"""Running the recipe scripts from the tests, as a user would: a subprocess from the repository root."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny import DATA, ROOT

RECIPES = ROOT / "recipes"
CONFIGS = RECIPES / "configs"
__all__ = ["DATA", "ROOT", "RECIPES", "CONFIGS", "run_recipe", "torchrun", "trainer_state", "alpha_entries",
           "assert_resumed"]


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "info", "DISABLE_TQDM": "0", **(extra or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_recipe(recipe: str, config: str, *args: str, launcher: list[str] | None = None, env: dict | None = None,
               timeout: int = 600, expect_failure: bool = False) -> subprocess.CompletedProcess:
    """`python recipes/<recipe> recipes/configs/<config> args...` (or under `launcher`) from the repository root."""
    command = [*(launcher or [sys.executable]), str(RECIPES / recipe), str(CONFIGS / config), *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, env=_env(env), capture_output=True, text=True, timeout=timeout)
    if expect_failure:
        assert result.returncode != 0, f"{' '.join(command)} should have failed"
    elif result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}\n"
                    f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-8000:]}")
    return result


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port())]


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def alpha_entries(log_history: list[dict]) -> list[dict]:
    """The training log entries that carry the monitor's keys (alpha/<group>/mean|min|max, mask_ratio/<group>)."""
    return [e for e in log_history if any(k.startswith("alpha/") and k.endswith("/mean") for k in e)
            and any(k.startswith("mask_ratio/") for k in e)]


def assert_resumed(output: str, step: int = 2) -> None:
    """The Trainer's info log (TRANSFORMERS_VERBOSITY=info) says it restored the state of `step`."""
    assert re.search(rf"Resuming training from checkpoint with epoch \d+ and global step {step}\b", output), (
        "the second run did not resume from the checkpoint")
