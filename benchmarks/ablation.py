"""Table 3 of the AlphaAdam paper (arXiv 2501.18094) at CPU scale: which part of AlphaAdam helps, and when.

The paper's ablation (GPT-2 125M, OpenWebText, 10k steps; see ``../shared/docs/algorithms.md`` section 1.3) reports
the validation loss at 20 / 40 / 60 / 100 % of training for four optimizers that differ only in the mask and the
step scaling, and the average of the first two ("early") and of the last two ("late") checkpoints:

=====================================  ======================================================  ========
row                                    here                                                    key
=====================================  ======================================================  ========
AdamW                                  ``torch.optim.AdamW`` itself                            adamw
AdamW + sync mask (Cautious / CAdam)   ``AlphaAdam(mask="sync", alpha="count")``               sync
AdamW + async mask                     ``AlphaAdam(mask="async", alpha="none")``               async
AlphaAdam (async mask + dynamic alpha) ``AlphaAdam(mask="async", alpha="norm")``               alphaadam
(extra) sync mask + dynamic alpha      ``AlphaAdam(mask="sync", alpha="norm")``                sync_norm
=====================================  ======================================================  ========

The paper does not say whether its "AdamW + async mask" row used alpha = 1 or Cautious' count scaling
``numel / (sum(mask) + 1)``; here it uses alpha = 1 (``alpha="none"``), i.e. the mask alone. The mask rules:
sync ``1(m_t g_t > 0)``, async ``1(m_{t-1} g_t > 0)`` (the first step is unmasked, the project's default);
dynamic alpha ``||u|| / ||mask * u||`` per tensor, which gives back Adam's step norm.

Paper, early average: AdamW 3.610, sync 3.646, async 3.554, AlphaAdam 3.523 (-2.4 % vs AdamW; (3.658 + 3.374) / 2
is 3.516, the paper prints 3.523); late average: AdamW 3.243, AlphaAdam 3.237; at 100 % AdamW is best (3.198).

What is run here (the defaults; every number is an option):

- a Llama built from a config (``_common.tiny_llama``: hidden 96, 3 layers, 4 heads, untied embeddings, ~0.35 M
  parameters) trained from scratch, character level, on Tiny Shakespeare (``--data_dir``), batch 8 x 128
  characters, 400 steps, linear warm-up (5 %) then cosine to 0, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
  the >= 2-D weights only (``_common.decay_groups``), no gradient clipping (nanoGPT, whose code the paper's
  GPT-2 runs used, clips the gradient norm at 1.0 by default; ``--grad-clip 1`` does that here);
- one seed fixes both the initial weights and the order of the training batches, so for a given seed every
  optimizer starts from the same model and sees the same data; the validation loss is the mean over 8 fixed
  held-out batches (the last 10 % of the text), measured at every 10 % of the steps;
- phase 1, learning-rate sweep: every optimizer at lr 5e-3, 1e-2, 2e-2 with seed 0; each optimizer's best lr is
  the one with the lowest final validation loss (the paper tunes the lr per method); where that is the largest
  (smallest) lr tried, the sweep adds the next one up (down) the grid for that optimizer, at most twice;
- phase 2: every optimizer at its own best lr with 3 fresh seeds (1, 2, 3; the sweep's seed 0 is not reused, so
  the lr choice does not bias the reported numbers); mean +- sample std over the seeds, and the paired
  (same-seed) difference to AdamW.

The checks (``summary``): AlphaAdam's early average below AdamW's (the paper's headline for Table 3), the late
average, and the qualitative early ordering async + alpha < async < AdamW < sync that section 5 item 2 of the
spec expects a small model to reproduce. The absolute numbers cannot match the paper (different model, data, scale).

Usage::

    python -m benchmarks run ablation                 # ~32 runs of ~45 s on a quiet core: ~25 min
    python -m benchmarks run ablation --workers 2     # two runs at a time, one thread each: same numbers, ~15 min
                                                      # on 2 quiet cores (73 min on this project's loaded machine)
    python -m benchmarks run ablation --quick         # smoke run (< 40 s): tiny model, 1 lr, 1 seed
    python benchmarks/ablation.py --help              # all options

Writes ``benchmarks/results/ablation[_quick].json`` and ``.png`` (validation curves with the seed band, the
difference to AdamW over training, and the lr sweep).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # ``python benchmarks/ablation.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (add_common_arguments, at_fraction, batches, best_lrs, char_data, decay_groups,  # noqa: F401
                                edge_extensions, eval_steps, lm_loss, machine_info, mean_std, result_path,
                                tiny_llama, tried_lrs, warmup_cosine, write_result)

NAME = "ablation"
LOG = logging.getLogger("benchmarks.ablation")

# key: (label, AlphaAdam options; None = torch.optim.AdamW). Table 3's rows in its order, then the extra one.
VARIANTS: dict[str, tuple[str, dict[str, str] | None]] = {
    "adamw": ("AdamW", None),
    "sync": ("AdamW + sync mask (Cautious)", {"mask": "sync", "alpha": "count"}),
    "async": ("AdamW + async mask", {"mask": "async", "alpha": "none"}),
    "alphaadam": ("AlphaAdam (async + dynamic alpha)", {"mask": "async", "alpha": "norm"}),
    "sync_norm": ("sync mask + dynamic alpha", {"mask": "sync", "alpha": "norm"}),
}
FRACTIONS = (0.2, 0.4, 0.6, 1.0)  # Table 3's checkpoints; "early" = first two, "late" = last two
EARLY, LATE = FRACTIONS[:2], FRACTIONS[2:]
# Table 3 of the paper (GPT-2 125M, 10k steps), for the plot and the JSON
PAPER = {"adamw": (3.799, 3.420, 3.288, 3.198), "sync": (3.850, 3.442, 3.310, 3.227),
         "async": (3.717, 3.391, 3.282, 3.213), "alphaadam": (3.658, 3.374, 3.271, 3.203)}
VALID_SEED = 12345  # the fixed held-out batches
DATA_SEED_OFFSET = 1000  # training batches of seed s come from generator seed 1000 + s


# ----------------------------------------------------------------------------------------------- one training run

def make_optimizer(variant: str, model, lr: float, settings: dict[str, Any]) -> torch.optim.Optimizer:
    groups = decay_groups(model, settings["weight_decay"])
    common = {"lr": lr, "betas": tuple(settings["betas"]), "eps": settings["eps"]}
    options = VARIANTS[variant][1]
    if options is None:
        # torch keeps extra group keys; drop the names so that any torch version accepts the groups
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups], **common)
    from hf_alphaadam.optim import catalog

    return catalog.build("alphaadam", groups, **common, **options)  # mask / alpha on top of AlphaAdam's


_DATA: tuple[torch.Tensor, torch.Tensor, int] | None = None


def _data() -> tuple[torch.Tensor, torch.Tensor, int]:
    global _DATA
    if _DATA is None:
        _DATA = char_data()
    return _DATA


def train_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (variant, lr, seed) and return its validation curve (and alpha / mask-ratio statistics)."""
    settings, variant, lr, seed = job["settings"], job["variant"], job["lr"], job["seed"]
    torch.set_num_threads(settings["threads"])
    train, valid, vocab = _data()
    steps, context, batch_size = settings["steps"], settings["context"], settings["batch_size"]
    model = tiny_llama(vocab, settings["hidden"], settings["layers"], settings["heads"], context, seed=seed)
    optimizer = make_optimizer(variant, model, lr, settings)
    schedule = warmup_cosine(optimizer, steps, settings["warmup_fraction"])
    valid_batches = list(batches(valid, settings["eval_batches"], batch_size, context, seed=VALID_SEED))
    checkpoints = set(eval_steps(steps, settings["eval_points"]))
    curve: list[list[float]] = []
    stats: list[dict[str, float]] = []
    train_losses: list[float] = []
    started = time.perf_counter()

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            value = sum(lm_loss(model, b).item() for b in valid_batches) / len(valid_batches)
        model.train()
        curve.append([step, value])
        if step and hasattr(optimizer, "statistics"):
            groups = optimizer.statistics()["groups"]
            stats.append({"step": step, **{f"{k}/{g}": groups[g][k] for g in groups
                                           for k in ("alpha_mean", "mask_ratio")}})

    evaluate(0)
    data = batches(train, steps, batch_size, context, seed=DATA_SEED_OFFSET + seed)
    for step, batch in enumerate(data, start=1):
        optimizer.zero_grad(set_to_none=True)
        loss = lm_loss(model, batch)
        loss.backward()
        if settings.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
        optimizer.step()
        schedule.step()
        train_losses.append(loss.item())
        if not math.isfinite(train_losses[-1]):
            break  # diverged: the curve ends here and the run counts as infinitely bad
        if step in checkpoints:
            evaluate(step)
    tail = train_losses[-max(1, steps // 10):]
    final = {f: (at_fraction(curve, steps, f) if math.isfinite(train_losses[-1]) else math.inf) for f in FRACTIONS}
    return {"variant": variant, "lr": lr, "seed": seed, "phase": job["phase"], "curve": curve,
            "at_fraction": {str(f): v for f, v in final.items()}, "statistics": stats,
            "train_loss_last_10pct": sum(tail) / len(tail),
            "seconds": time.perf_counter() - started}


def run_jobs(jobs: list[dict[str, Any]], pool, desc: str) -> list[dict[str, Any]]:
    """Run the jobs (in the processes of ``pool``, here when it is None), logging one line per finished run."""
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(jobs), desc=desc, unit="run", file=sys.stderr) as bar:
        def done(result: dict[str, Any]) -> None:
            results.append(result)
            bar.update()
            values = " ".join(f"{float(f):.0%} {v:.4f}" for f, v in result["at_fraction"].items())
            LOG.info("%-9s lr=%-7g seed=%d: val loss %s (%.0f s)", result["variant"], result["lr"], result["seed"],
                     values, result["seconds"])

        if pool is None:
            for job in jobs:
                done(train_run(job))
        else:
            for result in pool.imap_unordered(train_run, jobs):
                done(result)
    order = {(j["variant"], j["lr"], j["seed"]): i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r["variant"], r["lr"], r["seed"])])


