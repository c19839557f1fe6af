"""What the ``sft_real`` benchmark reports, from its runs: the best learning rate per optimizer, the held-out loss
and accuracy over seeds with paired differences to AdamW, the verdicts, the README rows and the plots.

``benchmarks/sft_real.py`` runs the fine-tuning and re-exports :func:`summary`; see its docstring for what is
measured and how.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import T_95, mean_std

OPTIMIZERS = {"adamw": ("adamw_torch", "AdamW"), "alphaadam": ("alphaadam", "AlphaAdam"),
              "cautious": ("cautious_adamw", "Cautious AdamW"), "adapm": ("adapm", "AdaPM")}
# why an optimizer can make exactly AdamW's updates here (shown in its README row)
IDENTICAL_NOTES = {"adapm": ": AdaPM's default name policy gives every LoRA tensor (lora_A / lora_B) the role "
                            "'other', i.e. full momentum and Adam's second moment"}
SAME_LOSS = 1e-5  # held-out losses this close are float32 rounding apart (different kernels), not different runs
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of training, where the held-out loss is measured
TENSOR_TYPES = (  # parameter-name pattern -> tensor type of the alpha picture, in the picture's order
    ("embed_tokens", "embed"), ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"),
    ("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"), ("input_layernorm", "attn norm"),
    ("post_attention_layernorm", "mlp norm"), ("model.norm", "final norm"))


# ---------------------------------------------------------------------------------------------------- results

def final_loss(run: dict[str, Any]) -> float:
    return run["eval_loss"][-1][1]


def ranks_before(run: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether ``run``'s final held-out loss is lower than ``other``'s (a non-finite loss ranks last)."""
    def key(r):
        return (not math.isfinite(final_loss(r)), final_loss(r))
    return key(run) < key(other)


def best_lr(runs: list[dict[str, Any]], optimizer: str, lrs: list[float]) -> float | None:
    """The grid's learning rate with the lowest final held-out loss at seed 0 (``None`` before the grid is done)."""
    grid = {r["lr"]: final_loss(r) for r in runs if r["optimizer"] == optimizer and r["seed"] == 0}
    if any(lr not in grid for lr in lrs):
        return None
    return min(lrs, key=lambda lr: (not math.isfinite(grid[lr]), grid[lr]))  # the first of equal ones


def aggregate(result: dict[str, Any]) -> dict[str, Any]:
    """Per optimizer at its best lr: loss at each fraction and accuracy (mean, std over seeds), paired
    differences to AdamW per seed, and whether the best lr is at an edge of the grid."""
    runs, settings = result["runs"], result["settings"]
    lrs = sorted(settings["lrs"])
    table = {}
    best_runs = {}
    for name in settings["optimizers"]:
        lr = best_lr(runs, name, lrs)
        if lr is None:
            continue
        chosen = {r["seed"]: r for r in runs if r["optimizer"] == name and r["lr"] == lr}
        best_runs[name] = chosen
        losses = [[r["eval_loss"][i][1] for r in chosen.values()] for i in range(len(FRACTIONS))]
        accuracies = [r["gsm8k"]["accuracy"] for r in chosen.values() if "gsm8k" in r]
        table[name] = {
            "best_lr": lr, "at_grid_edge": len(lrs) > 1 and lr in (lrs[0], lrs[-1]), "seeds": sorted(chosen),
            "grid_final_loss": {str(r["lr"]): final_loss(r) for r in runs if r["optimizer"] == name
                                and r["seed"] == 0},
            "loss": [mean_std(v) for v in losses], "accuracy": mean_std(accuracies) if accuracies else None}
    adamw = best_runs.get("adamw")
    for name, entry in table.items():
        if name == "adamw" or adamw is None:
            continue
        seeds = sorted(set(best_runs[name]) & set(adamw))
        entry["paired_seeds"] = seeds
        entry["loss_diff"] = [mean_std([best_runs[name][s]["eval_loss"][i][1] - adamw[s]["eval_loss"][i][1]
                                        for s in seeds]) for i in range(len(FRACTIONS))] if seeds else None
        with_accuracy = [s for s in seeds if "gsm8k" in best_runs[name][s] and "gsm8k" in adamw[s]]
        entry["accuracy_diff"] = mean_std([best_runs[name][s]["gsm8k"]["accuracy"] - adamw[s]["gsm8k"]["accuracy"]
                                           for s in with_accuracy]) if with_accuracy else None
        # the same updates as AdamW (e.g. AdaPM on LoRA tensors: full momentum everywhere): say so, not "noise"
        entry["identical_to_adamw"] = bool(seeds) and entry["best_lr"] == table["adamw"]["best_lr"] and all(
            abs(mine[1] - base[1]) <= SAME_LOSS for s in seeds
            for mine, base in zip(best_runs[name][s]["eval_loss"], adamw[s]["eval_loss"]))
    return table


