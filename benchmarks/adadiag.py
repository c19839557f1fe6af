"""AdaDiag / AdaDiag++ vs AdamW on a small causal LM, and the step-time cost of the SVD refresh.

Not a test. Two parts, written to ``benchmarks/results/adadiag[_quick].json`` and ``.png``:

1. Sample efficiency: a Llama built from a config (~0.8M parameters, char-level, untied embeddings) trained on
   Tiny Shakespeare (``/work/shared/data/tinyshakespeare/input.txt``) with AdamW, AdaDiag (one-sided) and
   AdaDiag++ (two-sided) at a couple of learning rates, same data order, warm-up + cosine schedule. Reported: the
   validation curve, and the steps each run needs to reach the final validation loss of the best AdamW run
   (the paper claims 1.8-2x fewer steps than Adam for LLaMA pretraining; its sizes and steps are far larger).
2. Overhead: time of ``optimizer.step()`` alone (fixed gradients) for AdamW and for AdaDiag / AdaDiag++ at
   ``update_freq`` 1, 10, 50, 200, measured in interleaved chunks so that machine load hits all alike; the mean
   over 200 steps includes exactly 200 / T refreshes. A forward + backward of the same model is timed for scale.

Usage::

    python benchmarks/adadiag.py            # ~15 minutes on 2 (shared) CPU cores
    python benchmarks/adadiag.py --quick    # ~2 minutes, smaller model and fewer steps
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hf_alphaadam import AdaDiag

DATA = Path("/work/shared/data/tinyshakespeare/input.txt")
RESULTS = Path(__file__).resolve().parent / "results"
# AdaDiag / AdaDiag++ with the default rotated moments, and AdaDiag++ with SOAP-style moments in the original space
OPTIMIZERS = ("adamw", "adadiag", "adadiag++", "adadiag++/original")


def load_data():
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    return data[:split], data[split:], len(chars)


def batches(data: torch.Tensor, count: int, batch_size: int, context: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        starts = torch.randint(0, len(data) - context - 1, (batch_size,), generator=generator)
        yield torch.stack([data[s:s + context + 1] for s in starts.tolist()])


def build_model(vocab: int, quick: bool, context: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers = (64, 2) if quick else (128, 4)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(2.75 * hidden),
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=context + 1, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def loss_of(model, batch):
    """Mean next-character cross-entropy (nats) over a ``[batch, context + 1]`` window."""
    logits = model(input_ids=batch[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].reshape(-1))


def make_optimizer(name: str, model, lr: float, args, update_freq: int = 10, foreach=None):
    common = dict(lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), eps=1e-8, **common)
    two_sided = name.startswith("adadiag++")
    moment_space = "original" if name.endswith("/original") else "rotated"
    return AdaDiag(model.named_parameters(), eps=1e-8, update_freq=update_freq, two_sided=two_sided,
                   moment_space=moment_space, foreach=foreach, **common)


def train_run(name, lr, args, train, valid, vocab):
    model = build_model(vocab, args.quick, args.context)
    optimizer = make_optimizer(name, model, lr, args)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    valid_batches = list(batches(valid, args.eval_batches, args.batch_size, args.context, seed=123))
    curve, start = [], time.perf_counter()

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            value = sum(loss_of(model, b).item() for b in valid_batches) / len(valid_batches)
        model.train()
        curve.append((step, value))

    evaluate(0)
    for step, batch in enumerate(batches(train, args.steps, args.batch_size, args.context, seed=1), start=1):
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
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
    model = build_model(vocab, args.quick, args.context)
    batch = next(batches(train, 1, args.batch_size, args.context, seed=2))
    fwd_bwd = []
    for _ in range(6):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss_of(model, batch).backward()
        fwd_bwd.append(time.perf_counter() - start)
    configs = [("adamw", 1)] + [(name, t) for name in ("adadiag", "adadiag++") for t in (1, 10, 50, 200)]
    optimizers = {c: make_optimizer(c[0], model, 1e-6, args, update_freq=c[1]) for c in configs}
    times = {c: [] for c in configs}
    chunk, total = 25, args.overhead_steps
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


def machine():
    return {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_start": os.getloadavg()}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lrs", type=float, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.context = 64
    args.batch_size = 16
    args.steps = 100 if args.quick else 300
    args.eval_every = 20 if args.quick else 25
    args.eval_batches = 4 if args.quick else 8
    args.overhead_steps = 50 if args.quick else 200  # quick: T=200 then never refreshes past step 1
    lrs = args.lrs or ([3e-3] if args.quick else [1e-3, 3e-3])
    train, valid, vocab = load_data()
    result = {"benchmark": "adadiag", "machine": machine(), "quick": args.quick,
              "settings": {"context": args.context, "batch_size": args.batch_size, "steps": args.steps,
                           "lrs": lrs, "betas": [0.9, 0.95], "weight_decay": 0.1, "update_freq": 10,
                           "schedule": "linear warm-up (5%) + cosine to 0", "eval_every": args.eval_every,
                           "eval_batches": args.eval_batches}}
    result["model_parameters"] = sum(p.numel() for p in build_model(vocab, args.quick, args.context).parameters())
    runs = []
    for lr in lrs:  # the optimizers of one lr run back to back, so load changes hit them alike
        for name in OPTIMIZERS:
            run = train_run(name, lr, args, train, valid, vocab)
            print(f"{name:10s} lr={lr:g}: final {run['final']:.4f} best {run['best']:.4f} ({run['seconds']:.0f}s)",
                  flush=True)
            runs.append(run)
    result["runs"] = runs
    best_adamw = min((r for r in runs if r["optimizer"] == "adamw"), key=lambda r: r["final"])
    result["target"] = best_adamw["final"]
    adamw_steps = steps_to(best_adamw["curve"], result["target"])
    for run in runs:
        run["steps_to_target"] = steps_to(run["curve"], result["target"])
        run["speedup_vs_best_adamw"] = (adamw_steps / run["steps_to_target"]) if run["steps_to_target"] else None
        print(f"{run['optimizer']:10s} lr={run['lr']:g}: steps to {result['target']:.4f}: {run['steps_to_target']} "
              f"(speed-up {run['speedup_vs_best_adamw']})", flush=True)
    result["overhead"] = overhead(args, train, vocab)
    for entry in result["overhead"]["configs"]:
        print(f"{entry['optimizer']:10s} T={entry['update_freq']}: {entry['mean_step_ms']:.1f} ms/step "
              f"({entry['vs_adamw']:.1f}x AdamW), refresh step {entry['mean_refresh_step_ms']}", flush=True)
    print(f"forward+backward: {result['overhead']['forward_backward_ms']:.1f} ms", flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "adadiag_quick" if args.quick else "adadiag"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json / .png")


if __name__ == "__main__":
    main()
