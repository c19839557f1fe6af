"""AdaPM's block ablation (the paper's Table 1 idea): which momentum choice costs quality, and how much memory
each saves.

Same model, corpus (Tiny Shakespeare), steps and schedule as ``adapm_convergence`` (``_adapm_runs``), and one
variant changed at a time from AdaPM's defaults (embedding / o_proj / lm_head none, v_proj full, q / k / MLP
low-rank rank 16, ``refit_iters=1``, ``residual="full"``, Adam's element-wise v):

- per block type, the momentum it does not have by default: the embedding (``embed_tokens`` and the untied
  ``lm_head``, one block) full / low-rank, Q / K none / full, V none / low-rank, attention output full / low-rank,
  MLP none / full;
- the rank 4 / 8 / 32 (16 is the default), ``refit_iters`` 0 / 2, ``residual`` "none" / "clip"
  (``residual_clip=1``), the compact second moment (``second_moment="mini"``), and no momentum on any matrix
  (``policy="none"``, the memory floor);
- AdamW as the reference, at its tuned lr.

Learning rates and seeds: the tuned lrs come from ``benchmarks/results/adapm_convergence.json`` (Tiny
Shakespeare). AdamW runs at its best lr, every AdaPM variant at AdaPM's best lr ``L``, with seeds 0 and 1, each
paired with AdamW's run of the same seed: the relative difference of the final validation loss with its 95 %
Student-t interval (2 seeds: 1 degree of freedom, a wide interval). Then the lr check: every AdaPM variant once
more at AdaPM's better neighbour in that sweep (``L / 2`` or ``2 L``), seed 0; a variant that is better there is
flagged (its rows stay at ``L``). So each variant runs at the tuned AdaPM lr with a one-sided check around it,
not at a per-variant optimum found by a bracketing sweep. Momentum bytes are the optimizer's first-moment state
after training (``exp_avg`` and the low-rank factors). The result is written after each seed and after the lr
check, so a stopped run leaves the part it finished (``complete`` in the JSON). The 62 runs took 31 minutes on
one thread of this 2-core machine under a load average of 1.5-6 (runs of 21-88 s).

Outputs: per variant the loss at 20 / 40 / 60 / 100 %, the paired gap to AdamW and to the default, the momentum
and total state bytes, the Pareto front of (momentum bytes, final loss), a Pareto plot, and the *recommended
default*: among the variants within 1 % of AdamW (mean gap) at no more momentum and total state than today's
default, or strictly better than the default on loss and memory, the one with the least momentum (``None`` when
no variant qualifies).

Usage::

    python -m benchmarks run adapm_ablation            # 62 runs of 25-75 s (one thread): 30-75 min
    python -m benchmarks run adapm_ablation --lr 0.005 --check-lr 0 --seeds 3 --variants rank4 mini   # a subset
    python -m benchmarks run adapm_ablation --quick    # smoke run (seconds): tiny model, 4 variants

Writes ``benchmarks/results/adapm_ablation[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # ``python benchmarks/adapm_ablation.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._adapm_runs import FRACTIONS, fmt_interval, model_parameters, paired_differences, run_jobs
from benchmarks._common import RESULTS, add_common_arguments, machine_info, result_path, write_result
from benchmarks.adapm_convergence import parse_args as convergence_args
from benchmarks.adapm_convergence import settings_of, uptime

NAME = "adapm_ablation"
LOG = logging.getLogger("benchmarks.adapm_ablation")
TARGET_GAP_PCT = 1.0
CORPUS = "shakespeare"
EMBEDDING, QK, V, O, MLP = r"embed_tokens|lm_head", r"q_proj|k_proj", r"v_proj", r"o_proj", \
    r"gate_proj|up_proj|down_proj"
NONE_BY_DEFAULT = "embed_tokens|lm_head|o_proj"  # the blocks without momentum in the default policy

# key: (group of the plot, label, AdaPM options; None = torch.optim.AdamW)
VARIANTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "adamw": ("reference", "AdamW", None),
    "default": ("reference", "default (as shipped)", {}),
    "embedding_full": ("block", "embedding + lm_head full", {"full_modules": EMBEDDING}),
    "embedding_lowrank": ("block", "embedding + lm_head low-rank", {"lowrank_modules": EMBEDDING}),
    "qk_none": ("block", "Q / K none", {"none_modules": QK}),
    "qk_full": ("block", "Q / K full", {"full_modules": QK}),
    "v_none": ("block", "V none", {"none_modules": V}),
    "v_lowrank": ("block", "V low-rank", {"lowrank_modules": V}),
    "o_full": ("block", "attention output full", {"full_modules": O}),
    "o_lowrank": ("block", "attention output low-rank", {"lowrank_modules": O}),
    "mlp_none": ("block", "MLP none", {"none_modules": MLP}),
    "mlp_full": ("block", "MLP full", {"full_modules": MLP}),
    "rank4": ("rank", "rank 4", {"rank": 4}),
    "rank8": ("rank", "rank 8", {"rank": 8}),
    "rank32": ("rank", "rank 32", {"rank": 32}),
    "refit0": ("refit", "refit_iters 0 (fixed random basis)", {"refit_iters": 0}),
    "refit2": ("refit", "refit_iters 2", {"refit_iters": 2}),
    "residual_none": ("residual", "residual none (pure L R)", {"residual": "none"}),
    "residual_clip": ("residual", "residual clip (1.0)", {"residual": "clip", "residual_clip": 1.0}),
    "mini": ("second moment", "compact v (second_moment=mini)", {"second_moment": "mini"}),
    "all_none": ("block", "no momentum on any matrix", {"policy": "none"}),
}
QUICK_VARIANTS = ("adamw", "default", "rank4", "mini")


# ---------------------------------------------------------------------------------------------- analysis

def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names whose ``(bytes, loss)`` no other point dominates (no more bytes and no higher loss, one of them
    strictly less), sorted by bytes. Non-finite losses are never on the front."""
    finite = {k: v for k, v in points.items() if math.isfinite(v[1])}
    front = [k for k, (b, loss) in finite.items()
             if not any(b2 <= b and l2 <= loss and (b2 < b or l2 < loss) for k2, (b2, l2) in finite.items() if k2 != k)]
    return sorted(front, key=lambda k: (finite[k][0], finite[k][1]))