# ------------------------------------------------------------------------------------------------------ analysis

def early_late(values: dict[str, float]) -> tuple[float, float]:
    """Table 3's two averages from the losses at 20 / 40 / 60 / 100 % (keys as strings, as in the JSON)."""
    return (sum(values[str(f)] for f in EARLY) / len(EARLY), sum(values[str(f)] for f in LATE) / len(LATE))


def table(runs: list[dict[str, Any]], reference: str = "adamw") -> dict[str, dict[str, Any]]:
    """Per variant: mean and std over seeds at each fraction, of the early / late averages, and the paired
    (same seed) relative difference to ``reference`` in percent."""
    by_variant: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        values = dict(run["at_fraction"])
        values["early"], values["late"] = early_late(run["at_fraction"])
        by_variant.setdefault(run["variant"], {})[run["seed"]] = values
    out = {}
    for variant, seeds in by_variant.items():
        keys = [str(f) for f in FRACTIONS] + ["early", "late"]
        row: dict[str, Any] = {"label": VARIANTS[variant][0], "lr": next(r["lr"] for r in runs
                                                                          if r["variant"] == variant),
                               "seeds": sorted(seeds)}
        for key in keys:
            mean, std = mean_std([seeds[s][key] for s in sorted(seeds)])
            row[key] = {"mean": mean, "std": std}
        # the optimizer's own statistics (AlphaAdam only): decay group, mean over the evaluation points and seeds
        for key in ("mask_ratio/decay", "alpha_mean/decay"):
            values = [point[key] for run in runs if run["variant"] == variant
                      for point in run.get("statistics", []) if key in point]
            if values:
                row[key.split("/")[0]] = sum(values) / len(values)
        if reference in by_variant:
            ref = by_variant[reference]
            common = sorted(set(seeds) & set(ref))
            row["vs_" + reference + "_pct"] = {}
            for key in keys:
                diffs = [100 * (seeds[s][key] - ref[s][key]) / ref[s][key] for s in common]
                mean, std = mean_std(diffs) if diffs else (math.nan, math.nan)
                row["vs_" + reference + "_pct"][key] = {"mean": mean, "std": std, "per_seed": diffs,
                                                        "lower_in_all_seeds": bool(diffs) and max(diffs) < 0}
        out[variant] = row
    return out


