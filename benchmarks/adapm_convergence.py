"""AdaPM vs a tuned AdamW on a small char-level Llama: each at its best lr, 3 seeds, paired differences, 2 corpora.

The paper's claim (arXiv 2510.09103): AdaPM matches AdamW with over 90 % less momentum memory. Tuned baselines
shrink most claimed gains (Wen et al. 2025), so every optimizer gets its own learning rate:

- optimizers: ``torch.optim.AdamW`` (``adamw``), AdaPM with its defaults (``adapm``: embedding / o_proj / lm_head
  without momentum, v_proj full, q / k / MLP low-rank rank 16, residual "full"), and AdaPM with the compact
  Adam-mini-style second moment (``adapm_mini``, the ``optim="adapm_mini"`` preset: ``second_moment="mini"``);
- model: ``_common.tiny_llama`` hidden 96, 3 layers, 4 heads, untied embeddings (~0.35 M parameters), trained from
  scratch, batch 8 x 128 characters, 500 steps, linear warm-up (5 %) then cosine to 0, betas (0.9, 0.95),
  eps 1e-8, weight decay 0.1 on >= 2-D weights, gradient norm clipped at 1;
- corpora (``_adapm_runs``): Tiny Shakespeare (the headline) and GSM8K's training problems (a second
  distribution, so that a conclusion is not tuned to one data set);
- phase 1, per corpus: every optimizer at lr 2.5e-3, 5e-3, 1e-2, 2e-2 with seed 0; the best lr is the lowest final
  validation loss; where it is the smallest / largest lr tried, one more lr a factor 2 beyond (at most twice),
  so that the chosen lr is bracketed (the edge check; reported);
- phase 2: each optimizer at its best lr with 3 fresh seeds (1, 2, 3); validation loss at 20 / 40 / 60 / 100 % of
  training; the paired (same seed) relative difference to AdamW with its 95 % Student-t interval over the seeds;
- memory: the optimizer-state bytes after training, split into momentum and second moment.

Verdicts (``summary``): the 1 % target "meets" only when the whole 95 % interval of the final-loss gap is below
+1 %, "misses" when the whole interval is above it, and "not shown" when it covers +1 %; "lower / higher than
AdamW" only when the interval excludes 0.

Usage::

    python -m benchmarks run adapm_convergence            # 45 runs of 25-90 s (one thread): 38 min at load 0.5-4
    python -m benchmarks run adapm_convergence --corpora shakespeare --seeds 2    # a shorter run
    python -m benchmarks run adapm_convergence --quick    # smoke run (seconds): tiny model, 2 lrs, 2 seeds
    python -m benchmarks run adapm_convergence --add-variant mlp_none   # + one adapm_ablation variant (~20 runs)

Writes ``benchmarks/results/adapm_convergence[_quick].json`` and ``.png`` (``--output-dir`` to change). The quick
mode is a smoke run whose numbers mean little.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # ``python benchmarks/adapm_convergence.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._adapm_runs import (CORPORA, FRACTIONS, fmt_interval, interval_verdict, model_parameters,
                                    paired_differences, run_jobs, sweep_then_seeds)
from benchmarks._common import (add_common_arguments, at_edge, best_lrs, machine_info, mean_std, result_path,
                                tried_lrs, write_result)

NAME = "adapm_convergence"
LOG = logging.getLogger("benchmarks.adapm_convergence")
TARGET_GAP_PCT = 1.0  # AdaPM's final validation loss within 1 % of tuned AdamW's

# key: (label, AdaPM options; None = torch.optim.AdamW)
VARIANTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "adamw": ("AdamW", None),
    "adapm": ("AdaPM (defaults)", {}),
    "adapm_mini": ("AdaPM mini (second_moment=mini)", {"second_moment": "mini"}),
}


def uptime() -> str:
    """The load as ``uptime`` shows it (load averages over 1 / 5 / 15 minutes)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks run adapm_convergence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 10 steps, 2 lrs, 2 seeds")
    add_common_arguments(parser)  # --output-dir, --data_dir
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA))
    parser.add_argument("--optimizers", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="lr grid, evenly spaced in log (default 2.5e-3 5e-3 1e-2 2e-2)")
    parser.add_argument("--extend", type=int, default=2, help="times the grid may grow past an edge (default 2)")
    parser.add_argument("--seeds", type=int, default=None, help="fresh seeds at the best lr (default 3)")
    parser.add_argument("--sweep-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 500)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 96)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 3)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=None, help="characters per sequence (default 128)")
    parser.add_argument("--eval-batches", type=int, default=None, help="fixed validation batches (default 8)")
    parser.add_argument("--eval-points", type=int, default=10, help="validation every 1/N of training (N % 5 == 0)")
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    parser.add_argument("--add-variant", default=None, metavar="ABLATION_VARIANT",
                        help="add one of adapm_ablation's AdaPM variants to the stored result (its own lr sweep "
                             "and seeds on each corpus; nothing else is re-run)")
    args = parser.parse_args(argv)
    if args.eval_points % 5:
        parser.error(f"--eval-points must be a multiple of 5 (to hit 20/40/60/100 %), got {args.eval_points}")
    quick = args.quick
    args.lrs = sorted(args.lrs or ([5e-3, 1e-2] if quick else [2.5e-3, 5e-3, 1e-2, 2e-2]))
    args.seeds = args.seeds if args.seeds is not None else (2 if quick else 3)
    args.steps = args.steps or (10 if quick else 500)
    args.hidden = args.hidden or (32 if quick else 96)
    args.layers = args.layers or (1 if quick else 3)
    args.context = args.context or (32 if quick else 128)
    args.eval_batches = args.eval_batches or (2 if quick else 8)
    if quick:
        args.extend = min(args.extend, 1)
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings every run of the benchmark shares (stored in the JSON)."""
    return {"steps": args.steps, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
            "batch_size": args.batch_size, "context": args.context, "eval_batches": args.eval_batches,
            "eval_points": args.eval_points, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
            "grad_clip": args.grad_clip, "warmup_fraction": 0.05, "threads": args.threads,
            "schedule": "linear warm-up (5 %) then cosine to 0"}


def corpus_result(corpus: str, sweep: list[dict], runs: list[dict], settings: dict[str, Any]) -> dict[str, Any]:
    """What one corpus's sweep and seeds measured: best lrs, edge check, paired table, mean curves, state bytes."""
    table = paired_differences(runs)
    state = {r["variant"]: r["state_bytes"] for r in runs}
    curves = {}
    for variant in table:
        mine = [r["curve"] for r in runs if r["variant"] == variant]
        length = min(len(c) for c in mine)
        curves[variant] = {"step": [mine[0][i][0] for i in range(length)],
                           "mean": [mean_std([c[i][1] for c in mine])[0] for i in range(length)]}
    return {"corpus": corpus, "model_parameters": model_parameters(settings, corpus), "best_lr": best_lrs(sweep),
            "tried_lrs": tried_lrs(sweep), "best_lr_at_edge": at_edge(sweep), "table": table,
            "state_bytes": state, "curves": curves, "sweep": sweep, "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.add_variant:
        return add_variant(args)
    settings = settings_of(args)
    machine = machine_info()
    load_start = uptime()
    started = time.perf_counter()
    variants = {v: VARIANTS[v][1] for v in args.optimizers}
    factor = (args.lrs[-1] / args.lrs[0]) ** (1 / (len(args.lrs) - 1)) if len(args.lrs) > 1 else 2.0
    seeds = [args.sweep_seed + 1 + i for i in range(args.seeds)]
    corpora = {}
    for corpus in args.corpora:
        sweep, runs = sweep_then_seeds(variants, {v: args.lrs for v in variants}, corpus, settings, seeds,
                                       args.sweep_seed, args.extend, factor)
        corpora[corpus] = corpus_result(corpus, sweep, runs, settings)
    sweep_settings = {"lrs": args.lrs, "extend": args.extend, "seeds": seeds, "sweep_seed": args.sweep_seed,
                      "variants": {v: VARIANTS[v][1] for v in variants}}
    result = {"quick": args.quick, "machine": machine, "settings": settings | sweep_settings,
              "uptime": {"start": load_start, "end": uptime()}, "target_gap_pct": TARGET_GAP_PCT,
              "corpora": corpora, "seconds": round(time.perf_counter() - started, 1)}
    path = write_result(result, args.output_dir, NAME, args.quick)
    plot(result, result_path(args.output_dir, NAME, args.quick, ".png"))
    for row in summary(result):
        LOG.info("%s: %s -> %s", row["claim"], row["measured"], row["verdict"])
    LOG.info("wrote %s and .png (%.0f s)", path, result["seconds"])
    return result


def add_variant(args: argparse.Namespace) -> dict[str, Any]:
    """``--add-variant NAME``: give ``adapm_ablation``'s variant ``NAME`` the same treatment as the stored
    optimizers on each stored corpus (the lrs AdaPM was swept at with the sweep seed, edge extensions, then the
    stored seeds at its best lr) and add it to the result as ``adapm_<NAME>``. AdamW's and AdaPM's stored runs are
    its pairs: on one thread the same settings and seed reproduce a run bit for bit (the ablation's seed-0 runs
    equal this sweep's), so nothing else is re-run."""
    from benchmarks.adapm_ablation import VARIANTS as ABLATION

    if args.add_variant not in ABLATION or ABLATION[args.add_variant][2] is None:
        raise SystemExit(f"--add-variant {args.add_variant!r}: not an AdaPM variant of adapm_ablation; choose "
                         f"from {', '.join(k for k, v in ABLATION.items() if v[2] is not None)}")
    path = result_path(args.output_dir, NAME, args.quick)
    if not path.is_file():
        raise SystemExit(f"--add-variant needs a stored result: {path} not found (run the benchmark first)")
    result = json.loads(path.read_text())
    key, (_, label, options) = f"adapm_{args.add_variant}", ABLATION[args.add_variant]
    started, load_start = time.perf_counter(), uptime()
    stored = result["settings"]
    for corpus, data in result["corpora"].items():
        grid = data["tried_lrs"]["adapm"]
        factor = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1)) if len(grid) > 1 else 2.0
        sweep, runs = sweep_then_seeds({key: options}, {key: grid}, corpus, stored, stored["seeds"],
                                       stored["sweep_seed"], stored["extend"], factor)
        keep = [r for r in data["sweep"] if r["variant"] != key], [r for r in data["runs"] if r["variant"] != key]
        result["corpora"][corpus] = corpus_result(corpus, keep[0] + sweep, keep[1] + runs, stored)
    result.setdefault("added", {})[key] = {"label": f"AdaPM, {label} (adapm_ablation's {args.add_variant})",
                                           "options": options, "uptime": {"start": load_start, "end": uptime()},
                                           "seconds": round(time.perf_counter() - started, 1)}
    write_result(result, args.output_dir, NAME, args.quick)
    plot(result, result_path(args.output_dir, NAME, args.quick, ".png"))
    for row in summary(result):
        LOG.info("%s: %s -> %s", row["claim"], row["measured"], row["verdict"])
    return result


