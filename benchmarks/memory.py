"""Optimizer-state memory: AdamW vs AdaPM (ranks 8/16/32/64, Adam v or compact "mini" v) vs bitsandbytes AdamW8bit.

Models are built on the ``meta`` device from transformers configs (GPT-2 small / medium / large, a Llama-7B-shaped
config), so no weights are allocated; AdaPM's numbers are its planned state (``AdaPM.state_bytes``, which equals the
allocated state after a step -- see ``tests/optim/test_adapm.py``). All states fp32 (fp32 parameters).

AdamW8bit is counted from bitsandbytes' state layout (``Optimizer2State.init_state``, bnb 0.50): a tensor with at
least ``min_8bit_size = 4096`` elements keeps uint8 ``state1`` / ``state2`` plus one fp32 ``absmax`` per 256-element
block for each; a smaller tensor keeps two fp32 states. (The 2 x 256-entry fp32 quantisation maps are shared by all
tensors and left out.) The bitsandbytes check (on by default when bitsandbytes is installed; ``--no-check-bnb``
skips it) instantiates ``bnb.optim.AdamW8bit`` on a small model, takes one step on CPU, and compares the formula
with the bytes of its real state.

Targets: AdaPM at rank 16 keeps at most 10 % of AdamW's momentum bytes, and with the compact ("mini") second moment
at most 10 % of AdamW's whole state.

    python -m benchmarks run memory            # all four models: a few seconds
    python -m benchmarks run memory --quick    # GPT-2 small only (same numbers for it): ~1 s after imports

Prints a table, writes ``benchmarks/results/memory[_quick].json`` and ``.png`` (``--output-dir`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import add_common_arguments, write_result  # noqa: E402
from hf_alphaadam.optim.adapm import optimizer_state_memory  # noqa: E402

logger = logging.getLogger("memory")
RANKS = (8, 16, 32, 64)
BNB_BLOCK, BNB_MIN_8BIT = 256, 4096


def models():
    import transformers

    gpt2 = lambda d, layers, heads: transformers.GPT2Config(n_embd=d, n_layer=layers, n_head=heads)  # noqa: E731
    return {
        "gpt2-small": (transformers.GPT2LMHeadModel, gpt2(768, 12, 12), 64),
        "gpt2-medium": (transformers.GPT2LMHeadModel, gpt2(1024, 24, 16), 64),
        "gpt2-large": (transformers.GPT2LMHeadModel, gpt2(1280, 36, 20), 64),
        "llama-7b": (transformers.LlamaForCausalLM,
                     transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                              num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                              tie_word_embeddings=False), 128),
    }


def bnb_adamw8bit_bytes(numels: list[int]) -> int:
    """bitsandbytes AdamW8bit's state bytes for tensors of these sizes (see the module docstring)."""
    total = 0
    for n in numels:
        if n < BNB_MIN_8BIT:
            total += 2 * 4 * n
        else:
            total += 2 * (n + 4 * math.ceil(n / BNB_BLOCK))
    return total