def mean_curves(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Mean and std over seeds of each variant's validation curve (all runs evaluate at the same steps)."""
    grouped: dict[str, list[list[list[float]]]] = {}
    for run in runs:
        grouped.setdefault(run["variant"], []).append(run["curve"])
    out = {}
    for variant, curves in grouped.items():
        length = min(len(c) for c in curves)
        stats = [mean_std([c[i][1] for c in curves]) for i in range(length)]
        out[variant] = {"step": [curves[0][i][0] for i in range(length)], "mean": [m for m, _ in stats],
                        "std": [s for _, s in stats]}
    return out


# ------------------------------------------------------------------------------------------------------- summary

def _fmt_pct(entry: dict[str, Any]) -> str:
    return f"{entry['mean']:+.2f} ± {entry['std']:.2f} %"


def _consistency(entry: dict[str, Any]) -> str:
    """Whether a paired difference has the same sign in every seed."""
    diffs = entry["per_seed"]
    if len(diffs) < 2:
        return " (one seed)"
    same = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    return " in every seed" if same else ", not in every seed"


def summary(result: dict[str, Any]) -> list[dict[str, str]]:
    """The rows for ``benchmarks/README.md``, derived from ``result``."""
    table_of = result["table"]
    seeds = len(next(iter(table_of.values()))["seeds"])
    scale = (f"{result['model_parameters'] / 1e6:.2f} M Llama, Tiny Shakespeare, {result['settings']['steps']} "
             f"steps, {seeds} seed{'s' if seeds > 1 else ''} at each optimizer's best lr")
    if result.get("quick"):
        scale += " (quick run: numbers mean little)"
    out = []
    if "alphaadam" in table_of and "adamw" in table_of:
        a, w = table_of["alphaadam"], table_of["adamw"]
        d = a["vs_adamw_pct"]["early"]
        if d["mean"] < 0 and d["lower_in_all_seeds"]:
            verdict = "reproduced (lower in every seed)" if seeds > 1 else "same direction (one seed)"
        elif d["mean"] < 0:
            verdict = "same direction on average, not in every seed"
        else:
            verdict = "not reproduced: AlphaAdam is not ahead of AdamW early"
        out.append({"claim": "AlphaAdam's validation loss below AdamW's early in training (Table 3: -2.4 % on the "
                             "average of 20 / 40 %)",
                    "measured": f"early average {a['early']['mean']:.4f} ± {a['early']['std']:.4f} vs AdamW "
                                f"{w['early']['mean']:.4f} ± {w['early']['std']:.4f}: {_fmt_pct(d)} (paired); "
                                + scale,
                    "verdict": verdict})
        d = a["vs_adamw_pct"]["late"]
        final = a["vs_adamw_pct"][str(FRACTIONS[-1])]
        out.append({"claim": "late in training AlphaAdam about even with AdamW (Table 3: late average -0.2 %, "
                             "AdamW best at 100 %)",
                    "measured": f"late average {_fmt_pct(d)}, at 100 % {_fmt_pct(final)} vs AdamW",
                    "verdict": ("AlphaAdam lower" if d["mean"] < 0 else "AlphaAdam higher") + _consistency(d)})
    expected = [v for v in ("alphaadam", "async", "adamw", "sync") if v in table_of]
    if len(expected) > 1:
        measured = sorted(expected, key=lambda v: table_of[v]["early"]["mean"])
        pairs = list(zip(expected, expected[1:]))
        held = [f"{x} < {y}" for x, y in pairs if table_of[x]["early"]["mean"] < table_of[y]["early"]["mean"]]
        out.append({"claim": "early ordering AlphaAdam < async mask < AdamW < sync mask (Table 3, spec §5.2)",
                    "measured": "early averages: " + " < ".join(
                        f"{v} {table_of[v]['early']['mean']:.4f}" for v in measured),
                    "verdict": "reproduced" if len(held) == len(pairs) else
                               f"not reproduced ({len(held)} of {len(pairs)} neighbouring pairs hold"
                               + (f": {', '.join(held)})" if held else ")")})
    tried = tried_lrs(result["sweep"])
    edge = [v for v, lr in result["best_lr"].items() if len(tried[v]) > 1 and lr in (tried[v][0], tried[v][-1])]
    out.append({"claim": "each optimizer compared at its own best lr (the sweep brackets it)",
                "measured": "; ".join(f"{v} {lr:g} of {', '.join(f'{x:g}' for x in tried[v])}"
                                      for v, lr in result["best_lr"].items()),
                "verdict": "no sweep (one lr)" if all(len(t) < 2 for t in tried.values()) else
                           "yes" if not edge else f"best lr at the edge of the grid for {', '.join(edge)}"})
    return out


# ----------------------------------------------------------------------------------------------------------- plot

COLORS = {"adamw": "tab:blue", "sync": "tab:red", "async": "tab:orange", "alphaadam": "tab:green",
          "sync_norm": "tab:purple"}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["settings"]["steps"]
    curves, rows = result["curves"], result["table"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    for variant, curve in curves.items():
        x, mean, std = curve["step"][1:], curve["mean"][1:], curve["std"][1:]
        left.plot(x, mean, color=COLORS[variant], label=f"{rows[variant]['label']} (lr {rows[variant]['lr']:g})")
        left.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                          color=COLORS[variant], alpha=0.2, lw=0)
    for f in FRACTIONS:
        for ax in (left, middle):
            ax.axvline(f * steps, color="grey", lw=0.5, ls=":")
    low = min(min(c["mean"][1:]) for c in curves.values())
    first = max(c["mean"][1] for c in curves.values())
    left.set_ylim(low - 0.05, min(first, low + 1.2) + 0.05)
    seeds = len(next(iter(rows.values()))["seeds"])
    left.set_title(f"validation loss, mean ± std over {seeds} seed(s)\n"
                   f"Llama {result['model_parameters'] / 1e6:.2f} M, Tiny Shakespeare, each at its best lr")
    left.set_xlabel("step")
    left.set_ylabel("validation loss (nats / char)")
    left.legend(fontsize=8)

    # paired difference to AdamW over training (same seed, same step)
    if "adamw" in curves:
        by = {}
        for run in result["runs"]:
            by.setdefault(run["variant"], {})[run["seed"]] = run["curve"]
        ref = by["adamw"]
        for variant, seeds_curves in by.items():
            common = sorted(set(seeds_curves) & set(ref))
            length = min(len(c[s]) for s in common for c in (seeds_curves, ref))  # shorter if a run diverged
            x = [ref[common[0]][i][0] for i in range(1, length)]
            stats = [mean_std([100 * (seeds_curves[s][i][1] / ref[s][i][1] - 1) for s in common])
                     for i in range(1, length)]
            mean = [m for m, _ in stats]
            std = [s for _, s in stats]
            middle.plot(x, mean, color=COLORS[variant], label=rows[variant]["label"], marker=".")
            middle.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=COLORS[variant], alpha=0.15, lw=0)
        for variant, paper in PAPER.items():
            if variant in curves:
                middle.plot([f * steps for f in FRACTIONS], [100 * (p / q - 1) for p, q in zip(paper, PAPER["adamw"])],
                            color=COLORS[variant], ls="none", marker="x", ms=7)
        middle.axhline(0, color="black", lw=0.7)
        middle.set_title("validation loss vs AdamW, same seed (%)\n× = the paper's Table 3 at the same fractions")
        middle.set_xlabel("step")
        middle.set_ylabel("relative difference to AdamW (%)")
        middle.legend(fontsize=8)

    lrs = sorted({r["lr"] for r in result["sweep"]})
    for variant in VARIANTS:
        sweep = sorted((r for r in result["sweep"] if r["variant"] == variant), key=lambda r: r["lr"])
        if not sweep:
            continue
        right.plot([r["lr"] for r in sweep], [r["at_fraction"][str(FRACTIONS[-1])] for r in sweep], marker="o",
                   color=COLORS[variant], label=f"{VARIANTS[variant][0]}, final")
        right.plot([r["lr"] for r in sweep], [early_late(r["at_fraction"])[0] for r in sweep], marker=".",
                   ls="--", color=COLORS[variant], alpha=0.6)
    right.set_xscale("log")
    right.minorticks_off()
    right.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    right.set_title(f"lr sweep (seed {result['settings']['sweep_seed']}): final validation loss (solid)\n"
                    "and early average of 20/40 % (dashed)")
    right.set_xlabel("peak learning rate")
    right.set_ylabel("validation loss (nats / char)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks run ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, few steps, 1 lr, 1 seed")
    add_common_arguments(parser)  # --output-dir, --data_dir
    parser.add_argument("--optimizers", nargs="+", choices=list(VARIANTS), default=None,
                        help="variants to run (default: all; AdamW is needed for the comparisons)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="lr sweep (default 5e-3 1e-2 2e-2)")
    parser.add_argument("--extend", type=int, default=2,
                        help="times the sweep may add one lr beyond the grid for an optimizer whose best lr is at "
                             "its edge (default 2; 0: never)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds at the best lr (default 3)")
    parser.add_argument("--sweep-seed", type=int, default=0, help="the seed of the lr sweep")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 400)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=None, help="fixed validation batches (default 8)")
    parser.add_argument("--eval-points", type=int, default=10,
                        help="validation every 1/N of the steps (a multiple of 5, so that 20/40/60/100 %% are hit)")
    parser.add_argument("--grad-clip", type=float, default=0.0,
                        help="clip the gradient norm at this value (default 0: no clipping)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel processes (default 1)")
    args = parser.parse_args(argv)
    if args.eval_points % 5:
        parser.error("--eval-points must be a multiple of 5")
    quick = args.quick
    args.lrs = args.lrs or ([1e-2] if quick else [5e-3, 1e-2, 2e-2])
    args.seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
    args.steps = args.steps or (20 if quick else 400)
    args.hidden = args.hidden or (32 if quick else 96)
    args.layers = args.layers or (1 if quick else 3)
    args.eval_batches = args.eval_batches or (2 if quick else 8)
    args.optimizers = args.optimizers or list(VARIANTS)
    return args


