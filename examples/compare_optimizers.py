"""AlphaAdam vs AdamW: a short, reproducible comparison through the Hugging Face Trainer.

A small Llama-style model (random init from a config) learns next-token prediction on text that is available
offline on any machine: by default the documentation that ships with Python's standard library
(``pydoc_data.topics``), or any UTF-8 file given with ``--text_file``. A byte-level BPE tokenizer is trained on
that text first (about a second). The model is then trained twice with the same seed, data order, learning rate
and schedule: once with ``optim="adamw_torch"`` and once with ``optim="alphaadam"`` plus ``AlphaMonitorCallback``,
which logs AlphaAdam's per-group alpha and mask ratio. The script prints a table (train loss at several points,
held-out eval loss and perplexity, wall time) and writes to ``--output_dir``:

- ``compare.png``: loss curves of both optimizers, AlphaAdam's alpha (mean and min-max band) and mask ratio per
  parameter group;
- ``results.md``: the table; ``results.json``: the settings, the table and both runs' log histories.

With the defaults it takes about 1-3 minutes on 2 CPU cores (a GPU is used when present)::

    python examples/compare_optimizers.py
    python examples/compare_optimizers.py --text_file data/tinyshakespeare/input.txt --max_steps 600
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_alphaadam  # noqa: E402  (registers optim="alphaadam" with the Trainer)
from hf_alphaadam import AlphaMonitorCallback  # noqa: E402

OPTIMIZER_LABELS = {"adamw_torch": "AdamW", "alphaadam": "AlphaAdam", "cautious_adamw": "Cautious AdamW"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--text_file", default=None,
                      help="UTF-8 text to train on (default: the documentation text shipped with Python)")
    data.add_argument("--max_chars", type=int, default=2_000_000, help="use at most this many characters")
    data.add_argument("--vocab_size", type=int, default=2048, help="byte-level BPE vocabulary size")
    data.add_argument("--seq_len", type=int, default=128, help="tokens per training sequence")
    data.add_argument("--eval_fraction", type=float, default=0.05, help="held-out tail of the text for eval")
    model = parser.add_argument_group("model (Llama-style, random init)")
    model.add_argument("--hidden_size", type=int, default=128)
    model.add_argument("--num_layers", type=int, default=2)
    model.add_argument("--num_heads", type=int, default=4)
    train = parser.add_argument_group("training (identical for every optimizer)")
    train.add_argument("--optimizers", default="adamw_torch,alphaadam",
                       help="comma-separated Trainer optim names, e.g. adamw_torch,alphaadam,cautious_adamw")
    train.add_argument("--max_steps", type=int, default=200)
    train.add_argument("--learning_rate", type=float, default=2e-3)
    train.add_argument("--weight_decay", type=float, default=0.1)
    train.add_argument("--warmup_ratio", type=float, default=0.05)
    train.add_argument("--batch_size", type=int, default=16)
    train.add_argument("--logging_steps", type=int, default=None, help="default: max_steps / 50")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--optim_args", default=None,
                       help="passed to the AlphaAdam family only, e.g. 'alpha_max=10,first_step=masked'")
    train.add_argument("--use_cpu", action="store_true", help="train on the CPU even if a GPU is present")
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", default="outputs/compare")
    out.add_argument("--no_plot", action="store_true", help="skip compare.png (matplotlib not needed then)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.max_steps < 1:
        parser.error("--max_steps must be >= 1")
    if not 0 < args.eval_fraction < 1:
        parser.error("--eval_fraction must be in (0, 1)")
    if args.hidden_size % args.num_heads:
        parser.error("--hidden_size must be a multiple of --num_heads")
    return args


# ------------------------------------------------------------------------------------------------------ data


def load_text(text_file: str | None, max_chars: int) -> tuple[str, str]:
    """The training text and a short description of where it came from."""
    if text_file:
        text = Path(text_file).read_text(encoding="utf-8", errors="replace")
        source = text_file
    else:
        from pydoc_data.topics import topics  # the stdlib's documentation, present in every CPython install

        text = "\n\n".join(topics[key] for key in sorted(topics))
        source = "Python stdlib documentation (pydoc_data.topics)"
    if len(text) < 10_000:
        raise SystemExit(f"{source}: only {len(text)} characters, need at least 10,000")
    return text[:max_chars], source


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``text`` (any byte sequence is encodable; ~1 s for a few MB)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunk = 10_000
    tokenizer.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_max_length=1_000_000)


class Blocks(torch.utils.data.Dataset):
    """Non-overlapping ``seq_len``-token blocks of one long token stream."""

    def __init__(self, ids: torch.Tensor, seq_len: int) -> None:
        count = ids.numel() // seq_len
        self.blocks = ids[:count * seq_len].view(count, seq_len)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index]}


def build_data(args: argparse.Namespace):
    text, source = load_text(args.text_file, args.max_chars)
    start = time.perf_counter()
    tokenizer = train_tokenizer(text, args.vocab_size)
    tokenizer_seconds = time.perf_counter() - start
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    split = int(ids.numel() * (1 - args.eval_fraction))  # the held-out split is the text's tail: no overlap
    train, evaluation = Blocks(ids[:split], args.seq_len), Blocks(ids[split:], args.seq_len)
    if len(train) < 2 or len(evaluation) < 1:
        raise SystemExit(f"text too short for --seq_len {args.seq_len}: {ids.numel()} tokens")
    info = {"source": source, "characters": len(text), "tokens": ids.numel(), "vocab_size": len(tokenizer),
            "chars_per_token": round(len(text) / ids.numel(), 2), "train_blocks": len(train),
            "eval_blocks": len(evaluation), "tokenizer_seconds": round(tokenizer_seconds, 2)}
    return tokenizer, train, evaluation, info


# ---------------------------------------------------------------------------------------------------- training


class CompactProgress(ProgressCallback):
    """Trainer's tqdm bar, with the latest loss in the bar instead of a printed dict per log step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            postfix = {"loss": f"{logs['loss']:.3f}"}
            alpha = [value for key, value in logs.items() if re.fullmatch(r"alpha/[^/]+/mean", key)]
            if alpha:
                postfix["alpha"] = f"{sum(alpha) / len(alpha):.2f}"
            self.training_bar.set_postfix(postfix, refresh=False)


