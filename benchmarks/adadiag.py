"""AdaDiag / AdaDiag++ vs AdamW on a small causal LM, and the step-time cost of the SVD refresh.

Not a test. Two parts, written to ``benchmarks/results/adadiag[_quick].json`` and ``.png``:

1. Sample efficiency: a Llama built from a config (~0.8M parameters, char-level, untied embeddings) trained on
   Tiny Shakespeare (``<data_dir>/tinyshakespeare/input.txt``, see ``_common.tiny_shakespeare``) with AdamW,
   AdaDiag (one-sided) and AdaDiag++ (two-sided) at a couple of learning rates, same data order, warm-up + cosine
   schedule. Reported: the validation curve, and the steps each run needs to reach the final validation loss of
   the best AdamW run (the paper claims 1.8-2x fewer steps than Adam for LLaMA pretraining; its sizes and steps
   are far larger).
2. Overhead: time of ``optimizer.step()`` alone (fixed gradients) for AdamW and for AdaDiag / AdaDiag++ at
   ``update_freq`` 1, 10, 50, 200, measured in interleaved chunks so that machine load hits all alike; the mean
   over 200 steps includes exactly 200 / T refreshes. A forward + backward of the same model is timed for scale.

Usage::

    python -m benchmarks run adadiag            # ~15 minutes on 2 (shared) CPU cores
    python -m benchmarks run adadiag --quick    # ~15 s after imports: a 30k-parameter model, 30 steps, one lr
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import (add_common_arguments, batches, char_data, lm_loss, machine_info,  # noqa: E402
                                tiny_llama, warmup_cosine, write_result)
from hf_alphaadam.optim import catalog  # noqa: E402

logger = logging.getLogger("adadiag")
# AdaDiag / AdaDiag++ with the default rotated moments, and AdaDiag++ with SOAP-style moments in the original space
OPTIMIZERS = ("adamw", "adadiag", "adadiag++", "adadiag++/original")
PAPER_SPEEDUP = 1.8  # the paper's 1.8-2x fewer steps than Adam


def build_model(vocab: int, args):
    """The benchmark's Llama: hidden 128 / 4 layers (quick: 32 / 2), 4 heads, seeded."""
    hidden, layers = (32, 2) if args.quick else (128, 4)
    return tiny_llama(vocab, hidden=hidden, layers=layers, heads=4, context=args.context, seed=0)


def make_optimizer(name: str, model, lr: float, args, update_freq: int = 10, foreach=None):
    common = dict(lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), eps=1e-8, **common)
    two_sided = name.startswith("adadiag++")
    moment_space = "original" if name.endswith("/original") else "rotated"
    return catalog.build("adadiag_pp" if two_sided else "adadiag", model.named_parameters(), eps=1e-8,
                         update_freq=update_freq, moment_space=moment_space, foreach=foreach, **common)


def train_run(name, lr, args, train, valid, vocab):
    """One training run: the validation curve (every ``eval_every`` steps, fixed batches) and the wall time."""
    model = build_model(vocab, args)
    optimizer = make_optimizer(name, model, lr, args)
    schedule = warmup_cosine(optimizer, args.steps)
    valid_batches = list(batches(valid, args.eval_batches, args.batch_size, args.context, seed=123))
    curve, start = [], time.perf_counter()

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            value = sum(lm_loss(model, b).item() for b in valid_batches) / len(valid_batches)
        model.train()
        curve.append((step, value))

    evaluate(0)
    for step, batch in enumerate(batches(train, args.steps, args.batch_size, args.context, seed=1), start=1):
        optimizer.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step)
    return {"optimizer": name, "lr": lr, "curve": curve, "final": curve[-1][1], "best": min(v for _, v in curve),
            "seconds": time.perf_counter() - start}


def steps_to(curve, target):
    for step, value in curve:
        if value <= target:
            return step
    return None