def verdict(diff: tuple[float, float] | None, seeds: int, lower_is_better: bool = True, floor: float = 0.0) -> str:
    """"better" / "worse" when the paired mean difference is outside its 95 % t-interval over the seeds (and
    beyond ``floor``), else "not shown". With 3 seeds the interval is +-4.3 standard errors."""
    if diff is None or seeds < 2:
        return "not shown (fewer than 2 paired seeds)"
    mean, std = diff
    margin = max(T_95.get(seeds - 1, 2.23) * std / math.sqrt(seeds), floor)
    if abs(mean) <= margin:
        return "not shown (within noise)"
    better = mean < 0 if lower_is_better else mean > 0
    return "better than AdamW" if better else "worse than AdamW"


def accuracy_noise(accuracies: list[float], questions: int, seeds: int) -> float:
    """Twice the binomial standard error of a difference of two accuracies over ``questions`` x ``seeds`` answers
    (at the pooled accuracy, at least one question's worth): a spread over 3 seeds of a 32-question count can be 0
    by chance, so a paired difference must also exceed this."""
    p = min(max(sum(accuracies) / len(accuracies), 1 / questions), 1 - 1 / questions)
    return 2 * math.sqrt(2 * p * (1 - p) / (questions * seeds))


def summary(result: dict[str, Any]) -> list[dict[str, str]]:
    """README rows: each optimizer's final held-out loss and accuracy vs AdamW's (paired over seeds), with the
    loss at the earlier fractions, the best lr and whether it is at a grid edge; and the alpha picture."""
    settings, table = result["settings"], aggregate(result)  # from the runs, not a stored table
    if "adamw" not in table:
        raise ValueError("the run has no AdamW baseline")
    base = result.get("pretrained", {})
    adamw = table["adamw"]
    scale = (f"SmolLM2-135M-Instruct + LoRA r{settings['lora_r']}, {settings['steps']} steps of "
             f"{settings['batch_size']}, {len(adamw['seeds'])} seeds; held-out loss on {settings['eval_size']}, "
             f"accuracy on {settings['accuracy_size']} GSM8K test problems")
    took = f"; the whole run took {result['seconds'] / 60:.0f} min" if "seconds" in result else ""
    rows = [{"claim": "AdamW baseline (no target)",
             "measured": (f"held-out loss {_fmt(adamw['loss'][-1])} "
                          f"(pretrained {base.get('eval_loss', float('nan')):.3f}), accuracy {_pct(adamw['accuracy'])} "
                          f"(pretrained "
                          f"{base.get('gsm8k', {}).get('accuracy', float('nan')):.1%}); best lr {adamw['best_lr']:g}"
                          f"{' (grid edge)' if adamw['at_grid_edge'] else ''} of "
                          f"{'/'.join(f'{lr:g}' for lr in sorted(settings['lrs']))}; {scale}{took}"),
             "verdict": "noted"}]
    for name, entry in table.items():
        if name == "adamw":
            continue
        label = OPTIMIZERS[name][1]
        seeds = len(entry.get("paired_seeds", []))
        curve = " / ".join(f"{d[0]:+.3f}" for d in entry["loss_diff"]) if entry.get("loss_diff") else "n/a"
        noise = (accuracy_noise([entry["accuracy"][0], adamw["accuracy"][0]], settings["accuracy_size"], seeds)
                 if seeds and entry["accuracy"] and adamw["accuracy"] else 0.0)
        if entry.get("identical_to_adamw"):
            rows.append({"claim": f"{label} vs AdamW: lower held-out loss / higher GSM8K accuracy",
                         "measured": (f"AdamW's run in every seed at lr {entry['best_lr']:g} (held-out losses "
                                      f"within {SAME_LOSS:g}, float32 rounding; {seeds} seeds)"
                                      f"{IDENTICAL_NOTES.get(name, '')}"),
                         "verdict": "not shown (the same updates as AdamW)"})
            continue
        rows.append({
            "claim": f"{label} vs AdamW: lower held-out loss after fine-tuning",
            "measured": (f"{_fmt(entry['loss'][-1])} vs {_fmt(adamw['loss'][-1])}, paired diff "
                         f"{_fmt(entry['loss_diff'][-1], sign=True) if entry.get('loss_diff') else 'n/a'} "
                         f"(at {'/'.join(f'{f:.0%}' for f in FRACTIONS)}: {curve}); best lr {entry['best_lr']:g}"
                         f"{' (grid edge)' if entry['at_grid_edge'] else ''}"),
            "verdict": verdict(entry["loss_diff"][-1] if entry.get("loss_diff") else None, seeds)})
        rows.append({
            "claim": f"{label} vs AdamW: higher GSM8K accuracy",
            "measured": (f"{_pct(entry['accuracy'])} vs {_pct(adamw['accuracy'])}, paired diff "
                         f"{_pct(entry.get('accuracy_diff'), sign=True)}"),
            "verdict": verdict(entry.get("accuracy_diff"), seeds, lower_is_better=False, floor=noise)})
    picture = result.get("alpha_picture")
    if picture:
        last = {label: values["alpha"][-1][1] for label, values in picture["by_type"].items()}
        masks = {label: values["mask_ratio"][-1][1] for label, values in picture["by_type"].items()}
        low, high = min(last, key=last.get), max(last, key=last.get)
        rows.append({"claim": "AlphaAdam's alpha / mask ratio per tensor type on the pretrained model (no target)",
                     "measured": (f"full fine-tuning, step {picture['steps']}: alpha {last[low]:.2f} ({low}) to "
                                  f"{last[high]:.2f} ({high}); mask ratio {min(masks.values()):.2f}-"
                                  f"{max(masks.values()):.2f} (sft_real_alpha.png)"),
                     "verdict": "noted"})
    return rows


