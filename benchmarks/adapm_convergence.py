"""AdamW vs AdaPM on a small causal LM: a ~0.8M-parameter Llama (built from a config) on Tiny Shakespeare, char-level.

Same model init, data order, learning-rate schedule (linear warm-up, cosine decay to 10 %) and hyper-parameters
for every optimizer; AdaPM uses its default name policy (embedding / o_proj / lm_head without momentum, v_proj
full, q / k / MLP low-rank). What is measured: the final validation loss (mean over fixed held-out batches from
the last 10 % of the text) and AdaPM's gap to AdamW; also the optimizer-state bytes after training. Target: AdaPM
within 1 % of AdamW.

    python -m benchmarks run adapm_convergence                                  # 600 steps, batch 16 x 128:
                                                                                # what results/ holds (~3-4 min)
    python -m benchmarks run adapm_convergence --steps 150 --batch 8 --seq 64   # a shorter run
    python -m benchmarks run adapm_convergence --quick   # hidden 32 / 2 layers, 20 steps: ~5 s after imports

Prints a table, writes ``benchmarks/results/adapm_convergence[_quick].json`` and ``.png`` (``--output-dir`` to
change). ``--device cuda`` trains on a GPU. The quick mode is a smoke run whose numbers mean little.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import (add_common_arguments, char_data, machine_info, set_threads, tiny_llama,  # noqa: E402
                                write_result)
from hf_alphaadam import AdaPM  # noqa: E402

logger = logging.getLogger("adapm_convergence")
TARGET_GAP = 0.01  # AdaPM's final validation loss within 1 % of AdamW's


def build_model(vocab: int, args):
    """Llama with hidden 128 / 4 layers / 4 heads (quick: 32 / 2 / 4), seeded with ``args.seed``."""
    hidden, layers = (32, 2) if args.quick else (128, 4)
    return tiny_llama(vocab, hidden=hidden, layers=layers, heads=4, context=args.seq, seed=args.seed)


def make_optimizer(name: str, model, lr: float, weight_decay: float, betas):
    decay = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [(n, p) for n, p in model.named_parameters() if p.ndim < 2]
    if name == "adamw":
        groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
                  {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    options = dict(adapm=dict(), **{f"adapm-r{r}": dict(rank=r) for r in (4, 8, 16, 32)},
                   **{"adapm-mini": dict(second_moment="mini", head_dim=32)})[name]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return AdaPM(groups, lr=lr, betas=betas, log_policy=False, **options)


def run(name: str, args, train, valid, vocab) -> dict:
    """Train one optimizer; the validation curve, last-50 train loss, time and state bytes."""
    model = build_model(vocab, args).to(args.device)
    optimizer = make_optimizer(name, model, args.lr, args.weight_decay, (0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed + 1)
    eval_generator = torch.Generator().manual_seed(12345)
    eval_starts = torch.randint(0, valid.numel() - args.seq - 1, (args.eval_batches, args.batch),
                                generator=eval_generator)
    warmup = max(1, args.steps // 20)

    def schedule(s: int) -> float:  # linear warm-up, cosine decay to 10 %
        return min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def evaluate():
        model.eval()
        with torch.no_grad():
            losses = []
            for starts in eval_starts:
                batch = torch.stack([valid[s:s + args.seq] for s in starts]).to(args.device)
                losses.append(model(batch, labels=batch).loss.item())
        model.train()
        return sum(losses) / len(losses)

    curve, train_losses = [], []
    start = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, train.numel() - args.seq - 1, (args.batch,), generator=generator)
        batch = torch.stack([train[s:s + args.seq] for s in starts]).to(args.device)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        train_losses.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve.append((step + 1, evaluate()))
    seconds = time.time() - start
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items()
                if isinstance(v, torch.Tensor) and k != "step")
    return {"final_val_loss": curve[-1][1], "curve": curve, "train_loss_last50": sum(train_losses[-50:]) / len(
        train_losses[-50:]), "seconds": round(seconds, 1), "state_bytes": state,
        "num_params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, "smoke run: hidden 32 / 2 layers, 20 steps of batch 4 x 32, 2 eval batches")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 600, quick 20)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 16, quick 4)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128, quick 32)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; quick 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizers", default="adamw,adapm")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_threads(args.threads, args.quick)
    if args.steps is None:
        args.steps = 20 if args.quick else 600
    if args.batch is None:
        args.batch = 4 if args.quick else 16
    if args.seq is None:
        args.seq = 32 if args.quick else 128
    args.eval_batches = 2 if args.quick else 16
    args.eval_every = max(1, args.steps // 10)
    machine = machine_info()
    if args.device != "cpu":
        machine["device"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    train, valid, vocab = char_data()
    results = {}
    for name in args.optimizers.split(","):
        results[name] = run(name, args, train, valid, vocab)
        print(f"{name:<12} val {results[name]['final_val_loss']:.4f}  train(last50) "
              f"{results[name]['train_loss_last50']:.4f}  state {results[name]['state_bytes'] / 2**20:.2f} MiB  "
              f"{results[name]['seconds']:.0f}s", flush=True)
    base = results.get("adamw", {}).get("final_val_loss")
    if base:
        for name, value in results.items():
            value["gap_vs_adamw"] = value["final_val_loss"] / base - 1
            print(f"{name:<12} gap vs AdamW {value['gap_vs_adamw']:+.2%}")
    out = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "output_dir"} | {"out": None},
           "results": results}
    path = write_result(out, args.output_dir, "adapm_convergence", args.quick)
    plot(results, path.with_suffix(".png"))
    logger.info("wrote %s and .png", path)
    return out


def plot(results: dict, path: Path) -> None:
    """Validation loss against step, one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, value in results.items():
        steps, losses = zip(*value["curve"])
        ax.plot(steps, losses, marker="o", label=f"{name} ({value['final_val_loss']:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"~{results[next(iter(results))]['num_params'] / 1e6:.1f}M Llama, Tiny Shakespeare (char)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(result: dict) -> list[dict[str, str]]:
    """README rows: each AdaPM variant's final validation loss against AdamW's (target: within 1 %), and its state."""
    args, results = result["args"], result["results"]
    adamw = results.get("adamw")
    if adamw is None:
        raise ValueError("the run has no AdamW baseline")
    scale = (f"{adamw['num_params'] / 1e6:.2f}M Llama, {args['steps']} steps of {args['batch']} x {args['seq']}, "
             f"seed {args['seed']}")
    rows = []
    for name, value in results.items():
        if name == "adamw":
            continue
        label = "AdaPM (default policy)" if name == "adapm" else name
        gap = value["final_val_loss"] / adamw["final_val_loss"] - 1
        rows.append({"claim": f"{label}: validation loss within {TARGET_GAP:.0%} of AdamW's",
                     "measured": f"{value['final_val_loss']:.4f} vs {adamw['final_val_loss']:.4f} ({gap:+.2%}; "
                                 f"{scale})",
                     "verdict": "meets" if gap <= TARGET_GAP else "misses"})
        rows.append({"claim": f"{label}: optimizer state on this model (no target)",
                     "measured": f"{value['state_bytes'] / 2**20:.2f} MiB = "
                                 f"{value['state_bytes'] / adamw['state_bytes']:.1%} of AdamW's "
                                 f"{adamw['state_bytes'] / 2**20:.2f} MiB",
                     "verdict": "noted"})
    return rows


if __name__ == "__main__":
    main()