def label_of(result: dict[str, Any], variant: str) -> str:
    """The label of an optimizer of :data:`VARIANTS` or of one added with ``--add-variant``."""
    return VARIANTS[variant][0] if variant in VARIANTS else result["added"][variant]["label"]


def lr_of(result: dict[str, Any], corpus: str, variant: str) -> float:
    """The lr a variant's seed runs used (its best in the sweep)."""
    return next(r["lr"] for r in result["corpora"][corpus]["runs"] if r["variant"] == variant)


# ------------------------------------------------------------------------------------------------- summary

def scale_of(result: dict[str, Any], corpus: str) -> str:
    """``0.35 M Llama, shakespeare, 500 steps of 8 x 128, 3 seeds at each one's best lr``."""
    s, data = result["settings"], result["corpora"][corpus]
    text = (f"{data['model_parameters'] / 1e6:.2f} M Llama, {corpus}, {s['steps']} steps of {s['batch_size']} x "
            f"{s['context']}, {len(s['seeds'])} seeds at each one's best lr")
    return text + (" (quick run: numbers mean little)" if result.get("quick") else "")


def summary(result: dict[str, Any]) -> list[dict[str, str]]:
    """README rows per corpus: each AdaPM variant's final loss gap to tuned AdamW (target: within 1 %), its early
    gaps, its state, and whether every best lr is bracketed by the grid."""
    rows = []
    final = str(FRACTIONS[-1])
    for corpus, data in result["corpora"].items():
        table, best, state = data["table"], data["best_lr"], data["state_bytes"]
        if "adamw" not in table:
            raise ValueError(f"the {corpus} run has no AdamW baseline")
        adamw = table["adamw"]["loss"][final]
        for variant, row in table.items():
            if variant == "adamw":
                continue
            label = label_of(result, variant)
            gap = row["vs_adamw_pct"][final]
            early = ", ".join(f"{float(f):.0%} {fmt_interval(row['vs_adamw_pct'][str(f)])}" for f in FRACTIONS[:-1])
            vs_default = ""
            if variant in result.get("added", {}) and "adapm" in table:  # an added variant: also vs the default
                entry = paired_differences(data["runs"], "adapm")[variant]["vs_adapm_pct"][final]
                verdict = interval_verdict(entry).replace("AdamW", "the default")
                vs_default = f"; vs AdaPM's default {fmt_interval(entry)}, {verdict}"
            rows.append({"claim": f"{label} within {TARGET_GAP_PCT:g} % of tuned AdamW's final validation loss "
                                  f"({corpus})",
                         "measured": f"{row['loss'][final]['mean']:.4f} vs {adamw['mean']:.4f}: {fmt_interval(gap)} "
                                     f"(paired, 95 % t){vs_default}; lr {lr_of(result, corpus, variant):g} vs AdamW "
                                     f"{best['adamw']:g}; "
                                     + scale_of(result, corpus),
                         "verdict": interval_verdict(gap, TARGET_GAP_PCT)})
            early_verdicts = "; ".join(f"{float(f):.0%}: {interval_verdict(row['vs_adamw_pct'][str(f)])}"
                                       for f in FRACTIONS[:2])
            rows.append({"claim": f"{label} vs AdamW early in training, 20 / 40 / 60 % ({corpus}; the paper's "
                                  "claimed strength, no target)",
                         "measured": early, "verdict": early_verdicts})
            mine, theirs = state[variant], state["adamw"]
            rows.append({"claim": f"{label} optimizer state ({corpus}; paper: momentum > 90 % smaller)",
                         "measured": f"momentum {mine['momentum'] / theirs['momentum']:.1%}, total "
                                     f"{mine['total'] / theirs['total']:.1%} of AdamW's "
                                     f"({theirs['total'] / 2**20:.2f} MiB)",
                         "verdict": "noted"})
        edge = data["best_lr_at_edge"]
        rows.append({"claim": f"each optimizer at its own best lr, bracketed by the grid ({corpus})",
                     "measured": "; ".join(f"{v} {lr:g} of {', '.join(f'{x:g}' for x in data['tried_lrs'][v])}"
                                           for v, lr in best.items()),
                     "verdict": "yes" if not edge else f"best lr at the edge of the grid for {', '.join(edge)}"})
    return rows