def _fmt(value: tuple[float, float] | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value[0]:+.3f} ± {value[1]:.3f}" if sign else f"{value[0]:.3f} ± {value[1]:.3f}"


def _pct(value: tuple[float, float] | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value[0]:+.1%} ± {value[1]:.1%}" if sign else f"{value[0]:.1%} ± {value[1]:.1%}"


def print_table(result: dict[str, Any]) -> None:
    header = "optimizer        best lr  " + "  ".join(f"loss@{f:.0%}" for f in FRACTIONS) + "   accuracy"
    print(header)
    for name, entry in result["table"].items():
        losses = "  ".join(f"{m:8.4f}" for m, _ in entry["loss"])
        accuracy = f"{entry['accuracy'][0]:.1%}" if entry["accuracy"] else "n/a"
        print(f"{OPTIMIZERS[name][1]:<16} {entry['best_lr']:<8g} {losses}   {accuracy}"
              f"{'   (best lr at grid edge)' if entry['at_grid_edge'] else ''}", flush=True)


# ----------------------------------------------------------------------------------------------------- plots

def plot(result: dict[str, Any], path: Path) -> None:
    """Held-out loss against the fraction of training (mean +- std over seeds at each best lr), and the paired
    differences to AdamW."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["table"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [100 * f for f in FRACTIONS]
    for name, entry in table.items():
        means, stds = zip(*entry["loss"])
        left.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                      label=f"{OPTIMIZERS[name][1]} (lr {entry['best_lr']:g})")
        if entry.get("loss_diff"):
            dmeans, dstds = zip(*entry["loss_diff"])
            right.errorbar(xs, dmeans, yerr=dstds, marker="o", capsize=3, label=OPTIMIZERS[name][1])
    if "eval_loss" in result.get("pretrained", {}):
        left.axhline(result["pretrained"]["eval_loss"], color="grey", linestyle=":", label="pretrained")
    right.axhline(0.0, color="black", linewidth=0.8)
    left.set_xlabel("% of training")
    left.set_ylabel("held-out loss (solution tokens)")
    left.set_title("SmolLM2-135M-Instruct + LoRA on GSM8K")
    left.legend(fontsize=8)
    right.set_xlabel("% of training")
    right.set_ylabel("held-out loss minus AdamW's (paired by seed)")
    right.set_title(f"{len(table.get('adamw', {}).get('seeds', []))} seeds, mean ± std")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alpha(picture: dict[str, Any], path: Path) -> None:
    """Alpha and mask ratio per tensor type against the step (mean over layers, band min..max), and alpha per
    layer and type at the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    steps = list(range(1, picture["steps"] + 1))
    colors = plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]  # 11 types: 20 distinct
    for (label, values), color in zip(picture["by_type"].items(), colors):
        for ax, stat in zip(axes[:2], ("alpha", "mask_ratio")):
            low, mean, high = zip(*values[stat])
            ax.plot(steps, mean, marker=".", color=color, label=label)
            ax.fill_between(steps, low, high, color=color, alpha=0.12)
    axes[0].set_ylabel("alpha = ||u|| / ||mask * u||")
    axes[1].set_ylabel("mask ratio (fraction of coordinates updated)")
    for ax in axes[:2]:
        ax.set_xlabel("step (step 1 is unmasked)")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("AlphaAdam, full fine-tuning: per tensor type")
    axes[1].set_title("mean over layers, band = min..max")
    layered = [label for _, label in TENSOR_TYPES
               if any(t["type"] == label and t["layer"] is not None for t in picture["tensors"].values())]
    layers = 1 + max(t["layer"] for t in picture["tensors"].values() if t["layer"] is not None)
    grid = torch.full((layers, len(layered)), float("nan"))
    for t in picture["tensors"].values():
        if t["layer"] is not None:
            grid[t["layer"], layered.index(t["type"])] = t["alpha"][-1]
    image = axes[2].imshow(grid.numpy(), aspect="auto", cmap="viridis", origin="lower")
    axes[2].set_xticks(range(len(layered)), layered, rotation=45, fontsize=7)
    axes[2].set_ylabel("layer")
    axes[2].set_title(f"alpha at step {picture['steps']}")
    fig.colorbar(image, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
