"""Training runs shared by ``adapm_convergence`` and ``adapm_ablation``: one (optimizer options, lr, seed) on a
small char-level Llama, the lr sweep with its edge check, fresh seeds at the best lr, and paired differences.

A *variant* is a name and its AdaPM options (``None``: ``torch.optim.AdamW``). Every run of a benchmark shares the
settings (model size, steps, batch, schedule); one seed fixes both the initial weights and the order of the
training batches, so runs of the same seed differ only in the optimizer. The validation loss is the mean over
fixed held-out batches (the last 10 % of the corpus), measured at every ``1 / eval_points`` of training, which
includes 20 / 40 / 60 / 100 %.

Corpora (character level, ``--data_dir`` layout of ``../shared/data``):

- ``shakespeare``: Tiny Shakespeare (``tinyshakespeare/input.txt``), the headline corpus;
- ``gsm8k``: the GSM8K training problems, question and worked answer per problem (``gsm8k/train.jsonl``): prose
  mixed with arithmetic, a different distribution from verse.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import torch

from benchmarks._common import (at_fraction, batches, best_lrs, char_data, data_path, decay_groups,
                                edge_extensions, eval_steps, hub_dataset, lm_loss, t_interval, tiny_llama,
                                warmup_cosine)

LOG = logging.getLogger("benchmarks.adapm")

FRACTIONS = (0.2, 0.4, 0.6, 1.0)  # where the validation loss is reported (early speed: 20 / 40 %)
CORPORA = ("shakespeare", "gsm8k")
VALID_SEED = 12345  # the fixed held-out batches
DATA_SEED_OFFSET = 1000  # training batches of seed s come from generator seed 1000 + s
MOMENTUM_KEYS = ("exp_avg", "lowrank_left", "lowrank_right")  # AdamW's and AdaPM's first-moment state


# ---------------------------------------------------------------------------------------------------- data

def gsm8k_text() -> str:
    """The GSM8K training problems as one text: question, newline, answer, blank line, per problem."""
    path = data_path("gsm8k/train.jsonl")
    if path is not None:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = list(hub_dataset("openai/gsm8k", "main")["train"])
    return "".join(f"{row['question']}\n{row['answer']}\n\n" for row in rows)


_DATA: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}


def corpus_data(corpus: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids, validation ids, vocabulary size) of ``corpus`` (one of :data:`CORPORA`), cached per process."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; the corpora are: {', '.join(CORPORA)}")
    if corpus not in _DATA:
        if corpus == "shakespeare":
            _DATA[corpus] = char_data()
        else:
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as folder:  # char_data reads a file
                path = Path(folder) / "gsm8k.txt"
                path.write_text(gsm8k_text(), encoding="utf-8")
                _DATA[corpus] = char_data(path)
    return _DATA[corpus]


# ---------------------------------------------------------------------------------------------- one run

def make_optimizer(options: dict[str, Any] | None, model, lr: float, settings: dict[str, Any]):
    """``torch.optim.AdamW`` for ``options=None``, else ``AdaPM(**options)``; the Trainer's decay groups, one
    worker thread for AdaPM's low-rank tensors (the benchmarks use one core)."""
    groups = decay_groups(model, settings["weight_decay"])
    common = {"lr": lr, "betas": tuple(settings["betas"]), "eps": settings["eps"]}
    if options is None:
        return torch.optim.AdamW([{k: v for k, v in g.items() if k not in ("param_names", "name")} for g in groups],
                                 **common)
    from hf_alphaadam import AdaPM

    return AdaPM(groups, **common, log_policy=False, tensor_threads=1, **options)