def check_bnb() -> dict:
    """The formula against bitsandbytes' real AdamW8bit state after one CPU step."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(300, 64), torch.nn.Linear(64, 129), torch.nn.LayerNorm(129),
                                torch.nn.Linear(129, 10))
    optimizer = bnb.optim.AdamW8bit(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (4, 3))).sum().backward()
    optimizer.step()
    real = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and not key.startswith("qmap"):
                real += value.numel() * value.element_size()
    formula = bnb_adamw8bit_bytes([p.numel() for p in model.parameters()])
    return {"real_bytes": real, "formula_bytes": formula, "match": real == formula}


def measure(names: list[str] | None = None) -> dict:
    """Per model: parameter count and, per optimizer, momentum / second-moment / total state bytes and ratios."""
    rows = {}
    for name, (cls, config, head_dim) in models().items():
        if names is not None and name not in names:
            continue
        with torch.device("meta"):
            model = cls(config)
        numels = [p.numel() for p in model.parameters()]
        entry = {"num_params": sum(numels), "head_dim": head_dim, "optimizers": {}}
        base = None
        for rank in RANKS:
            for second in ("adam", "mini"):
                memory = optimizer_state_memory(model, rank=rank, second_moment=second, head_dim=head_dim)
                base = memory["adamw"]
                label = f"adapm-r{rank}" + ("-mini" if second == "mini" else "")
                entry["optimizers"][label] = {**memory["adapm"],
                                              "momentum_vs_adamw": memory["ratio"]["momentum"],
                                              "total_vs_adamw": memory["ratio"]["total"]}
        entry["optimizers"] = {"adamw": {**base, "momentum_vs_adamw": 1.0, "total_vs_adamw": 1.0},
                               **entry["optimizers"]}
        bnb_total = bnb_adamw8bit_bytes(numels)
        entry["optimizers"]["adamw8bit (bnb)"] = {"momentum": bnb_total // 2, "second_moment": bnb_total // 2,
                                                   "total": bnb_total, "momentum_vs_adamw": bnb_total / base["total"],
                                                   "total_vs_adamw": bnb_total / base["total"]}
        rows[name] = entry
    return rows


def table(rows: dict) -> str:
    lines = []
    for name, entry in rows.items():
        lines.append(f"\n{name}: {entry['num_params'] / 1e6:,.1f}M parameters (fp32 states; mini v per row, "
                     f"per head of {entry['head_dim']} for q/k)")
        lines.append(f"  {'optimizer':<18}{'momentum':>12}{'second m.':>12}{'total':>12}{'m/AdamW m':>11}"
                     f"{'total/AdamW':>12}")
        for label, value in entry["optimizers"].items():
            gib = lambda b: f"{b / 2**30:.3f} GiB"  # noqa: E731
            lines.append(f"  {label:<18}{gib(value['momentum']):>12}{gib(value['second_moment']):>12}"
                         f"{gib(value['total']):>12}{value['momentum_vs_adamw']:>11.1%}"
                         f"{value['total_vs_adamw']:>12.1%}")
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(next(iter(rows.values()))["optimizers"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = [i + (k - len(labels) / 2) * width for i in range(len(rows))]
        axes[0].bar(xs, [e["optimizers"][label]["total"] / 2**30 for e in rows.values()], width, label=label)
        axes[1].bar(xs, [100 * e["optimizers"][label]["total_vs_adamw"] for e in rows.values()], width, label=label)
    for ax, title in zip(axes, ("optimizer state (GiB, log)", "state vs AdamW (%)")):
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(list(rows))
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[1].axhline(10, color="black", linestyle="--", linewidth=1)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, "GPT-2 small only (a CI smoke run)")
    parser.add_argument("--check-bnb", action=argparse.BooleanOptionalAction, default=None,
                        help="compare the AdamW8bit formula with bitsandbytes (default: when it is installed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.time()
    rows = measure(["gpt2-small"] if args.quick else None)
    result = {
        "state_dtype": "float32",
        "models": rows,
        "targets": {
            "adapm_r16_momentum_le_10pct": {n: e["optimizers"]["adapm-r16"]["momentum_vs_adamw"] <= 0.10
                                            for n, e in rows.items()},
            "adapm_r16_mini_total_le_10pct": {n: e["optimizers"]["adapm-r16-mini"]["total_vs_adamw"] <= 0.10
                                              for n, e in rows.items()},
        },
        "seconds": round(time.time() - start, 2),
    }
    check = args.check_bnb
    if check is None:
        try:
            import bitsandbytes  # noqa: F401

            check = True
        except ImportError:
            logger.warning("bitsandbytes is not installed: the AdamW8bit formula is not checked against it")
            check = False
    if check:
        result["bnb_check"] = check_bnb()
    path = write_result(result, args.output_dir, "memory", args.quick)
    plot(rows, path.with_suffix(".png"))
    logger.info("wrote %s", path)
    print(table(rows))
    print("\ntargets (rank 16):", json.dumps(result["targets"], indent=1))
    if "bnb_check" in result:
        print("bitsandbytes AdamW8bit formula check:", result["bnb_check"])
    return result


SHORT = {"gpt2-small": "GPT-2 S", "gpt2-medium": "GPT-2 M", "gpt2-large": "GPT-2 L", "llama-7b": "Llama-7B"}


def summary(result: dict) -> list[dict[str, str]]:
    """README rows: the two rank-16 targets (per model), and bitsandbytes AdamW8bit for reference."""
    models = result["models"]
    names = " / ".join(SHORT.get(n, n) for n in models)

    def percents(label: str, key: str) -> str:
        return " / ".join(f"{100 * e['optimizers'][label][key]:.1f}" for e in models.values()) + " %"

    def verdict(target: str) -> str:
        met = result["targets"][target]
        return "meets" if all(met.values()) else "misses (" + ", ".join(n for n, ok in met.items() if not ok) + ")"

    bnb = percents("adamw8bit (bnb)", "total_vs_adamw")
    check = result.get("bnb_check")
    return [
        {"claim": "AdaPM rank 16: momentum <= 10 % of AdamW's",
         "measured": f"{percents('adapm-r16', 'momentum_vs_adamw')} ({names})",
         "verdict": verdict("adapm_r16_momentum_le_10pct")},
        {"claim": "AdaPM rank 16 + compact v: total state <= 10 % of AdamW's",
         "measured": f"{percents('adapm-r16-mini', 'total_vs_adamw')} ({names})",
         "verdict": verdict("adapm_r16_mini_total_le_10pct")},
        {"claim": "reference: bitsandbytes AdamW8bit state vs AdamW's",
         "measured": f"{bnb} ({names})",
         "verdict": "formula = real bnb state" if check and check["match"]
         else "formula not checked" if not check else "formula differs from real bnb state"},
    ]


if __name__ == "__main__":
    main()
