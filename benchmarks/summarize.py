"""The results table of ``benchmarks/README.md``, generated from ``benchmarks/results/<name>.json``.

For each benchmark, in the suite's order, the latest full results file (``<name>.json``; ``<name>_quick.json``
smoke runs are ignored) is loaded and passed to the benchmark's ``summary(result)``, which returns the rows
``{"claim", "measured", "verdict"}``; a benchmark without a results file gets one "not run yet" row. The table
replaces whatever stands between the markers ``<!-- summary:begin -->`` and ``<!-- summary:end -->`` in the
README; the rest of the README is left as written.

Nothing is skipped silently: a benchmark that fails to import, has no ``summary``, whose ``summary`` raises or
returns malformed rows, or whose results file is not valid JSON stops the run with a :class:`SummaryError`
naming it.

    python -m benchmarks summarize [--results DIR] [--readme PATH]
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger("benchmarks.summarize")

BEGIN = "<!-- summary:begin -->"
END = "<!-- summary:end -->"
COLUMNS = ("benchmark", "claim / target", "measured", "verdict", "machine + date")
ROW_KEYS = ("claim", "measured", "verdict")


class SummaryError(RuntimeError):
    """A benchmark could not be summarized (its name is in the message)."""


def import_benchmarks(names: Iterable[str]) -> dict[str, ModuleType]:
    """``{name: benchmarks.<name>}``; an import failure raises :class:`SummaryError` naming the benchmark."""
    modules = {}
    for name in names:
        try:
            modules[name] = importlib.import_module(f"benchmarks.{name}")
        except Exception as exc:
            raise SummaryError(f"benchmark {name!r}: import of benchmarks/{name}.py failed: "
                               f"{type(exc).__name__}: {exc}") from exc
    return modules


def load_result(results_dir: Path | str, name: str) -> tuple[dict[str, Any] | None, Path]:
    """The full results of ``name`` (``None`` when ``<name>.json`` does not exist) and the file's path."""
    path = Path(results_dir) / f"{name}.json"
    if not path.is_file():
        return None, path
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except json.JSONDecodeError as exc:
        raise SummaryError(f"benchmark {name!r}: {path} is not valid JSON: {exc}") from exc


def benchmark_rows(name: str, module: ModuleType, result: dict[str, Any], path: Path) -> list[dict[str, str]]:
    """``module.summary(result)``, checked: a non-empty list of dicts with the keys claim / measured / verdict."""
    summary = getattr(module, "summary", None)
    if not callable(summary):
        raise SummaryError(f"benchmark {name!r}: benchmarks/{name}.py has no summary(result) function")
    try:
        rows = summary(result)
    except Exception as exc:
        raise SummaryError(f"benchmark {name!r}: summary() failed on {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(rows, list) or not rows:
        raise SummaryError(f"benchmark {name!r}: summary() returned {rows!r}, not a non-empty list of rows")
    for row in rows:
        if not isinstance(row, Mapping) or any(key not in row for key in ROW_KEYS):
            raise SummaryError(f"benchmark {name!r}: summary() row {row!r} lacks one of {', '.join(ROW_KEYS)}")
    return [{key: str(row[key]) for key in ROW_KEYS} for row in rows]


def result_date(result: dict[str, Any], path: Path) -> str:
    """``YYYY-MM-DD`` of a result: its ``date`` entry, else the file's last commit, else its modification time."""
    if result.get("date"):
        return str(result["date"])[:10]
    try:
        committed = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                                   capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        committed = ""
    if committed:
        return committed
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d")


def describe_machine(machine: Mapping[str, Any]) -> str:
    """A short machine description from a result's ``machine`` entry (older results name fields differently)."""
    parts = []
    processor = machine.get("gpu") or machine.get("cpu") or machine.get("processor")
    if processor:
        parts.append(re.sub(r"\s+", " ", re.sub(r"\((R|TM|tm)\)|\bProcessor\b|\bCPU\b", "", str(processor))).strip())
    elif machine.get("device"):
        parts.append(f"{machine['device']} (model not recorded)")
    cores = machine.get("cpu_count") or machine.get("cpus")
    if cores:
        parts.append(f"{cores} cores")
    if machine.get("torch_threads"):
        parts.append(f"{machine['torch_threads']} thread{'s' if machine['torch_threads'] != 1 else ''}")
    load = machine.get("load_average_start") or machine.get("load_average")
    if load:
        parts.append(f"load {load[0]:.1f}")
    return ", ".join(parts) or "machine not recorded"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_table(entries: list[tuple[str, list[dict[str, str]] | None, str]]) -> str:
    """Markdown for ``(name, rows or None for not run yet, machine + date)`` entries."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, rows, where in entries:
        if rows is None:
            lines.append(f"| `{name}` | – | not run yet | – | – |")
            continue
        for i, row in enumerate(rows):
            first = i == 0
            lines.append("| " + " | ".join([f"`{name}`" if first else "", _cell(row["claim"]), _cell(row["measured"]),
                                            _cell(row["verdict"]), _cell(where) if first else ""]) + " |")
    return "\n".join(lines)


def replace_between_markers(text: str, block: str, source: str = "README") -> str:
    """``text`` with everything between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SummaryError(f"{source} must contain the markers {BEGIN} and {END} once each, in that order")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def write_summary(results_dir: Path | str, readme_path: Path | str, modules: Mapping[str, ModuleType]) -> str:
    """Rewrite the table in ``readme_path`` from ``results_dir`` for ``modules`` (``{name: module}``, in order).

    Returns the table (markdown). Raises :class:`SummaryError` naming the benchmark on any failure, before the
    README is touched.
    """
    entries = []
    for name, module in modules.items():
        result, path = load_result(results_dir, name)
        if result is None:
            logger.info("%s: no %s, not run yet", name, path)
            entries.append((name, None, ""))
            continue
        rows = benchmark_rows(name, module, result, path)
        machine = result.get("machine") or {}
        entries.append((name, rows, f"{describe_machine(machine)}; {result_date(result, path)}"))
        # more runs of the same benchmark with other settings (e.g. step_time with one thread), if present
        for extra in getattr(module, "EXTRA_RESULTS", ()):
            extra_result, extra_path = load_result(results_dir, extra)
            if extra_result is not None:
                machine = extra_result.get("machine") or {}
                entries.append((extra, benchmark_rows(extra, module, extra_result, extra_path),
                                f"{describe_machine(machine)}; {result_date(extra_result, extra_path)}"))
    table = render_table(entries)
    block = ("<!-- generated by `python -m benchmarks summarize` from benchmarks/results/<name>.json: "
             "edit the benchmarks' summary(), not this table -->\n" + table)
    readme_path = Path(readme_path)
    readme_path.write_text(replace_between_markers(readme_path.read_text(encoding="utf-8"), block,
                                                   str(readme_path)), encoding="utf-8")
    logger.info("wrote the table of %d benchmarks into %s", len(entries), readme_path)
    return table
