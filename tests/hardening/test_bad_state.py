"""The bad-state table (``_bad_state_cases.py``): mismatched, damaged or foreign optimizer state, bad options.

Every case runs in one subprocess, one after the other: each must end with the expected Python error (type and
message), never with a signal. A crash ends the subprocess; the test then names the case it happened in and runs
the remaining cases in a fresh subprocess, so that one crash does not hide the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).with_name("_bad_state_cases.py")


def _run(names: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, str(RUNNER), *names], capture_output=True, text=True, timeout=600,
                          env=env)


def test_every_bad_state_case_ends_with_a_clear_python_error():
    sys.path.insert(0, str(RUNNER.parent))
    try:
        from _bad_state_cases import CASES
    finally:
        sys.path.pop(0)
    pending, passed, problems = list(CASES), [], []
    while pending:
        result = _run(pending)
        lines = result.stdout.splitlines()
        started = [line.removeprefix("START ") for line in lines if line.startswith("START ")]
        passed += [line.removeprefix("PASS ") for line in lines if line.startswith("PASS ")]
        problems += [line for line in lines if line.startswith("FAIL ")]
        if result.returncode < 0 or (result.returncode not in (0, 1)):
            crashed = started[-1] if started else "(before the first case)"
            problems.append(f"CRASH {crashed}: exit {result.returncode}\n{result.stderr[-2000:]}")
            pending = pending[pending.index(crashed) + 1:] if crashed in pending else []
        else:
            pending = []
    assert not problems, "\n".join(problems)
    assert sorted(passed) == sorted(CASES)


def test_a_single_case_runs_alone():
    """The runner also takes case names (how to re-run one case by hand)."""
    name = "native: smaller moment set into the state"
    result = _run([name])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS {name}" in result.stdout
