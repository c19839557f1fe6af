"""The benchmark suite keeps working: every benchmark's quick mode through the entry point, and the summary table.

``test_quick_run`` runs ``python -m benchmarks run <name> --quick --output-dir <tmp>`` for each benchmark of
``benchmarks.__main__.BENCHMARKS`` in a subprocess (one torch thread, offline) and checks the contract of
``benchmarks/_common.py``: ``<name>_quick.json`` with a ``machine`` entry and a PNG next to it, nothing written as a
full result, and ``summary()`` rows derived from it. They read the data folder named by ``HF_ALPHAADAM_DATA`` (CI
points it at ``../shared/data``), else the repository's small excerpts in ``data/``. These are ``slow`` (30-50 s
each on a loaded 2-core machine, most of it imports). The other tests check ``benchmarks/summarize.py`` on fake benchmarks and fake results.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.__main__ import BENCHMARKS  # noqa: E402
from benchmarks.summarize import (BEGIN, END, ROW_KEYS, SummaryError, import_benchmarks,  # noqa: E402
                                  write_summary)

README = REPO_ROOT / "benchmarks" / "README.md"
RESULTS = REPO_ROOT / "benchmarks" / "results"


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
           "HF_ALPHAADAM_DATA": os.environ.get("HF_ALPHAADAM_DATA") or str(REPO_ROOT / "data")}
    process = subprocess.run([sys.executable, "-m", "benchmarks", "run", name, "--quick", "--output-dir",
                              str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, f"stdout:\n{process.stdout[-4000:]}\nstderr:\n{process.stderr[-4000:]}"

    path = tmp_path / f"{name}_quick.json"
    assert path.is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert (tmp_path / f"{name}_quick.png").is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert not (tmp_path / f"{name}.json").exists(), "a quick run must not write the full results file"
    result = json.loads(path.read_text())
    assert result.get("machine"), "no machine entry"
    assert result.get("quick") is True

    rows = importlib.import_module(f"benchmarks.{name}").summary(result)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(ROW_KEYS) <= set(row), row
        assert all(str(row[key]).strip() for key in ROW_KEYS), row


def test_offline_without_data_is_one_clear_line(tmp_path: Path) -> None:
    """No --data_dir / HF_ALPHAADAM_DATA and no Hub: the run stops with one line that says what to set."""
    env = {key: value for key, value in os.environ.items() if key != "HF_ALPHAADAM_DATA"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    process = subprocess.run([sys.executable, "-m", "benchmarks", "run", "adapm_convergence", "--quick",
                              "--output-dir", str(tmp_path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode != 0 and "Traceback" not in process.stderr, process.stderr[-3000:]
    last = process.stderr.strip().splitlines()[-1]
    assert "karpathy/tiny_shakespeare" in last and "HF_ALPHAADAM_DATA" in last and "--data_dir" in last, last
    assert not list(tmp_path.iterdir())


def test_data_dir_and_quick_output_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data_dir`` sets HF_ALPHAADAM_DATA (worker processes see it); a named folder without the file is an
    error naming both; quick results go to the git-ignored outputs/benchmarks, full ones to benchmarks/results."""
    import argparse

    from benchmarks import _common

    monkeypatch.delenv("HF_ALPHAADAM_DATA", raising=False)
    assert _common.data_dir() is None and _common.data_path("gsm8k/train.jsonl") is None
    parser = _common.add_common_arguments(argparse.ArgumentParser(), "smoke run")
    args = parser.parse_args(["--data_dir", str(tmp_path)])
    assert args.data_dir == tmp_path and os.environ["HF_ALPHAADAM_DATA"] == str(tmp_path)
    with pytest.raises(_common.DataUnavailable, match=r"gsm8k/train\.jsonl not found.*must hold gsm8k/train\.jsonl"):
        _common.data_path("gsm8k/train.jsonl")
    monkeypatch.setenv("HF_ALPHAADAM_DATA", str(REPO_ROOT / "data"))
    assert _common.data_path("gsm8k/train.jsonl").is_file()
    assert len(_common.char_data()[0]) > 100_000

    quick, full = _common.result_path(None, "x", True), _common.result_path(None, "x", False)
    assert quick.parent == REPO_ROOT / "outputs" / "benchmarks" and full == RESULTS / "x.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(quick)], cwd=REPO_ROOT)
    assert ignored.returncode == 0, f"{quick} is not ignored by git"


def _fake(rows=None, error: Exception | None = None) -> types.ModuleType:
    """A benchmark module whose summary() returns ``rows`` (given the result's value) or raises ``error``."""
    module = types.ModuleType("fake_benchmark")

    def summary(result):
        if error is not None:
            raise error
        return rows if rows is not None else [
            {"claim": "x <= 2", "measured": f"{result['value']} | per round", "verdict": "meets"},
            {"claim": "y (no target)", "measured": "3", "verdict": "noted"}]

    module.summary = summary
    return module


