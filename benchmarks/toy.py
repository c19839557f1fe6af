"""Cautious paper's 2-D toy 4 w1^2 + w2^2: best convergence rate of GDM, C-GDM and the async (AlphaAdam) mask.

Problem (Liang et al. 2024, Fig. 1-2; spec in ``../shared/docs/algorithms.md``, section 0): start at
``w0 = (1, 1)``, ``s0 = 0``, gradient ``g = (8 w1, 2 w2)`` (Hessian eigenvalues 8 and 2, condition number 4).
Three methods, each a function of the step size ``eps`` and the momentum ``beta``:

- ``gdm``: gradient descent with momentum, ``s = beta s + g;  w -= eps s``;
- ``cgdm_sync``: C-GDM, the same with the update masked by ``phi = 1(s g > 0)`` computed from the *freshly
  updated* ``s`` (the Cautious rule): ``s = beta s + g;  w -= eps phi s``;
- ``cgdm_async``: the asynchronous mask of AlphaAdam, ``phi = 1(s g > 0)`` from the *previous* ``s`` (before its
  update), and ``phi = 1`` at the first step (``s0 = 0`` would mask everything, as AlphaAdam's default
  ``first_step="full"``): ``phi = 1(s g > 0);  s = beta s + g;  w -= eps phi s``.

As in the paper's toy there is no rescaling of the masked step (no alpha): the mask only removes coordinates.

What it shows (``benchmarks/results/toy.json``): GDM 0.3334 (theory 1/3), C-GDM 0.331 (a 0.6 % gain, far from the
paper's 0.294), the async mask 0.4535, i.e. slower; the async mask also diverges for ``eps`` above about 0.22 at every
``beta``, where GDM is still stable up to ``eps < (1 + beta) / 4``: with the gradient's sign flipping every step,
the stale momentum masks the step, momentum builds up meanwhile, and the next unmasked step overshoots further.

How the rate is measured: each run takes ``--steps`` iterations (default 2000). All three maps are positively
homogeneous (scaling ``(w, s)`` by ``c > 0`` scales every later state by ``c``: the masks depend on signs only), so
the state is renormalized to unit norm after every step and the log of the scale is accumulated: ``log L_t`` is
exact over thousands of steps without underflow. The *rate* is the asymptotic per-step contraction factor of the
error ``||w||``: ``rate = exp(slope / 2)``, where ``slope`` is the least-squares slope of ``log L_t`` against ``t``
over the second half of the run (``L`` is quadratic in ``w``, hence the ``/ 2``). For GDM the linear theory gives
``min rate = (sqrt(kappa) - 1) / (sqrt(kappa) + 1) = 1/3`` at ``eps = 2/9``, ``beta = 1/9``; this benchmark finds it
to about 1e-4 (its value is what the test ``tests/benchmarks/test_toy.py`` checks).

The best rate of each method is the minimum over a grid of ``(eps, beta)`` (``eps`` in (0, 0.5], ``beta`` in
[0, 0.96); GDM diverges beyond) followed by a zoom: around the ten best separate grid points, finer grids three
times over. The masked maps are not linear and their ``log L`` wobbles around its trend (the rate fitted on
sub-windows varies by up to a few per cent), so a minimum over thousands of fits is biased low: each zoomed candidate is
re-measured on a run 4x longer (fit window ``[4000, 8000]`` by default, disjoint from the search's) and the
reported best is the smallest re-measured rate, with the rates on four sub-windows of its fit window as the
spread. The grid is offset by a small irrational-looking amount so that no point lies exactly on ``eps * 8 = 1``: there
the first step solves ``w1`` exactly and the masks then freeze it at 0 (``g1 = 0`` gives ``phi1 = 0``), a
measure-zero finite-termination case that is not a convergence rate.

The paper reports 0.332 for GDM and 0.294 for C-GDM (it does not say how its slope was fitted).

Usage::

    python -m benchmarks run toy            # 2-3 minutes on the loaded 2-core CPU (~40 s of CPU time)
    python -m benchmarks run toy --quick    # coarse grid, 600 steps: ~20 s with the imports

Writes ``benchmarks/results/toy.json`` (``toy_quick.json`` with ``--quick``) and ``toy.png``: the loss curves at
each method's best ``(eps, beta)`` and the rate over the grid per method (every 2nd grid point is stored and
plotted).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # ``python benchmarks/toy.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import result_path, write_result  # noqa: E402

logger = logging.getLogger("benchmarks.toy")

NAME = "toy"
HESSIAN = np.array([8.0, 2.0])  # L(w) = 4 w1^2 + w2^2 = (8 w1^2 + 2 w2^2) / 2
W0 = np.array([1.0, 1.0])
KAPPA = float(HESSIAN.max() / HESSIAN.min())
OPTIMAL_GDM_RATE = (math.sqrt(KAPPA) - 1) / (math.sqrt(KAPPA) + 1)  # 1/3
PAPER_RATES = {"gdm": 0.332, "cgdm_sync": 0.294}
VARIANTS = ("gdm", "cgdm_sync", "cgdm_async")
LABELS = {"gdm": "GDM", "cgdm_sync": "C-GDM (sync mask)", "cgdm_async": "async mask (AlphaAdam)"}

# Grid ranges; the offsets keep grid points off dyadic values such as eps = 1/8 (see the module docstring).
EPS_RANGE = (0.0, 0.5)
BETA_RANGE = (0.0, 0.96)
EPS_OFFSET = 0.000517
BETA_OFFSET = 0.000131


def loss(w: np.ndarray) -> np.ndarray:
    """``L(w) = 4 w1^2 + w2^2`` along the last axis."""
    return 0.5 * (HESSIAN * w * w).sum(-1)


def simulate(variant: str, eps: np.ndarray | float, beta: np.ndarray | float, steps: int,
             history: bool = False) -> dict[str, np.ndarray]:
    """Run ``variant`` for ``steps`` iterations at every ``(eps, beta)`` pair at once (arrays of one shape).

    Returns ``{"rate": ...}`` of that shape (the asymptotic rate defined in the module docstring: least-squares
    slope of ``log L`` over the second half of the run), plus ``"log_loss"`` (``[steps + 1, ...]``, natural log,
    ``t = 0`` first) when ``history`` is true. A run whose loss became exactly 0 has rate 0.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; the variants are {VARIANTS}")
    eps, beta = np.broadcast_arrays(np.asarray(eps, dtype=float), np.asarray(beta, dtype=float))
    shape = eps.shape
    e, b = eps.reshape(-1, 1), beta.reshape(-1, 1)
    w = np.tile(W0, (e.shape[0], 1))
    s = np.zeros_like(w)
    log_scale = np.zeros(e.shape[0])  # the true state is exp(log_scale) * (w, s)
    first_fit_step = steps // 2
    # running sums of the least-squares fit of log L against t over t >= first_fit_step (finite values only)
    n, sum_t, sum_tt, sum_y, sum_ty = (np.zeros(e.shape[0]) for _ in range(5))
    logs = [np.log(loss(w))] if history else []
    for t in range(1, steps + 1):
        g = HESSIAN * w
        if variant == "cgdm_async":
            phi = (s * g > 0) if t > 1 else np.ones_like(g, dtype=bool)
        s = b * s + g
        if variant == "cgdm_sync":
            phi = s * g > 0
        w = w - e * (s if variant == "gdm" else phi * s)
        norm = np.sqrt((w * w).sum(1) + (s * s).sum(1))
        norm[norm == 0] = 1.0  # the state is exactly 0: nothing left to scale
        w, s = w / norm[:, None], s / norm[:, None]
        log_scale = log_scale + np.log(norm)
        with np.errstate(divide="ignore"):
            y = np.log(loss(w)) + 2 * log_scale
        if history:
            logs.append(y)
        if t >= first_fit_step:
            finite = np.isfinite(y)
            y0 = np.where(finite, y, 0.0)
            n, sum_t, sum_tt = n + finite, sum_t + finite * t, sum_tt + finite * t * t
            sum_y, sum_ty = sum_y + y0, sum_ty + t * y0
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (n * sum_ty - sum_t * sum_y) / (n * sum_tt - sum_t * sum_t)
    rate = np.where(n >= 2, np.exp(slope / 2), 0.0)  # fewer than 2 finite points: L hit exactly 0
    out = {"rate": rate.reshape(shape)}
    if history:
        out["log_loss"] = np.stack(logs).reshape((steps + 1,) + shape)
    return out


