"""Figures of alpha and the mask ratio over training steps, from the logs that ``AlphaMonitorCallback`` writes.

:func:`plot_alpha` reads a Trainer's ``state.log_history`` (a list of dicts), a ``trainer_state.json`` file, or a
TensorBoard log directory / event file, and draws per parameter group:

- top panel: alpha, the group mean as a line with the group's min-max range as a shaded band, and a dotted line
  at alpha = 1 (plain AdamW);
- middle panel: the mask ratio (fraction of coordinates updated), group mean;
- bottom panel, only with ``per_tensor=...``: one line of alpha per parameter tensor.

matplotlib is an optional dependency (``pip install hf-alphaadam[plot]``) and is imported only when a figure is
drawn. The figure is a bare ``matplotlib.figure.Figure`` (no pyplot, no GUI backend, nothing kept in pyplot's
global figure list), so it works in scripts, on headless servers and in notebooks, where it displays inline.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callback import ALPHA_PREFIX, ALPHA_TENSOR_PREFIX, MASK_RATIO_PREFIX, MASK_RATIO_TENSOR_PREFIX

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["plot_alpha", "read_alpha_logs"]

# The reporting integrations prefix training keys (TensorBoard: "train/alpha/decay/mean").
_INTEGRATION_PREFIXES = ("train/",)
_KEY_PREFIXES = (ALPHA_PREFIX, MASK_RATIO_PREFIX, ALPHA_TENSOR_PREFIX, MASK_RATIO_TENSOR_PREFIX)
_MAX_LEGEND = 6  # per-tensor panel: at most this many tensors named in the legend
_GROUP_ALPHA_KEY = re.compile(r"^alpha/(?P<group>.+)/(?P<stat>mean|min|max)$")


def read_alpha_logs(source: Any) -> list[dict[str, float]]:
    """The alpha / mask-ratio entries of ``source`` as ``[{"step": s, "alpha/decay/mean": ..., ...}, ...]``, by step.

    ``source`` is a ``log_history`` list (``trainer.state.log_history``), a ``trainer_state.json`` file, or a
    TensorBoard log directory (searched recursively for event files) or event file. Integration prefixes such as
    TensorBoard's ``train/`` are removed, so keys read as the callback wrote them. Entries without alpha keys are
    left out.
    """
    if isinstance(source, (str, os.PathLike)):
        entries = _read_path(Path(source))
    else:
        entries = list(source)
    by_step: dict[int, dict[str, float]] = {}
    for entry in entries:
        if "step" not in entry:
            continue
        values = {}
        for key, value in entry.items():
            key = _strip_integration_prefix(key)
            if key.startswith(_KEY_PREFIXES) and isinstance(value, (int, float)):
                values[key] = float(value)
        if values:
            by_step.setdefault(int(entry["step"]), {}).update(values)
    return [{"step": step, **by_step[step]} for step in sorted(by_step)]


def plot_alpha(source: Any, save_path: str | os.PathLike[str] | None = None, *,
               groups: Iterable[str] | None = None, per_tensor: bool | str = False,
               title: str | None = None, dpi: int = 150) -> "Figure":
    """Draw alpha (group mean with its min-max band) and the mask ratio per parameter group over steps.

    Args:
        source: ``trainer.state.log_history``, a ``trainer_state.json`` path, or a TensorBoard log directory or
            event file (see :func:`read_alpha_logs`).
        save_path: if given, the figure is also written there (PNG unless the suffix says otherwise); missing
            parent folders are created.
        groups: only these parameter groups (default: every group found, in the order first seen).
        per_tensor: ``True`` adds a panel with one alpha line per parameter tensor (logged with
            ``AlphaMonitorCallback(per_tensor=True)``); a string keeps only tensors whose name matches it
            (``re.search``), e.g. ``r"layers\\.0\\."``.
        title: the figure title (default: "AlphaAdam: alpha and mask ratio").
        dpi: resolution of the saved file.

    Returns:
        The ``matplotlib.figure.Figure`` (axes: alpha, mask ratio, and per-tensor alpha if asked for).

    Raises:
        ValueError: ``source`` holds no alpha values (or none for the requested groups / tensors).
        ImportError: matplotlib is not installed.
    """
    entries = read_alpha_logs(source)
    group_series = _group_series(entries)
    if groups is not None:
        wanted = list(groups)
        missing = [g for g in wanted if g not in group_series]
        if missing:
            raise ValueError(f"no alpha values for groups {missing}; groups found: {list(group_series)}")
        group_series = {g: group_series[g] for g in wanted}
    if not group_series:
        raise ValueError("no alpha values found in the logs (keys like 'alpha/<group>/mean'): train with "
                         "AlphaMonitorCallback and an optimizer of hf_alphaadam")
    tensor_series = {}
    if per_tensor is not False:
        pattern = None if per_tensor is True else re.compile(str(per_tensor))
        tensor_series = {name: series for name, series in _series(entries, ALPHA_TENSOR_PREFIX).items()
                         if pattern is None or pattern.search(name)}
        if not tensor_series:
            raise ValueError("per_tensor: no per-tensor alpha values found (keys like 'alpha_tensor/<name>')"
                             + ("" if pattern is None else f" matching {per_tensor!r}")
                             + "; log them with AlphaMonitorCallback(per_tensor=True)")

    Figure = _figure_class()
    from matplotlib.ticker import MaxNLocator

    rows = 3 if tensor_series else 2
    figure = Figure(figsize=(8, 2.8 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    _draw_groups(axes[0], axes[1], group_series)
    if tensor_series:
        _draw_tensors(axes[2], tensor_series)
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in (axes[0], *axes[2:]):
        _show_one(axis)
    axes[-1].set_xlabel("step")
    figure.suptitle(title if title is not None else "AlphaAdam: alpha and mask ratio")

    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
        logger.info("saved the alpha / mask-ratio figure to %s", path)
    return figure


# -- reading ----------------------------------------------------------------------------------------------------

def _read_path(path: Path) -> list[dict[str, Any]]:
    """Log entries from a trainer_state.json file or from TensorBoard event files (a file or a directory)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix == ".json":
        with path.open(encoding="utf-8") as handle:
            state = json.load(handle)
        if "log_history" not in state:
            raise ValueError(f"{path} has no 'log_history' (expected a Trainer's trainer_state.json)")
        return state["log_history"]
    event_files = [path] if path.is_file() else sorted(path.rglob("events.out.tfevents.*"))
    if not event_files:
        state_file = path / "trainer_state.json"
        if state_file.is_file():
            return _read_path(state_file)
        raise FileNotFoundError(f"{path}: no TensorBoard event files (events.out.tfevents.*) or trainer_state.json")
    if len(event_files) > 1:
        logger.info("reading %d TensorBoard event files under %s (values at the same step: the last file wins)",
                    len(event_files), path)
    return [entry for event_file in event_files for entry in _read_event_file(event_file)]