def _write(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result))


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text())
    return copy


def test_summarize_writes_rows_between_markers(tmp_path: Path, readme: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    machine = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2, "torch_threads": 1, "load_average_start": [3.0]}
    _write(results / "alpha.json", {"value": 1.5, "machine": machine, "date": "2026-12-01T10:00:00Z"})
    _write(results / "alpha_quick.json", {"value": 99.0, "machine": machine})  # smoke runs are ignored
    _write(results / "gamma_quick.json", {"value": 98.0, "machine": machine})  # only a quick run: "not run yet"
    before, after = readme.read_text().split(BEGIN)[0], readme.read_text().split(END)[1]

    table = write_summary(results, readme, {"alpha": _fake(), "beta": _fake(), "gamma": _fake()})

    text = readme.read_text()
    assert text.split(BEGIN)[0] == before and text.split(END)[1] == after  # the rest as written
    inside = text.split(BEGIN)[1].split(END)[0]
    assert table in inside
    lines = [line for line in table.splitlines() if line.startswith("| `") or line.startswith("|  |")]
    assert lines[0] == ("| `alpha` | x <= 2 | 1.5 \\| per round | meets | Intel Xeon, 2 cores, 1 thread, load 3.0; "
                        "2026-12-01 |")
    assert lines[1] == "|  | y (no target) | 3 | noted |  |"
    assert "| `beta` | – | not run yet | – | – |" in lines
    assert "| `gamma` | – | not run yet | – | – |" in lines
    assert "99.0" not in text and "98.0" not in text
    assert write_summary(results, readme, {"alpha": _fake(), "beta": _fake(), "gamma": _fake()}) == table
    assert readme.read_text() == text  # idempotent


def test_summarize_adds_a_benchmarks_extra_results(tmp_path: Path, readme: Path) -> None:
    """``EXTRA_RESULTS`` (step_time's one-thread run): their rows follow the benchmark's, each with its machine; a
    missing one is left out."""
    results = tmp_path / "results"
    results.mkdir()
    machine = {"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2, "load_average_start": [0.5]}
    _write(results / "alpha.json", {"value": 1.5, "machine": machine, "date": "2026-12-01T10:00:00Z"})
    _write(results / "alpha_1thread.json", {"value": 2.5, "machine": dict(machine, torch_threads=1),
                                            "date": "2026-12-01T11:00:00Z"})
    module = _fake()
    module.EXTRA_RESULTS = ("alpha_1thread", "alpha_missing")
    lines = [line for line in write_summary(results, readme, {"alpha": module}).splitlines() if "`alpha" in line]
    assert lines == [
        "| `alpha` | x <= 2 | 1.5 \\| per round | meets | AMD EPYC, 2 cores, 2 threads, load 0.5; 2026-12-01 |",
        "| `alpha_1thread` | x <= 2 | 2.5 \\| per round | meets | AMD EPYC, 2 cores, 1 thread, load 0.5; 2026-12-01 |"]


def test_summarize_fails_loudly(tmp_path: Path, readme: Path) -> None:
    _write(tmp_path / "good.json", {"value": 1, "machine": {}})
    _write(tmp_path / "broken.json", {"value": 1, "machine": {}})
    original = readme.read_text()
    with pytest.raises(SummaryError, match="'broken'.*KeyError"):
        write_summary(tmp_path, readme, {"good": _fake(), "broken": _fake(error=KeyError("runs"))})
    with pytest.raises(SummaryError, match="'broken'.*non-empty"):
        write_summary(tmp_path, readme, {"good": _fake(), "broken": _fake(rows=[])})
    with pytest.raises(SummaryError, match="'broken'.*verdict"):
        write_summary(tmp_path, readme, {"broken": _fake(rows=[{"claim": "c", "measured": "m"}])})
    with pytest.raises(SummaryError, match="'broken'.*no summary"):
        write_summary(tmp_path, readme, {"broken": types.ModuleType("no_summary")})
    assert readme.read_text() == original  # nothing written on failure
    with pytest.raises(SummaryError, match="'no_such_benchmark'"):
        import_benchmarks(["no_such_benchmark"])
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# no table here\n")
    with pytest.raises(SummaryError, match="markers"):
        write_summary(tmp_path, no_markers, {"good": _fake()})


def test_committed_results_summarize() -> None:
    """Every committed full result of an existing benchmark gives rows (what ``summarize`` writes into README.md)."""
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if not path.is_file() or not (REPO_ROOT / "benchmarks" / f"{name}.py").is_file():
            continue
        module = import_benchmarks([name])[name]
        rows = module.summary(json.loads(path.read_text()))
        assert rows and all(set(ROW_KEYS) <= set(row) for row in rows), (name, rows)