# ---------------------------------------------------------------------------------------------------- plot

COLORS = {"adamw": "tab:blue", "adapm": "tab:green", "adapm_mini": "tab:orange"}


def plot(result: dict[str, Any], path: Path) -> None:
    """Per corpus: mean validation curves, the paired difference to AdamW over training, the lr sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = result["corpora"]
    steps = result["settings"]["steps"]
    fig, axes = plt.subplots(len(corpora), 3, figsize=(16, 4.5 * len(corpora)), squeeze=False)
    for (left, middle, right), (corpus, data) in zip(axes, corpora.items()):
        for variant, curve in data["curves"].items():
            left.plot(curve["step"][1:], curve["mean"][1:], color=COLORS.get(variant),
                      label=f"{label_of(result, variant)} (lr {lr_of(result, corpus, variant):g})")
        left.set_title(f"{corpus}: validation loss, mean over seeds {result['settings']['seeds']}")
        left.set_xlabel("step")
        left.set_ylabel("validation loss (nats / char)")
        left.legend(fontsize=8)
        for shift, (variant, row) in enumerate(data["table"].items()):
            if variant == "adamw":
                continue
            x = [f * steps + 4 * shift for f in FRACTIONS]  # side by side, not on top of each other
            entries = [row["vs_adamw_pct"][str(f)] for f in FRACTIONS]
            middle.errorbar(x, [e["mean"] for e in entries], yerr=[e["half_width_95"] for e in entries],
                            color=COLORS.get(variant), marker="o", capsize=3, label=label_of(result, variant))
        middle.axhline(0, color="black", lw=0.7)
        middle.axhline(TARGET_GAP_PCT, color="red", lw=0.7, ls="--", label=f"+{TARGET_GAP_PCT:g} % target")
        middle.set_title(f"{corpus}: paired difference to AdamW (%), 95 % t interval")
        middle.set_xlabel("step")
        middle.legend(fontsize=8)
        for variant in data["tried_lrs"]:
            sweep = sorted((r for r in data["sweep"] if r["variant"] == variant), key=lambda r: r["lr"])
            right.plot([r["lr"] for r in sweep], [r["at_fraction"][str(FRACTIONS[-1])] for r in sweep], marker="o",
                       color=COLORS.get(variant), label=label_of(result, variant))
        right.set_xscale("log")
        right.minorticks_off()
        lrs = sorted({r["lr"] for r in data["sweep"]})
        right.set_xticks(lrs, [f"{lr:g}" for lr in lrs], fontsize=7)
        right.set_title(f"{corpus}: lr sweep (seed {result['settings']['sweep_seed']}), final validation loss")
        right.set_xlabel("peak learning rate")
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
