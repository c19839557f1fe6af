"""A damaged cached native library (``$HF_ALPHAADAM_CACHE/alphaadam_cpu_*.so``) is rebuilt, or the step falls back
with one warning; it is never loaded (a truncated library killed the process with SIGBUS when mapped).

Each run is a fresh process with its own cache directory, so that the library is looked up and loaded anew.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_alphaadam.optim._native import _fingerprint, _record_path, _verified

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler"),
              pytest.mark.slow]  # a fresh process per run: ~3 s of imports each

# one AlphaAdam step on fp32 CPU tensors (the native kernel's case), compared with the reference loop
STEP = textwrap.dedent("""
    import logging, sys, torch
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from hf_alphaadam import AlphaAdam
    from hf_alphaadam.optim import _native
    results = []
    for foreach in (None, False):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 300).reshape(20, 15))
        optimizer = AlphaAdam([p], lr=1e-2, foreach=foreach)
        for step in range(3):
            p.grad = torch.cos(torch.arange(300.0) * (step + 1)).reshape(20, 15)
            optimizer.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    print("NATIVE", _native.available())
""")


def run_step(cache: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_ALPHAADAM_CACHE": str(cache), "HF_ALPHAADAM_NATIVE": "1", **env}
    return subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, timeout=300, env=environment)


def library(cache: Path) -> Path:
    (path,) = cache.glob("alphaadam_cpu_*.so")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A cache directory holding a freshly built, recorded library."""
    cache = tmp_path_factory.mktemp("cache")
    result = run_step(cache)
    assert result.returncode == 0, result.stderr
    assert "NATIVE True" in result.stdout
    path = library(cache)
    assert Path(f"{path}.sha256").read_text().split()[0] == str(path.stat().st_size)
    return cache


def damaged_copy(built: Path, tmp_path: Path, damage) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    path = library(cache)
    damage(path)
    return cache


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def replace_with_foreign_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def test_verification_needs_the_record_and_the_same_bytes(tmp_path):
    path = tmp_path / "library.so"
    path.write_bytes(b"\x7fELF" + bytes(100))
    assert not _verified(path)  # no record (a library built before records existed): rebuilt
    _record_path(path).write_text(_fingerprint(path))
    assert _verified(path)
    path.write_bytes(b"\x7fELF" + bytes(99) + b"\x01")  # same size, other bytes
    assert not _verified(path)


@pytest.mark.parametrize("damage", [truncate, replace_with_foreign_bytes], ids=["truncated", "foreign"])
def test_a_damaged_library_is_rebuilt_with_a_warning(built, tmp_path, damage):
    cache = damaged_copy(built, tmp_path, damage)
    result = run_step(cache)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "NATIVE True" in result.stdout
    assert result.stderr.count("does not match its build record") == 1, result.stderr
    path = library(cache)
    assert _verified(path)


def test_a_damaged_library_that_cannot_be_rebuilt_falls_back_with_one_warning(built, tmp_path):
    cache = damaged_copy(built, tmp_path, truncate)
    # a "compiler" that reports the real version (so the cache key is the same) but cannot build
    compiler = tmp_path / "broken-cc"
    compiler.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then exec {shutil.which("cc")} --version; fi\nexit 1\n')
    compiler.chmod(0o755)
    result = run_step(cache, CC=str(compiler))
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "NATIVE False" in result.stdout  # the step took the other paths, with the same results
    assert result.stderr.count("native AlphaAdam kernel is unavailable") == 1, result.stderr