def grid(spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``(eps, beta)`` search grid: 1-D axes ``eps`` and ``beta`` with the given spacing."""
    eps = np.arange(EPS_RANGE[0] + spacing / 2 + EPS_OFFSET, EPS_RANGE[1], spacing)
    beta = np.arange(BETA_RANGE[0] + BETA_OFFSET, BETA_RANGE[1], spacing)
    return eps, beta


def best_rate(variant: str, spacing: float = 0.005, steps: int = 2000, candidates: int = 10, zoom_levels: int = 3,
              zoom_factor: int = 5, zoom_half_width: int = 8, validate_factor: int = 4,
              grid_stride: int = 1) -> dict[str, Any]:
    """The smallest rate of ``variant`` over the grid, refined by zooming around the ``candidates`` best points.

    Each candidate's final point is then re-measured on a run ``validate_factor`` times longer, and the best is
    the candidate with the smallest re-measured rate. Returns ``best`` (``rate`` re-measured, ``search_rate``,
    ``eps``, ``beta``, ``rate_subwindows``), the coarse ``grid`` (axes and rates, every ``grid_stride``-th point,
    for the plot) and ``candidates`` (each coarse start, where its zoom ended, and its re-measured rate).
    """
    eps_axis, beta_axis = grid(spacing)
    eps, beta = np.meshgrid(eps_axis, beta_axis, indexing="ij")
    rates = simulate(variant, eps, beta, steps)["rate"]
    order = np.argsort(rates, axis=None)
    starts: list[tuple[float, float, float]] = []
    for flat in order:  # the best points that are not neighbours of a better one already taken
        i, j = np.unravel_index(flat, rates.shape)
        if all(abs(eps[i, j] - e) > 2.5 * spacing or abs(beta[i, j] - b) > 2.5 * spacing for _, e, b in starts):
            starts.append((float(rates[i, j]), float(eps[i, j]), float(beta[i, j])))
        if len(starts) == candidates:
            break
    refined = []
    for rate, e, b in starts:
        step, best = spacing, (rate, e, b)
        for _ in range(zoom_levels):
            step /= zoom_factor
            offsets = step * np.arange(-zoom_half_width, zoom_half_width + 1)
            ze, zb = np.meshgrid(best[1] + offsets, np.clip(best[2] + offsets, 0.0, 0.999), indexing="ij")
            ze = np.clip(ze, 1e-6, None)
            zr = simulate(variant, ze, zb, steps)["rate"]
            k = np.unravel_index(np.argmin(zr), zr.shape)
            if zr[k] < best[0]:
                best = (float(zr[k]), float(ze[k]), float(zb[k]))
        refined.append({"grid_rate": rate, "grid_eps": e, "grid_beta": b,
                        "search_rate": best[0], "eps": best[1], "beta": best[2]})
    # The masked maps are not linear: log L wobbles around its trend, so the minimum over many fits is biased low.
    # Re-measure each candidate on a run `validate_factor` times longer (fit window disjoint from the search's)
    # and rank by that; the spread of the rate over four sub-windows of its fit window shows the wobble.
    long_steps = validate_factor * steps
    check = simulate(variant, np.array([c["eps"] for c in refined]), np.array([c["beta"] for c in refined]),
                     long_steps, history=True)
    for k, candidate in enumerate(refined):
        candidate["rate"] = float(check["rate"][k])
        candidate["rate_subwindows"] = window_rates(check["log_loss"][:, k], long_steps // 2, parts=4)
    winner = min(refined, key=lambda c: c["rate"])
    return {"best": {key: winner[key] for key in ("rate", "eps", "beta", "search_rate", "rate_subwindows")},
            "validation_steps": long_steps, "candidates": refined,
            # for the plot only: every `grid_stride`-th point, rounded (the whole grid would make the JSON ~1 MB)
            "grid": {"eps": eps_axis[::grid_stride].round(6).tolist(),
                     "beta": beta_axis[::grid_stride].round(6).tolist(),
                     "rate": rates[::grid_stride, ::grid_stride].round(4).tolist(), "stride": grid_stride}}


def window_rates(log_loss: np.ndarray, start: int, parts: int) -> list[float]:
    """The rate fitted separately on ``parts`` equal consecutive windows of ``log_loss[start:]``."""
    rates = []
    for chunk in np.array_split(np.arange(start, len(log_loss)), parts):
        y = log_loss[chunk]
        keep = np.isfinite(y)
        rates.append(float(np.exp(np.polyfit(chunk[keep], y[keep], 1)[0] / 2)) if keep.sum() >= 2 else 0.0)
    return rates


def run(spacing: float, steps: int, curve_steps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for variant in VARIANTS:
        started = time.perf_counter()
        found = best_rate(variant, spacing=spacing, steps=steps, grid_stride=2 if spacing < 0.01 else 1)
        best = found["best"]
        curve = simulate(variant, best["eps"], best["beta"], curve_steps, history=True)["log_loss"]
        found["curve_log10_loss"] = (curve / math.log(10)).tolist()
        found["seconds"] = time.perf_counter() - started
        results[variant] = found
        logger.info("%-10s best rate %.4f at eps=%.5f beta=%.5f (%.1f s)", variant, best["rate"], best["eps"],
                    best["beta"], found["seconds"])
    gdm_at_theory = float(simulate("gdm", 2 / 9, 1 / 9, steps)["rate"])
    return {"settings": {"steps": steps, "fit_window": [steps // 2, steps], "grid_spacing": spacing,
                         "eps_range": EPS_RANGE, "beta_range": BETA_RANGE, "zoom": "10 candidates, 3 levels x5",
                         "validation": "each candidate re-measured on a 4x longer run; best = smallest of those",
                         "w0": W0.tolist(), "hessian": HESSIAN.tolist(), "curve_steps": curve_steps},
            "theory": {"kappa": KAPPA, "gdm_optimal_rate": OPTIMAL_GDM_RATE, "gdm_optimal_eps": 2 / 9,
                       "gdm_optimal_beta": 1 / 9, "gdm_rate_measured_at_optimum": gdm_at_theory},
            "paper": PAPER_RATES,
            "variants": results}


def summary(result: dict[str, Any]) -> list[dict[str, str]]:
    """Rows for benchmarks/README.md: GDM against theory, the sync and async masks against GDM."""
    best = {name: entry["best"] for name, entry in result["variants"].items()}
    gdm = best["gdm"]["rate"]
    theory = result["theory"]["gdm_optimal_rate"]
    where = {name: f"eps={b['eps']:.3f}, beta={b['beta']:.3f}" for name, b in best.items()}
    rows = [{"claim": f"toy 4w1²+w2²: best GDM rate = (√κ−1)/(√κ+1) = {theory:.4f} (paper: 0.332)",
             "measured": f"{gdm:.4f} ({where['gdm']})",
             "verdict": "meets (within 0.01)" if abs(gdm - theory) <= 0.01 else "misses (off by more than 0.01)"}]
    sync = best["cgdm_sync"]["rate"]
    paper_gain = 100 * (1 - PAPER_RATES["cgdm_sync"] / PAPER_RATES["gdm"])
    gain = 100 * (1 - sync / gdm)
    if sync >= gdm:
        verdict = "misses: not faster than GDM"
    elif gain < paper_gain / 2:
        verdict = f"misses: faster by {gain:.1f} % only (paper: {paper_gain:.0f} %)"
    else:
        verdict = f"meets: faster by {gain:.1f} % (paper: {paper_gain:.0f} %)"
    rows.append({"claim": "toy: C-GDM (sync mask) converges faster than GDM (paper: 0.294 vs 0.332)",
                 "measured": f"{sync:.4f} vs GDM {gdm:.4f} ({where['cgdm_sync']})", "verdict": verdict})
    asynchronous = best["cgdm_async"]["rate"]
    if asynchronous < min(gdm, sync):
        verdict = "noted: faster than GDM and C-GDM"
    elif asynchronous < gdm:
        verdict = "noted: faster than GDM, slower than C-GDM"
    else:
        verdict = f"noted: slower than GDM ({100 * (asynchronous / gdm - 1):.0f} % higher rate)"
    rows.append({"claim": "toy: the async mask (AlphaAdam's) vs GDM (no claim in the papers)",
                 "measured": f"{asynchronous:.4f} vs GDM {gdm:.4f} ({where['cgdm_async']})", "verdict": verdict})
    return rows


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    axes = axes.ravel()
    colors = {"gdm": "tab:blue", "cgdm_sync": "tab:orange", "cgdm_async": "tab:green"}
    curves = axes[0]
    for name, entry in result["variants"].items():
        best = entry["best"]
        curves.plot(entry["curve_log10_loss"], color=colors[name],
                    label=f"{LABELS[name]}: rate {best['rate']:.4f}\n(eps={best['eps']:.3f}, beta={best['beta']:.3f})")
    steps = len(result["variants"]["gdm"]["curve_log10_loss"])
    theory = result["theory"]["gdm_optimal_rate"]
    curves.plot([0, steps - 1], [math.log10(5.0), math.log10(5.0) + 2 * (steps - 1) * math.log10(theory)], "k:",
                lw=0.8, label=f"slope of rate {theory:.4f} (theory)")
    curves.set_xlabel("step")
    curves.set_ylabel("log10 L(w)")
    curves.set_title("loss at each method's best (eps, beta)", fontsize=10)
    curves.legend(fontsize=8)
    for ax, (name, entry) in zip(axes[1:], result["variants"].items()):
        g = entry["grid"]
        rates = np.clip(np.array(g["rate"]), 0.3, 1.0)
        image = ax.pcolormesh(g["eps"], g["beta"], rates.T, shading="nearest", cmap="viridis_r", vmin=0.3, vmax=1.0)
        best = entry["best"]
        ax.plot(best["eps"], best["beta"], "r+", ms=10, mew=1.5)
        ax.set_xlabel("eps (step size)")
        ax.set_ylabel("beta (momentum)")
        ax.set_title(f"{LABELS[name]}: best {best['rate']:.4f} (+)", fontsize=10)
        fig.colorbar(image, ax=ax, label="rate (clipped to [0.3, 1])")
    fig.suptitle(f"L(w) = 4w1² + w2², w0 = (1, 1): asymptotic rate exp(slope of log L / 2) over steps "
                 f"{result['settings']['fit_window'][0]}-{result['settings']['fit_window'][1]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict[str, Any]) -> None:
    print(f"{'method':26s} {'best rate':>9s} {'sub-windows':>15s} {'search':>7s} {'eps':>7s} {'beta':>7s} "
          f"{'paper':>6s}")
    for name, entry in result["variants"].items():
        best = entry["best"]
        paper = result["paper"].get(name)
        spread = f"{min(best['rate_subwindows']):.4f}-{max(best['rate_subwindows']):.4f}"
        print(f"{LABELS[name]:26s} {best['rate']:9.4f} {spread:>15s} {best['search_rate']:7.4f} {best['eps']:7.4f} "
              f"{best['beta']:7.4f} {paper if paper is not None else '-':>6}")
    print(f"{'theory (GDM)':26s} {result['theory']['gdm_optimal_rate']:9.4f} {'':15s} {'':7s} {2 / 9:7.4f} "
          f"{1 / 9:7.4f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks run toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="grid spacing 0.02, 600 steps: a smoke run")
    parser.add_argument("--spacing", type=float, default=None, help="grid spacing in eps and beta (default 0.005)")
    parser.add_argument("--steps", type=int, default=None, help="iterations per run (default 2000); the rate is "
                        "fitted over the second half")
    parser.add_argument("--curve-steps", type=int, default=60, help="steps of the plotted loss curves")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: benchmarks/results, and outputs/benchmarks for --quick")
    args = parser.parse_args(argv)
    args.spacing = args.spacing or (0.02 if args.quick else 0.005)
    args.steps = args.steps or (600 if args.quick else 2000)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(args.spacing, args.steps, args.curve_steps)
    path = write_result(result, args.output_dir, NAME, args.quick)
    write_plot(result, result_path(args.output_dir, NAME, args.quick, ".png"))
    logger.info("wrote %s and its .png", path)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