def build_model(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    set_seed(args.seed)  # identical initial weights for every optimizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                         intermediate_size=4 * args.hidden_size, num_hidden_layers=args.num_layers,
                         num_attention_heads=args.num_heads, num_key_value_heads=args.num_heads,
                         max_position_embeddings=args.seq_len, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def train_one(optim: str, args: argparse.Namespace, tokenizer, train, evaluation) -> dict:
    alpha_family = optim in hf_alphaadam.OPTIMIZERS  # the catalog's names (hf_alphaadam.optim.catalog)
    training_args = TrainingArguments(
        output_dir=str(Path(args.output_dir) / optim),
        optim=optim,
        optim_args=args.optim_args if alpha_family else None,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, round(args.warmup_ratio * args.max_steps)),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        logging_steps=args.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=args.use_cpu,
        dataloader_pin_memory=False,
        disable_tqdm=args.quiet,
    )
    callbacks = [AlphaMonitorCallback()] if alpha_family else []
    trainer = Trainer(model=build_model(args, tokenizer), args=training_args, train_dataset=train,
                      eval_dataset=evaluation, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      callbacks=callbacks)
    if args.quiet:
        trainer.remove_callback(PrinterCallback)  # the Trainer prints every log dict when tqdm is disabled
    else:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgress)
        print(f"\n== {OPTIMIZER_LABELS.get(optim, optim)} (optim={optim!r})", flush=True)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate()
    return {"optim": optim, "label": OPTIMIZER_LABELS.get(optim, optim), "train_seconds": wall,
            "eval_loss": metrics["eval_loss"], "log_history": trainer.state.log_history,
            "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
            "optimizer_class": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__}