def state_bytes(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the optimizer's state tensors after training: ``momentum`` (first moment: ``exp_avg`` or the
    low-rank factors), ``second_moment`` (everything else but the step counters) and ``total``."""
    momentum = other = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or key == "step":
                continue
            size = value.numel() * value.element_size()
            if key in MOMENTUM_KEYS:
                momentum += size
            else:
                other += size
    return {"momentum": momentum, "second_moment": other, "total": momentum + other}


def train_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one job (``settings``, ``corpus``, ``variant``, ``options``, ``lr``, ``seed``, ``phase``); returns
    its validation curve, the loss at :data:`FRACTIONS` (``inf`` once diverged) and the state bytes."""
    settings, lr, seed = job["settings"], job["lr"], job["seed"]
    torch.set_num_threads(settings["threads"])
    train, valid, vocab = corpus_data(job["corpus"])
    steps, context, batch_size = settings["steps"], settings["context"], settings["batch_size"]
    model = tiny_llama(vocab, settings["hidden"], settings["layers"], settings["heads"], context, seed=seed)
    optimizer = make_optimizer(job["options"], model, lr, settings)
    schedule = warmup_cosine(optimizer, steps, settings["warmup_fraction"])
    valid_batches = list(batches(valid, settings["eval_batches"], batch_size, context, seed=VALID_SEED))
    checkpoints = set(eval_steps(steps, settings["eval_points"]))
    curve: list[list[float]] = []
    finite = True
    started = time.perf_counter()

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            curve.append([step, sum(lm_loss(model, b).item() for b in valid_batches) / len(valid_batches)])
        model.train()

    evaluate(0)
    for step, batch in enumerate(batches(train, steps, batch_size, context, seed=DATA_SEED_OFFSET + seed), 1):
        optimizer.zero_grad(set_to_none=True)
        loss = lm_loss(model, batch)
        loss.backward()
        if settings["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
        optimizer.step()
        schedule.step()
        if not math.isfinite(loss.item()):
            finite = False
            break  # diverged: counts as infinitely bad
        if step in checkpoints:
            evaluate(step)
    values = {str(f): (at_fraction(curve, steps, f) if finite else math.inf) for f in FRACTIONS}
    return {"corpus": job["corpus"], "variant": job["variant"], "lr": lr, "seed": seed, "phase": job["phase"],
            "curve": curve, "at_fraction": values, "state_bytes": state_bytes(optimizer),
            "seconds": round(time.perf_counter() - started, 2)}


def run_jobs(jobs: list[dict[str, Any]], desc: str) -> list[dict[str, Any]]:
    """Run the jobs one after another in this process, logging one line per run."""
    results = []
    for i, job in enumerate(jobs, 1):
        result = train_run(job)
        results.append(result)
        LOG.info("%s %d/%d %s %-16s lr=%-8g seed=%d: %s (%.0f s)", desc, i, len(jobs), result["corpus"],
                 result["variant"], result["lr"], result["seed"],
                 " ".join(f"{float(f):.0%} {v:.4f}" for f, v in result["at_fraction"].items()), result["seconds"])
    return results


# ------------------------------------------------------------------------------------- sweep, then seeds

def sweep_then_seeds(variants: dict[str, dict[str, Any] | None], lrs: dict[str, list[float]], corpus: str,
                     settings: dict[str, Any], seeds: list[int], sweep_seed: int, extend: int, factor: float
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Phase 1: every variant at each of its ``lrs`` with ``sweep_seed``; where the best lr is at an edge of the
    lrs tried, one more lr ``factor`` beyond it, at most ``extend`` times. Phase 2: every variant at its best lr
    with each of ``seeds`` (fresh seeds: the lr choice does not bias them). Returns (sweep runs, final runs)."""
    def job(variant: str, lr: float, seed: int, phase: str) -> dict[str, Any]:
        return {"settings": settings, "corpus": corpus, "variant": variant, "options": variants[variant], "lr": lr,
                "seed": seed, "phase": phase}

    # the variants of one lr run next to each other, so that changes of the machine's load hit them alike
    grid = sorted({lr for values in lrs.values() for lr in values})
    sweep = run_jobs([job(v, lr, sweep_seed, "sweep") for lr in grid for v in variants if lr in lrs[v]],
                     f"{corpus} lr sweep")
    for _ in range(extend):
        extra = edge_extensions(sweep, factor)
        if not extra:
            break
        LOG.info("best lr at the edge of the grid, extending: %s", ", ".join(f"{v} {lr:g}" for v, lr in extra))
        sweep += run_jobs([job(v, lr, sweep_seed, "sweep") for v, lr in extra], f"{corpus} lr sweep, extension")
    best = best_lrs(sweep)
    LOG.info("%s best lr: %s", corpus, ", ".join(f"{v} {lr:g}" for v, lr in best.items()))
    finals = run_jobs([job(v, best[v], s, "final") for s in seeds for v in variants], f"{corpus} seeds at best lr")
    return sweep, finals


def paired_differences(runs: list[dict[str, Any]], reference: str = "adamw") -> dict[str, dict[str, Any]]:
    """Per variant and fraction: the mean loss over seeds and the paired (same seed) relative difference to
    ``reference`` in percent, with its 95 % t interval (:func:`_common.t_interval`)."""
    by_variant: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], {})[run["seed"]] = run["at_fraction"]
    ref = by_variant.get(reference)
    out: dict[str, dict[str, Any]] = {}
    for variant, seeds in by_variant.items():
        row: dict[str, Any] = {"seeds": sorted(seeds), "loss": {}, "vs_" + reference + "_pct": {}}
        for f in FRACTIONS:
            key = str(f)
            row["loss"][key] = t_interval([seeds[s][key] for s in sorted(seeds)])
            if ref is not None:
                common = sorted(set(seeds) & set(ref))
                row["vs_" + reference + "_pct"][key] = t_interval(
                    [100 * (seeds[s][key] / ref[s][key] - 1) for s in common])
        out[variant] = row
    return out


def interval_verdict(entry: dict[str, Any], target_pct: float | None = None) -> str:
    """The verdict of a paired difference (percent, with its 95 % interval) against AdamW.

    With ``target_pct`` (a tolerated gap, e.g. 1.0): "meets" when the whole interval is below it, "misses" when the
    whole interval is above it, "not shown" otherwise. Without: "lower" / "higher" than AdamW when the interval
    excludes 0, "not shown" when it covers 0 (or there is only one seed).
    """
    mean, half = entry["mean"], entry["half_width_95"]
    if not math.isfinite(mean):
        return "diverged"
    if entry["n"] < 2 or not math.isfinite(half):
        return "not shown (one seed)"
    if target_pct is not None:
        if mean + half <= target_pct:
            return f"meets (95 % interval below +{target_pct:g} %)"
        if mean - half > target_pct:
            return f"misses (95 % interval above +{target_pct:g} %)"
        return f"not shown (95 % interval covers +{target_pct:g} %)"
    if mean - half > 0:
        return "higher than AdamW"
    if mean + half < 0:
        return "lower than AdamW"
    return "not shown (95 % interval covers 0)"


def fmt_interval(entry: dict[str, Any]) -> str:
    """``+1.23 ± 0.45 %`` (mean ± 95 % t half-width over the paired seeds)."""
    half = entry["half_width_95"]
    return f"{entry['mean']:+.2f} ± {half:.2f} %" if math.isfinite(half) else f"{entry['mean']:+.2f} % (one seed)"


def model_parameters(settings: dict[str, Any], corpus: str) -> int:
    """Parameters of the benchmark's Llama on ``corpus`` (its vocabulary sets the embedding size)."""
    vocab = corpus_data(corpus)[2]
    model = tiny_llama(vocab, settings["hidden"], settings["layers"], settings["heads"], settings["context"])
    return sum(p.numel() for p in model.parameters())