def recommend(rows: dict[str, dict[str, Any]], target_pct: float = TARGET_GAP_PCT) -> dict[str, Any]:
    """The better default, from the per-variant ``rows`` (``gap_pct`` mean, ``final_loss``, ``momentum_bytes``,
    ``total_bytes``): among AdaPM variants within ``target_pct`` of AdamW (mean paired gap) at no more momentum
    and total state than ``default``, or strictly better than ``default`` in loss and both byte counts, the one
    with the least momentum (ties: least total state; at equal memory the default stays, then the lowest loss):
    the paper's aim is AdamW's quality with the least momentum, and the lowest loss among equal-memory variants
    would mostly pick seed noise.
    ``{"variant": None, ...}`` when none qualifies (the default itself may be the answer: then keep it)."""
    base = rows["default"]
    qualified = []
    for name, row in rows.items():
        if name == "adamw" or not math.isfinite(row["final_loss"]):
            continue
        no_more = row["momentum_bytes"] <= base["momentum_bytes"] and row["total_bytes"] <= base["total_bytes"]
        within = row["gap_pct"] <= target_pct
        better_on_both = (row["final_loss"] < base["final_loss"] and row["momentum_bytes"] < base["momentum_bytes"]
                          and row["total_bytes"] < base["total_bytes"])
        if (within and no_more) or better_on_both:
            qualified.append(name)
    if not qualified:
        return {"variant": None, "qualified": [], "rule": f"within {target_pct:g} % of AdamW at no more memory "
                                                          "than the default, or better than it on both"}
    best = min(qualified, key=lambda k: (rows[k]["momentum_bytes"], rows[k]["total_bytes"], k != "default",
                                         rows[k]["final_loss"]))
    return {"variant": best, "options": VARIANTS[best][2], "qualified": sorted(qualified),
            "rule": f"within {target_pct:g} % of AdamW (mean paired gap) at no more momentum and total state than "
                    "the default, or better than it on both; of those the least momentum (then total state; at "
                    "equal memory the default stays)"}