# ---------------------------------------------------------------------------------------------------- results


def loss_curve(history: list[dict]) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    return [s for s, _ in points], [v for _, v in points]


def loss_near(history: list[dict], step: int) -> float:
    """The logged train loss (a mean over its logging window) at the log step closest to ``step``."""
    steps, losses = loss_curve(history)
    if not steps:
        return math.nan
    index = min(range(len(steps)), key=lambda i: (abs(steps[i] - step), -steps[i]))
    return losses[index]


def alpha_series(history: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per group: steps, alpha mean/min/max and mask ratio, from AlphaMonitorCallback's log keys."""
    groups: dict[str, dict[str, list[float]]] = {}
    for entry in history:
        if "step" not in entry:
            continue
        for key, value in entry.items():
            match = re.fullmatch(r"alpha/([^/]+)/mean", key)
            if match is None:
                continue
            group = match.group(1)
            series = groups.setdefault(group, {"step": [], "mean": [], "min": [], "max": [], "mask_ratio": []})
            series["step"].append(entry["step"])
            series["mean"].append(value)
            series["min"].append(entry.get(f"alpha/{group}/min", value))
            series["max"].append(entry.get(f"alpha/{group}/max", value))
            series["mask_ratio"].append(entry.get(f"mask_ratio/{group}", math.nan))
    return groups


def summary_table(runs: list[dict], max_steps: int) -> tuple[list[str], list[list[str]]]:
    checkpoints = sorted({max(1, round(max_steps * f)) for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
    header = ["optimizer"] + [f"loss@{s}" for s in checkpoints] + ["eval loss", "eval ppl", "train s", "steps/s"]
    rows = []
    for run in runs:
        rows.append([run["label"]] + [f"{loss_near(run['log_history'], s):.3f}" for s in checkpoints]
                    + [f"{run['eval_loss']:.3f}", f"{math.exp(min(run['eval_loss'], 50)):.1f}",
                       f"{run['train_seconds']:.1f}", f"{max_steps / run['train_seconds']:.2f}"])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                         for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def plot(runs: list[dict], info: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    alpha_runs = [run for run in runs if alpha_series(run["log_history"])]
    panels = 1 + (2 if alpha_runs else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    axes = axes[0]
    colors = ["tab:blue", "tab:orange", "tab:red", "tab:cyan"]
    group_styles = ["-", "--", ":", "-."]

    ax = axes[0]
    for index, run in enumerate(runs):
        steps, losses = loss_curve(run["log_history"])
        ax.plot(steps, losses, color=colors[index % len(colors)], lw=1.6,
                label=f"{run['label']}  (eval {run['eval_loss']:.3f})")
        ax.scatter([args.max_steps], [run["eval_loss"]], color=colors[index % len(colors)], marker="*", s=110,
                   zorder=3, edgecolor="black", linewidth=0.5)
    ax.set_title("training loss (★ held-out eval loss)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    all_losses = [v for run in runs for v in loss_curve(run["log_history"])[1]]
    if all_losses:  # the first log steps sit far above the rest: clip the y range to keep the tail readable
        tail = sorted(all_losses)[int(0.98 * (len(all_losses) - 1))]
        ax.set_ylim(min(min(all_losses), min(r["eval_loss"] for r in runs)) - 0.1, tail + 0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)

    if alpha_runs:
        ax_alpha, ax_mask = axes[1], axes[2]
        group_colors = ["tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive"]
        highest = 1.0
        for run_index, run in enumerate(alpha_runs):
            for group_index, (group, series) in enumerate(sorted(alpha_series(run["log_history"]).items())):
                color = group_colors[(run_index * 2 + group_index) % len(group_colors)]
                style = group_styles[run_index % len(group_styles)]
                label = f"{run['label']} / {group}" if len(alpha_runs) > 1 else group
                ax_alpha.fill_between(series["step"], series["min"], series["max"], color=color, alpha=0.15, lw=0)
                ax_alpha.plot(series["step"], series["mean"], color=color, ls=style, lw=1.6,
                              label=f"{label}: mean (band: min–max)")
                ax_mask.plot(series["step"], series["mask_ratio"], color=color, ls=style, lw=1.6, label=label)
                highest = max(highest, max(series["max"]))
        ax_alpha.axhline(1.0, color="gray", lw=0.8, ls=":")
        if highest > 10:  # a few tensors with nearly empty masks: keep the bulk readable
            ax_alpha.set_yscale("log")
            ax_alpha.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax_alpha.set_title("AlphaAdam: alpha per tensor, by param group")
        ax_alpha.set_xlabel("step")
        ax_alpha.set_ylabel("alpha = ||u|| / ||mask · u||  (1 = AdamW)")
        ax_alpha.grid(alpha=0.3, which="both")
        ax_alpha.legend(fontsize=8)
        ax_mask.set_title("AlphaAdam: mask ratio by param group")
        ax_mask.set_xlabel("step")
        ax_mask.set_ylabel("fraction of coordinates updated")
        ax_mask.set_ylim(0, 1.02)
        ax_mask.axhline(0.5, color="gray", lw=0.8, ls=":")
        ax_mask.grid(alpha=0.3)
        ax_mask.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))

    params = runs[0]["num_parameters"] / 1e6
    fig.suptitle(f"{' vs '.join(r['label'] for r in runs)} — Llama h{args.hidden_size} L{args.num_layers} "
                 f"({params:.2f} M params), {info['source']}, {args.max_steps} steps × {args.batch_size} × "
                 f"{args.seq_len} tokens, lr {args.learning_rate:g} (cosine), seed {args.seed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.logging_steps is None:
        args.logging_steps = max(1, args.max_steps // 50)
    hf_logging.set_verbosity_warning()
    optims = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    tokenizer, train, evaluation, info = build_data(args)
    print(f"data: {info['source']}: {info['characters']:,} chars -> {info['tokens']:,} tokens "
          f"(BPE vocab {info['vocab_size']}, {info['chars_per_token']} chars/token, trained in "
          f"{info['tokenizer_seconds']} s); {info['train_blocks']} train / {info['eval_blocks']} held-out blocks "
          f"of {args.seq_len} tokens", flush=True)
    epochs = args.max_steps * args.batch_size / info["train_blocks"]
    print(f"model: Llama h{args.hidden_size} L{args.num_layers}; {args.max_steps} steps x batch "
          f"{args.batch_size} = {epochs:.1f} epochs; optimizers: {', '.join(optims)} (hf_alphaadam "
          f"{hf_alphaadam.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True)

    runs = [train_one(optim, args, tokenizer, train, evaluation) for optim in optims]

    header, rows = summary_table(runs, args.max_steps)
    table = markdown(header, rows)
    print(f"\n{runs[0]['num_parameters'] / 1e6:.2f} M parameters; train loss = mean over each logging window of "
          f"{args.logging_steps} steps; eval on {info['eval_blocks']} held-out blocks\n")
    print(table)
    print("(train s: one run each, including the per-log statistics; on a shared or throttled machine wall times "
          "vary several-fold between identical runs, so compare losses here and speed with repeated runs)")
    for run in runs:
        groups = alpha_series(run["log_history"])
        if groups:
            final = ", ".join(f"{g}: alpha {s['mean'][-1]:.2f} (min {s['min'][-1]:.2f}, max {s['max'][-1]:.2f}), "
                              f"mask ratio {s['mask_ratio'][-1]:.3f}" for g, s in sorted(groups.items()))
            print(f"{run['label']} at the last log step — {final}")

    (output_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    results = {"settings": vars(args), "data": info, "header": header, "rows": rows,
               "runs": [{k: v for k, v in run.items()} for run in runs]}
    (output_dir / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    written = ["results.md", "results.json"]
    if not args.no_plot:
        plot(runs, info, args, output_dir / "compare.png")
        written.append("compare.png")
    print(f"\nwrote {', '.join(str(output_dir / name) for name in written)}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