def overhead(args, train, vocab):
    """``optimizer.step()`` time per config on fixed gradients, interleaved in chunks; forward + backward for scale."""
    model = build_model(vocab, args)
    batch = next(batches(train, 1, args.batch_size, args.context, seed=2))
    fwd_bwd = []
    for _ in range(6):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        lm_loss(model, batch).backward()
        fwd_bwd.append(time.perf_counter() - start)
    configs = [("adamw", 1)] + [(name, t) for name in ("adadiag", "adadiag++") for t in (1, 10, 50, 200)]
    optimizers = {c: make_optimizer(c[0], model, 1e-6, args, update_freq=c[1]) for c in configs}
    times = {c: [] for c in configs}
    total = args.overhead_steps
    chunk = min(25, total)
    for _ in range(total // chunk):  # interleaved: machine load is shared alike
        for config in configs:
            optimizer = optimizers[config]
            for _ in range(chunk):
                start = time.perf_counter()
                optimizer.step()
                times[config].append(time.perf_counter() - start)
    result = {"forward_backward_ms": 1e3 * statistics.median(fwd_bwd[1:]), "steps_per_config": total, "configs": []}
    for (name, t), values in times.items():
        refresh = [v for i, v in enumerate(values) if name != "adamw" and i % t == 0]
        plain = [v for i, v in enumerate(values) if name == "adamw" or i % t != 0]
        result["configs"].append({
            "optimizer": name, "update_freq": t if name != "adamw" else None,
            "mean_step_ms": 1e3 * statistics.fmean(values),
            "median_plain_step_ms": 1e3 * statistics.median(plain) if plain else None,
            "mean_refresh_step_ms": 1e3 * statistics.fmean(refresh) if refresh else None,
        })
    for entry in result["configs"]:  # (refresh + (T - 1) plain) / T: independent of how many steps were timed
        t = entry["update_freq"]
        entry["amortized_step_ms"] = entry["mean_step_ms"] if t is None or entry["median_plain_step_ms"] is None \
            else (entry["mean_refresh_step_ms"] + (t - 1) * entry["median_plain_step_ms"]) / t
    adamw = result["configs"][0]["mean_step_ms"]
    for entry in result["configs"]:
        entry["vs_adamw"] = entry["mean_step_ms"] / adamw
        entry["share_of_train_step"] = entry["mean_step_ms"] / (entry["mean_step_ms"] + result["forward_backward_ms"])
    return result


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {"adamw": "tab:blue", "adadiag": "tab:orange", "adadiag++": "tab:green", "adadiag++/original": "tab:red"}
    styles = ["-", "--", ":"]
    lrs = sorted({run["lr"] for run in result["runs"]})
    for run in result["runs"]:
        steps, values = zip(*run["curve"][1:])
        left.plot(steps, values, styles[lrs.index(run["lr"]) % 3], color=colors[run["optimizer"]],
                  label=f"{run['optimizer']} lr={run['lr']:g}")
    left.axhline(result["target"], color="grey", lw=0.8)
    left.set_xlabel("step")
    left.set_ylabel("validation loss (nats/char)")
    left.set_title(f"Llama {result['model_parameters'] / 1e6:.2f}M, Tiny Shakespeare (grey: best AdamW final)")
    left.legend(fontsize=8)
    configs = result["overhead"]["configs"]
    labels = [c["optimizer"] + ("" if c["update_freq"] is None else f"\nT={c['update_freq']}") for c in configs]
    right.bar(range(len(configs)), [c["mean_step_ms"] for c in configs],
              color=[colors[c["optimizer"]] for c in configs])
    right.axhline(result["overhead"]["forward_backward_ms"], color="grey", lw=0.8, ls="--")
    right.set_xticks(range(len(configs)), labels, fontsize=7)
    right.set_ylabel("optimizer.step() ms (mean incl. refreshes)")
    right.set_title("step cost vs update_freq (dashed: forward+backward)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "smoke run: hidden 32 / 2 layers, context 32, 30 steps at lr 3e-3, 10 timed "
                                 "steps per overhead config")
    parser.add_argument("--lrs", type=float, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.context = 32 if args.quick else 64
    args.batch_size = 8 if args.quick else 16
    args.steps = 30 if args.quick else 300
    args.eval_every = 10 if args.quick else 25
    args.eval_batches = 2 if args.quick else 8
    args.overhead_steps = 10 if args.quick else 200  # quick: T=50 and T=200 refresh once, at the first step
    lrs = args.lrs or ([3e-3] if args.quick else [1e-3, 3e-3])
    train, valid, vocab = char_data()
    result = {"benchmark": "adadiag", "machine": machine_info(), "quick": args.quick,
              "settings": {"context": args.context, "batch_size": args.batch_size, "steps": args.steps,
                           "lrs": lrs, "betas": [0.9, 0.95], "weight_decay": 0.1, "update_freq": 10,
                           "schedule": "linear warm-up (5%) + cosine to 0", "eval_every": args.eval_every,
                           "eval_batches": args.eval_batches}}
    result["model_parameters"] = sum(p.numel() for p in build_model(vocab, args).parameters())
    runs = []
    for lr in lrs:  # the optimizers of one lr run back to back, so load changes hit them alike
        for name in OPTIMIZERS:
            run = train_run(name, lr, args, train, valid, vocab)
            logger.info("%-18s lr=%g: final %.4f best %.4f (%.0f s)", name, lr, run["final"], run["best"],
                        run["seconds"])
            runs.append(run)
    result["runs"] = runs
    best_adamw = min((r for r in runs if r["optimizer"] == "adamw"), key=lambda r: r["final"])
    result["target"] = best_adamw["final"]
    adamw_steps = steps_to(best_adamw["curve"], result["target"])
    for run in runs:
        run["steps_to_target"] = steps_to(run["curve"], result["target"])
        run["speedup_vs_best_adamw"] = (adamw_steps / run["steps_to_target"]) if run["steps_to_target"] else None
        print(f"{run['optimizer']:18s} lr={run['lr']:g}: steps to {result['target']:.4f}: {run['steps_to_target']} "
              f"(speed-up {run['speedup_vs_best_adamw']})", flush=True)
    result["overhead"] = overhead(args, train, vocab)
    for entry in result["overhead"]["configs"]:
        print(f"{entry['optimizer']:10s} T={entry['update_freq']}: {entry['mean_step_ms']:.1f} ms/step "
              f"({entry['vs_adamw']:.1f}x AdamW), refresh step {entry['mean_refresh_step_ms']}", flush=True)
    print(f"forward+backward: {result['overhead']['forward_backward_ms']:.1f} ms", flush=True)
    path = write_result(result, args.output_dir, "adadiag", args.quick)
    plot(result, path.with_suffix(".png"))
    logger.info("wrote %s and .png", path)
    return result


NAMES = {"adadiag": "AdaDiag", "adadiag++": "AdaDiag++", "adadiag++/original": "AdaDiag++ moment_space=\"original\""}


def summary(result: dict) -> list[dict[str, str]]:
    """README rows: per AdaDiag variant, its best speed-up to the best AdamW's final loss; the refresh cost at T=10."""
    settings = result["settings"]
    scale = (f"{result['model_parameters'] / 1e6:.2f}M Llama, {settings['steps']} steps, 1 seed, "
             f"target {result['target']:.3f}")
    rows = []
    for name, label in NAMES.items():
        runs = [r for r in result["runs"] if r["optimizer"] == name]
        if not runs:
            continue
        per_lr = "; ".join(f"lr {r['lr']:g}: " + (f"{r['steps_to_target']} steps ({r['speedup_vs_best_adamw']:.2f}x)"
                                                   if r["steps_to_target"] else "never")
                           for r in runs)
        best = max((r["speedup_vs_best_adamw"] or 0.0) for r in runs)
        verdict = ("meets" if best >= PAPER_SPEEDUP else
                   f"misses (faster than AdamW, below {PAPER_SPEEDUP}x)" if best > 1 else
                   "misses (not faster than AdamW)" if best > 0 else "misses (never reaches AdamW's loss)")
        rows.append({"claim": f"{label} reaches AdamW's best loss in {PAPER_SPEEDUP}-2x fewer steps (paper)",
                     "measured": f"{per_lr} ({scale})", "verdict": verdict})
    overhead = result["overhead"]
    at_10 = {c["optimizer"]: c for c in overhead["configs"] if c["update_freq"] == 10}
    if at_10:
        measured = ", ".join(f"{NAMES[n]} {c['vs_adamw']:.1f}x AdamW's step ({100 * c['share_of_train_step']:.0f} % "
                             "of a training step)" for n, c in at_10.items())
        rows.append({"claim": "cost of the eigenbasis refresh at the default update_freq=10 (no target)",
                     "measured": f"{measured}; forward+backward {overhead['forward_backward_ms']:.0f} ms",
                     "verdict": "cost noted"})
    return rows


if __name__ == "__main__":
    main()