def variant_rows(runs: list[dict[str, Any]], checks: list[dict[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """Per variant: final loss (mean over the paired seeds), paired gaps to AdamW and to the default (95 % t),
    the loss at each fraction, momentum and total state bytes, and the lr check (``checks``: seed-0 runs at
    another lr): its final loss relative to the same variant's seed-0 run, in percent (negative: better there)."""
    vs_adamw = paired_differences(runs, "adamw")
    vs_default = paired_differences(runs, "default") if any(r["variant"] == "default" for r in runs) else {}
    final = str(FRACTIONS[-1])
    out = {}
    for name, row in vs_adamw.items():
        state = next(r["state_bytes"] for r in runs if r["variant"] == name)
        out[name] = {"label": VARIANTS[name][1], "group": VARIANTS[name][0], "seeds": row["seeds"],
                     "lr": next(r["lr"] for r in runs if r["variant"] == name),
                     "final_loss": row["loss"][final]["mean"], "loss": row["loss"],
                     "gap_pct": row["vs_adamw_pct"][final]["mean"], "vs_adamw_pct": row["vs_adamw_pct"],
                     "vs_default_pct": vs_default.get(name, {}).get("vs_default_pct"),
                     "momentum_bytes": state["momentum"], "total_bytes": state["total"]}
        seed0 = next((r for r in runs if r["variant"] == name and r["seed"] == 0), None)
        check = next((c for c in checks if c["variant"] == name), None)
        if seed0 is not None and check is not None:
            out[name]["lr_check"] = {"lr": check["lr"], "final_loss": check["at_fraction"][final],
                                     "vs_lr_pct": 100 * (check["at_fraction"][final] / seed0["at_fraction"][final]
                                                         - 1)}
    return out


# ---------------------------------------------------------------------------------------------------- main

def tuned_lrs(path: Path) -> dict[str, Any]:
    """AdamW's and AdaPM's best lr on Tiny Shakespeare from an ``adapm_convergence`` result, and AdaPM's better
    neighbour in that sweep (the lr of the ablation's lr check)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m benchmarks run adapm_convergence` first, or pass "
                                "--adamw-lr and --lrs")
    data = json.loads(path.read_text())["corpora"][CORPUS]
    best = data["best_lr"]
    sweep = {r["lr"]: r["at_fraction"][str(FRACTIONS[-1])] for r in data["sweep"] if r["variant"] == "adapm"}
    lower = max((lr for lr in sweep if lr < best["adapm"]), default=None)
    upper = min((lr for lr in sweep if lr > best["adapm"]), default=None)
    neighbour = min((lr for lr in (lower, upper) if lr is not None), key=lambda lr: sweep[lr])
    return {"adamw": best["adamw"], "adapm": best["adapm"], "neighbour": neighbour, "source": str(path)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks run adapm_ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 10 steps, 4 variants")
    add_common_arguments(parser)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="variants to run (default: all; adamw and default are always run)")
    parser.add_argument("--lr", type=float, default=None,
                        help="lr of every AdaPM variant (default: AdaPM's best from --tuned)")
    parser.add_argument("--check-lr", type=float, default=None,
                        help="the lr check's lr, seed 0 (default: AdaPM's better neighbour from --tuned; 0: no check)")
    parser.add_argument("--adamw-lr", type=float, default=None, help="AdamW's lr (default: its best from --tuned)")
    parser.add_argument("--tuned", type=Path, default=RESULTS / "adapm_convergence.json",
                        help="the adapm_convergence result the tuned lrs come from")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 at the lr (default 2)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.quick:
        args.lr, args.adamw_lr = args.lr or 5e-3, args.adamw_lr or 1e-2
        args.check_lr = 1e-2 if args.check_lr is None else args.check_lr
    elif None in (args.lr, args.check_lr, args.adamw_lr):
        tuned = tuned_lrs(args.tuned)
        args.lr, args.adamw_lr = args.lr or tuned["adapm"], args.adamw_lr or tuned["adamw"]
        args.check_lr = tuned["neighbour"] if args.check_lr is None else args.check_lr
    chosen = args.variants or (QUICK_VARIANTS if args.quick else list(VARIANTS))
    args.variants = ["adamw", "default"] + [v for v in chosen if v not in ("adamw", "default")]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    # the model and training settings of adapm_convergence (its defaults, or its quick ones)
    base = convergence_args((["--quick"] if args.quick else []) + (["--steps", str(args.steps)] if args.steps else [])
                            + ["--threads", str(args.threads)])
    settings = settings_of(base)
    machine, load_start, started = machine_info(), uptime(), time.perf_counter()

    def job(variant: str, lr: float, seed: int, phase: str) -> dict[str, Any]:
        return {"settings": settings, "corpus": CORPUS, "variant": variant, "options": VARIANTS[variant][2],
                "lr": lr, "seed": seed, "phase": phase}

    lrs = {v: args.adamw_lr if v == "adamw" else args.lr for v in args.variants}
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    done: list[int] = []

    def write(complete: bool) -> tuple[dict[str, Any], Path]:
        """The result of what ran so far (written after each phase, so that a stopped run leaves its part)."""
        rows = variant_rows(runs, checks)
        choice = {"corpus": CORPUS, "lr": args.lr, "check_lr": args.check_lr, "adamw_lr": args.adamw_lr,
                  "seeds": list(done), "planned_seeds": args.seeds, "variants": args.variants,
                  "lr_source": None if args.quick else str(args.tuned)}
        result = {"quick": args.quick, "complete": complete, "machine": machine, "settings": settings | choice,
                  "uptime": {"start": load_start, "end": uptime()},
                  "model_parameters": model_parameters(settings, CORPUS),
                  "options": {v: VARIANTS[v][2] for v in args.variants}, "lr": lrs, "rows": rows,
                  "pareto_front": pareto_front({k: (r["momentum_bytes"], r["final_loss"]) for k, r in rows.items()}),
                  "recommendation": recommend(rows), "runs": runs, "lr_check": checks,
                  "seconds": round(time.perf_counter() - started, 1)}
        path = write_result(result, args.output_dir, NAME, args.quick)
        plot(result, result_path(args.output_dir, NAME, args.quick, ".png"))
        return result, path

    for seed in range(args.seeds):
        runs += run_jobs([job(v, lrs[v], seed, "final") for v in args.variants], f"ablation seed {seed}")
        done.append(seed)
        result, path = write(complete=seed == args.seeds - 1 and not args.check_lr)
    if args.check_lr:
        pending = [v for v in args.variants if v != "adamw"]
        for variant in pending:  # written after each run: the check is the part most likely to be cut short
            checks += run_jobs([job(variant, args.check_lr, 0, "lr check")], "ablation lr check")
            result, path = write(complete=variant == pending[-1])
    for row in summary(result):
        LOG.info("%s: %s -> %s", row["claim"], row["measured"], row["verdict"])
    LOG.info("wrote %s and .png (%.0f s)", path, result["seconds"])
    return result


# ------------------------------------------------------------------------------------------------- summary

def _kib(value: float) -> str:
    return f"{value / 1024:.0f} KiB"


def summary(result: dict[str, Any]) -> list[dict[str, str]]:
    """README rows: per variant its final-loss gap to AdamW and to the default, and its momentum; the Pareto
    front; the recommended default."""
    rows, out = result["rows"], []
    base = rows["default"]
    scale = (f"{result['model_parameters'] / 1e6:.2f} M Llama, Tiny Shakespeare, {result['settings']['steps']} "
             f"steps, seeds {result['settings']['seeds']}")
    if result.get("quick"):
        scale += " (quick run: numbers mean little)"
    if result.get("complete") is False:
        scale += (f" (stopped early: {len(result['settings']['seeds'])} of {result['settings']['planned_seeds']} "
                  f"seeds, lr check on {len(result.get('lr_check', []))} of {len(rows) - 1} variants)")
    final = str(FRACTIONS[-1])
    for name, row in rows.items():
        if name == "adamw":
            continue
        vs_default = row["vs_default_pct"][final]
        out.append({"claim": f"AdaPM {row['label']}: final validation loss vs tuned AdamW and vs the default",
                    "measured": f"{row['final_loss']:.4f} (lr {row['lr']:g}): vs AdamW "
                                f"{fmt_interval(row['vs_adamw_pct'][final])}"
                                + ("" if name == "default" else f", vs default {fmt_interval(vs_default)}")
                                + f"; momentum {_kib(row['momentum_bytes'])} "
                                  f"({row['momentum_bytes'] / rows['adamw']['momentum_bytes']:.0%} of AdamW's)"
                                + _lr_check(row) + (f"; {scale}" if name == "default" else ""),
                    "verdict": _verdict(row, base, name)})
    front = pareto_front({k: (r["momentum_bytes"], r["final_loss"]) for k, r in rows.items()})
    out.append({"claim": "Pareto front of (momentum bytes, final loss)",
                "measured": " < ".join(f"{k} {_kib(rows[k]['momentum_bytes'])} / {rows[k]['final_loss']:.4f}"
                                       for k in front),
                "verdict": "noted"})
    pick = recommend(rows)  # from the rows, with this module's rule (not the stored field)
    if pick["variant"] is None:
        measured, verdict = "no variant is within 1 % of AdamW at no more memory than the default", "keep default"
    elif pick["variant"] == "default":
        measured, verdict = f"the default qualifies and no other variant beats it ({pick['rule']})", "keep default"
    else:
        row = rows[pick["variant"]]
        vs_default = row["vs_default_pct"][final]
        measured = (f"{pick['variant']} {json.dumps(pick['options'])}: {row['final_loss']:.4f} vs default "
                    f"{base['final_loss']:.4f} ({fmt_interval(vs_default)}), gap to AdamW "
                    f"{fmt_interval(row['vs_adamw_pct'][final])}, momentum {_kib(row['momentum_bytes'])} vs "
                    f"{_kib(base['momentum_bytes'])}, total state {_kib(row['total_bytes'])} vs "
                    f"{_kib(base['total_bytes'])}; qualified: {', '.join(pick['qualified'])}")
        separated = math.isfinite(vs_default["half_width_95"]) and abs(vs_default["mean"]) > vs_default[
            "half_width_95"]
        verdict = (f"candidate default: {pick['variant']} (less memory, within 1 % on the mean of "
                   f"{len(row['seeds'])} seeds" + ("" if separated else "; its loss is not separated from the "
                                                   "default's by the 95 % interval") + ")")
    out.append({"claim": "a better default: within 1 % of tuned AdamW at no more memory than today's",
                "measured": measured, "verdict": verdict})
    return out


def _lr_check(row: dict[str, Any]) -> str:
    """``; at lr 0.005 (seed 0) +0.31 %`` where the lr check ran, flagged when the other lr was better."""
    check = row.get("lr_check")
    if check is None:
        return ""
    flag = " (better there: its best lr may differ)" if check["vs_lr_pct"] < 0 else ""
    return f"; at lr {check['lr']:g} (seed 0) {check['vs_lr_pct']:+.2f} %{flag}"


def _verdict(row: dict[str, Any], base: dict[str, Any], name: str) -> str:
    """Whether the paired interval of the final loss separates the variant from the default (and from AdamW)."""
    final = str(FRACTIONS[-1])
    if name == "default":
        entry = row["vs_adamw_pct"][final]
    else:
        entry = row["vs_default_pct"][final]
    half = entry["half_width_95"]
    if not math.isfinite(entry["mean"]):
        return "diverged"
    if not math.isfinite(half):
        return "not shown (one seed)"
    other = "AdamW" if name == "default" else "the default"
    if entry["mean"] - half > 0:
        return f"worse than {other}"
    if entry["mean"] + half < 0:
        return f"better than {other}"
    return f"not shown vs {other} (95 % interval covers 0)"


# ---------------------------------------------------------------------------------------------------- plot

GROUP_COLORS = {"reference": "black", "block": "tab:blue", "rank": "tab:green", "refit": "tab:orange",
                "residual": "tab:purple", "second moment": "tab:red"}


def plot(result: dict[str, Any], path: Path) -> None:
    """Final validation loss against momentum bytes, every variant; the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(11, 7))
    for group, color in GROUP_COLORS.items():
        names = [k for k, r in rows.items() if r["group"] == group and math.isfinite(r["final_loss"])]
        ax.scatter([rows[k]["momentum_bytes"] / 1024 for k in names], [rows[k]["final_loss"] for k in names],
                   color=color, label=group, zorder=3)
        for k in names:  # the range over the seeds
            values = rows[k]["loss"][str(FRACTIONS[-1])]["values"]
            ax.vlines(rows[k]["momentum_bytes"] / 1024, min(values), max(values), color=color, lw=0.8, alpha=0.5)
        for k in names:
            ax.annotate(k, (rows[k]["momentum_bytes"] / 1024, rows[k]["final_loss"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    front = result["pareto_front"]
    ax.plot([rows[k]["momentum_bytes"] / 1024 for k in front], [rows[k]["final_loss"] for k in front],
            color="grey", ls="--", lw=1, label="Pareto front", zorder=2)
    adamw = rows["adamw"]["final_loss"]
    ax.axhline(adamw * (1 + TARGET_GAP_PCT / 100), color="red", lw=0.7, ls=":", label="AdamW + 1 %")
    ax.set_xlabel("momentum bytes (KiB)")
    ax.set_ylabel(f"final validation loss, mean over seeds {result['settings']['seeds']} (bar: their range)")
    ax.set_title(f"AdaPM block ablation: {result['model_parameters'] / 1e6:.2f} M Llama, Tiny Shakespeare, "
                 f"{result['settings']['steps']} steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
