"""AdamW vs AdaPM on a small causal LM: a ~1M-parameter Llama (built from a config) on Tiny Shakespeare, char-level.

Same model init, data order, learning-rate schedule (linear warm-up, cosine decay) and hyper-parameters for every
optimizer; AdaPM uses its default name policy (embedding / o_proj / lm_head without momentum, v_proj full, q / k /
MLP low-rank). Reports the final validation loss (mean over fixed held-out batches: the last 10 % of the text) and
AdaPM's gap to AdamW. Target: within 1 % of AdamW.

Usage: ``python benchmarks/adapm_convergence.py [--quick] [--steps N] [--device cuda]`` -> prints a table, writes
``benchmarks/results/adapm_convergence.json`` and ``.png``. The default run (CPU) is sized for <= 10 minutes on a
2-core machine; ``--quick`` is a ~1-minute smoke run whose numbers mean little.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_alphaadam import AdaPM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


def load_data():
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * data.numel())
    return data[:split], data[split:], len(chars)


def build_model(vocab: int, seed: int):
    import transformers

    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab,
                                      max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


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
    model = build_model(vocab, args.seed).to(args.device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizers", default="adamw,adapm")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.steps is None:
        args.steps = 60 if args.quick else 600
    args.eval_batches = 4 if args.quick else 16
    args.eval_every = max(1, args.steps // 10)
    train, valid, vocab = load_data()
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
    out = {"machine": {"node": platform.node(), "platform": platform.platform(), "torch": torch.__version__,
                       "device": args.device if args.device == "cpu" else torch.cuda.get_device_name()},
           "args": {k: v for k, v in vars(args).items() if k != "out"} | {"out": None},
           "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"adapm_convergence{suffix}.json").write_text(json.dumps(out, indent=2, default=str))
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
    fig.savefig(args.out / f"adapm_convergence{suffix}.png", dpi=120)


if __name__ == "__main__":
    main()