def _read_event_file(path: Path) -> list[dict[str, Any]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError("reading TensorBoard logs needs the tensorboard package (pip install tensorboard)") \
            from error
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every value
    accumulator.Reload()
    entries = []
    for tag in accumulator.Tags().get("scalars", []):
        if _strip_integration_prefix(tag).startswith(_KEY_PREFIXES):
            entries += [{"step": event.step, tag: event.value} for event in accumulator.Scalars(tag)]
    return entries


def _strip_integration_prefix(key: str) -> str:
    for prefix in _INTEGRATION_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


# -- series -----------------------------------------------------------------------------------------------------

Series = tuple[list[int], list[float]]


def _series(entries: list[dict[str, float]], prefix: str) -> dict[str, Series]:
    """``{name: (steps, values)}`` for every key ``<prefix><name>``, in the order first seen."""
    series: dict[str, Series] = {}
    for entry in entries:
        for key, value in entry.items():
            if key.startswith(prefix):
                steps, values = series.setdefault(key[len(prefix):], ([], []))
                steps.append(int(entry["step"]))
                values.append(value)
    return series


def _group_series(entries: list[dict[str, float]]) -> dict[str, dict[str, Series]]:
    """``{group: {"mean" | "min" | "max" | "mask_ratio": (steps, values)}}``."""
    groups: dict[str, dict[str, Series]] = {}
    for key, series in _series(entries, ALPHA_PREFIX).items():
        match = _GROUP_ALPHA_KEY.match(ALPHA_PREFIX + key)
        if match:
            groups.setdefault(match["group"], {})[match["stat"]] = series
    for group, series in _series(entries, MASK_RATIO_PREFIX).items():
        groups.setdefault(group, {})["mask_ratio"] = series
    return groups


def _aligned(lows: Series, highs: Series) -> tuple[list[int], list[float], list[float]]:
    """The steps where both the min and the max were logged, with their values."""
    high_at = dict(zip(*highs))
    pairs = [(step, low, high_at[step]) for step, low in zip(*lows) if step in high_at]
    return [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]


# -- drawing ----------------------------------------------------------------------------------------------------

def _draw_groups(alpha_axis: Any, mask_axis: Any, group_series: dict[str, dict[str, Series]]) -> None:
    """Per group: alpha mean (line) with its min-max band, and the mask ratio."""
    for color, (group, series) in zip(_colors(len(group_series)), group_series.items()):
        if "mean" in series:
            steps, means = series["mean"]
            alpha_axis.plot(steps, means, color=color, label=group, marker=_marker(steps), markersize=3)
        if "min" in series and "max" in series:
            band_steps, lows, highs = _aligned(series["min"], series["max"])
            alpha_axis.fill_between(band_steps, lows, highs, color=color, alpha=0.2, linewidth=0,
                                    label=f"{group} (min-max)")
        if "mask_ratio" in series:
            steps, ratios = series["mask_ratio"]
            mask_axis.plot(steps, ratios, color=color, label=group, marker=_marker(steps), markersize=3)
    alpha_axis.axhline(1.0, color="0.4", linestyle=":", linewidth=1, label="alpha = 1 (AdamW)")
    alpha_axis.set_ylabel("alpha")
    alpha_axis.set_title("alpha per group: mean, min-max band")
    alpha_axis.legend(loc="best", fontsize="small")
    mask_axis.set_ylabel("mask ratio")
    mask_axis.set_title("mask ratio per group (fraction of coordinates updated)")
    mask_axis.set_ylim(0.0, 1.05)
    mask_axis.legend(loc="best", fontsize="small")


def _draw_tensors(axis: Any, tensor_series: dict[str, Series]) -> None:
    """One thin alpha line per tensor; with many tensors only those reaching the largest alpha are named."""
    lines = {}
    for color, (name, (steps, values)) in zip(_colors(len(tensor_series)), tensor_series.items()):
        lines[name], = axis.plot(steps, values, color=color, linewidth=1, label=name)
    axis.axhline(1.0, color="0.4", linestyle=":", linewidth=1)
    axis.set_ylabel("alpha")
    if len(tensor_series) <= _MAX_LEGEND:
        named, note = list(tensor_series), ""
    else:
        named = sorted(tensor_series, key=lambda name: max(tensor_series[name][1]), reverse=True)[:_MAX_LEGEND]
        note = f"; legend: the {_MAX_LEGEND} with the largest alpha"
    axis.set_title(f"alpha per tensor ({len(tensor_series)} tensors{note})")
    axis.legend([lines[name] for name in named], named, loc="best", fontsize="x-small")


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'hf-alphaadam[plot]' (or pip install matplotlib)") \
            from error
    return Figure


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["viridis"](i / max(count - 1, 1)) for i in range(count)]


def _show_one(axis: Any) -> None:
    """Keep the alpha = 1 reference line inside the axis, a little above its lower edge."""
    low, high = axis.get_ylim()
    if low >= 1.0 - 0.02 * (high - low):
        axis.set_ylim(1.0 - 0.05 * (high - 1.0), high)


def _marker(steps: list[int]) -> str | None:
    """Dots on short series, so that a run with a handful of logs still shows where the values are."""
    return "o" if len(steps) <= 50 else None