def _phases(args: argparse.Namespace, settings: dict[str, Any], pool, started: float):
    """Phase 1 (lr sweep, extended where the best lr is at an edge) and phase 2 (fresh seeds at the best lrs)."""
    # the optimizers of one lr run next to each other, so that changes of the machine's load hit them alike
    jobs = [{"settings": settings, "variant": v, "lr": lr, "seed": args.sweep_seed, "phase": "sweep"}
            for lr in args.lrs for v in args.optimizers]
    sweep = run_jobs(jobs, pool, "lr sweep")
    factor = (max(args.lrs) / min(args.lrs)) ** (1 / (len(args.lrs) - 1)) if len(args.lrs) > 1 else 2.0
    for _ in range(args.extend):
        extra = edge_extensions(sweep, factor)
        if not extra:
            break
        LOG.info("best lr at the edge of the grid, extending: %s", ", ".join(f"{v} {lr:g}" for v, lr in extra))
        sweep += run_jobs([{"settings": settings, "variant": v, "lr": lr, "seed": args.sweep_seed,
                            "phase": "sweep"} for v, lr in extra], pool, "lr sweep, extension")
    best = best_lrs(sweep)
    LOG.info("best lr: %s", ", ".join(f"{v} {lr:g}" for v, lr in best.items()))
    sweep_seconds = time.perf_counter() - started
    if len(args.lrs) == 1 and args.seeds == 1:
        return sweep, sweep, sweep_seconds  # nothing was selected: the sweep's runs are the final ones (quick)
    seeds = [args.sweep_seed + 1 + i for i in range(args.seeds)]
    jobs = [{"settings": settings, "variant": v, "lr": best[v], "seed": s, "phase": "final"}
            for s in seeds for v in args.optimizers]
    return sweep, run_jobs(jobs, pool, "seeds at best lr"), sweep_seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = {"steps": args.steps, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                "batch_size": args.batch_size, "context": args.context, "eval_batches": args.eval_batches,
                "eval_points": args.eval_points, "lrs": args.lrs, "seeds": args.seeds, "sweep_seed": args.sweep_seed,
                "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "grad_clip": args.grad_clip,
                "warmup_fraction": 0.05,
                "schedule": "linear warm-up (5 %) then cosine to 0", "threads": args.threads,
                "workers": args.workers, "extend": args.extend, "optimizers": args.optimizers,
                "variants": {v: VARIANTS[v][1] or "torch.optim.AdamW" for v in args.optimizers},
                "selection": "lowest final (100 %) validation loss of the sweep seed",
                "final_seeds": "sweep_seed + 1 ... sweep_seed + seeds (the sweep's runs are not reused)"}
    started = time.perf_counter()
    machine = machine_info()  # here, so that its load average is the one at the start
    _, _, vocab = _data()
    parameters = sum(p.numel() for p in tiny_llama(vocab, args.hidden, args.layers, args.heads, args.context)
                     .parameters())
    LOG.info("Llama %.2f M parameters, %d steps of %d x %d characters; lrs %s; %d seed(s); %d worker(s)",
             parameters / 1e6, args.steps, args.batch_size, args.context, args.lrs, args.seeds, args.workers)

    with contextlib.ExitStack() as stack:
        pool = None if args.workers <= 1 else stack.enter_context(
            multiprocessing.get_context("spawn").Pool(args.workers))
        sweep, runs, sweep_seconds = _phases(args, settings, pool, started)

    best = best_lrs(sweep)
    result = {"machine": machine, "settings": settings, "model_parameters": parameters, "best_lr": best,
              "paper_table3": PAPER, "table": table(runs), "curves": mean_curves(runs), "runs": runs, "sweep": sweep,
              "seconds": {"sweep": sweep_seconds, "total": time.perf_counter() - started}}
    path = write_result(result, args.output_dir, NAME, args.quick)
    plot(result, result_path(args.output_dir, NAME, args.quick, ".png"))
    for row in result["table"].values():
        LOG.info("%-34s lr %-7g %s | early %.4f ± %.4f | late %.4f ± %.4f | mask ratio %s, alpha %s", row["label"],
                 row["lr"], " ".join(f"{row[str(f)]['mean']:.4f}±{row[str(f)]['std']:.4f}" for f in FRACTIONS),
                 row["early"]["mean"], row["early"]["std"], row["late"]["mean"], row["late"]["std"],
                 f"{row['mask_ratio']:.3f}" if "mask_ratio" in row else "-",
                 f"{row['alpha_mean']:.3f}" if "alpha_mean" in row else "-")
    for row in summary(result):
        LOG.info("%s: %s -> %s", row["claim"], row["measured"], row["verdict"])
    LOG.info("wrote %s and .png (%.0f s)", path, result["seconds"]["total"])
    return result


if __name__ == "__main__":
    main()
