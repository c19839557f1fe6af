"""GLUE fine-tuning (sequence classification / STS-B regression) with the Trainer, and the paper's lr sweep.

Paper setup (RoBERTa-base, 3 epochs, weight decay 0.01, batch 32 (QQP 128), lr grid 1e-5 ... 5e-5, best per task):

    python recipes/glue.py recipes/configs/glue_roberta_base.yaml                  # all 7 tasks x 5 learning rates
    python recipes/glue.py recipes/configs/glue_roberta_base.yaml --task_name qqp --per_device_train_batch_size 128
    python recipes/glue.py recipes/configs/glue_tiny_cpu.yaml --task_name rte --optim cautious_adamw
    python recipes/glue.py recipes/configs/glue_tiny_cpu.yaml --dataset_name ../shared/data/glue --task_name rte mrpc

One run per (task, learning rate) in `output_dir/<task>/lr<lr>`. With several learning rates (`--lr_grid`) the best
eval score per task is reported like the paper's table (`glue_results.md` / `.json` in output_dir). The score is
the paper's per-task metric: accuracy (SST-2, QNLI, RTE), accuracy and F1 (MRPC, QQP), Matthews correlation
(CoLA), Pearson and Spearman correlation (STS-B); where there are two, their mean ranks the sweep. Metrics come
from scikit-learn and scipy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

import numpy as np
from accelerate import PartialState
from datasets import Value
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

from common import (DataArguments, callbacks, checkpoint_to_resume, load_data, parse_args, require_columns,
                    train_eval_split)

# task -> (text columns, number of labels (1 = regression), metrics; their mean is the task's score)
TASKS = {
    "mrpc": (("sentence1", "sentence2"), 2, ("accuracy", "f1")),
    "stsb": (("sentence1", "sentence2"), 1, ("pearson", "spearman")),
    "cola": (("sentence", None), 2, ("matthews_correlation",)),
    "rte": (("sentence1", "sentence2"), 2, ("accuracy",)),
    "sst2": (("sentence", None), 2, ("accuracy",)),
    "qnli": (("question", "sentence"), 2, ("accuracy",)),
    "qqp": (("question1", "question2"), 2, ("accuracy", "f1")),
}


@dataclass
class GlueArguments(DataArguments):
    task_name: list[str] = field(default_factory=lambda: ["rte"], metadata={
        "help": f"One or more GLUE tasks: {', '.join(TASKS)}."})
    lr_grid: list[float] | None = field(default=None, metadata={
        "help": "Learning rates to sweep per task (the best is reported); default: just --learning_rate."})
    model_name_or_path: str = field(default="FacebookAI/roberta-base", metadata={"help": "Pretrained encoder."})
    max_seq_length: int = field(default=512, metadata={"help": "Longer inputs are truncated."})
    dataset_name: str | None = "nyu-mll/glue"   # the task name is the dataset config (or the local sub-folder)
    dataset_test_split: str = "validation"      # GLUE's test labels are hidden: evaluate on validation ("dev")

    def __post_init__(self):
        unknown = [t for t in self.task_name if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown GLUE task(s) {unknown}; choose from {list(TASKS)}")


def compute_metrics_for(task):
    _, num_labels, names = TASKS[task]

    def compute_metrics(prediction):
        logits, labels = prediction
        if num_labels == 1:
            scores = np.squeeze(logits, -1)
            return {"pearson": float(pearsonr(scores, labels)[0]), "spearman": float(spearmanr(scores, labels)[0])}
        predicted = np.argmax(logits, axis=-1)
        all_metrics = {"accuracy": accuracy_score(labels, predicted), "f1": f1_score(labels, predicted),
                       "matthews_correlation": matthews_corrcoef(labels, predicted)}
        return {name: float(all_metrics[name]) for name in names}

    return compute_metrics


def run(task, learning_rate, train, evaluation, args: GlueArguments, training_args: TrainingArguments) -> dict:
    """Fine-tune on one task at one learning rate; the eval metrics."""
    (first, second), num_labels, _ = TASKS[task]
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)

    def tokenize(batch):
        return tokenizer(batch[first], batch[second] if second else None, truncation=True,
                         max_length=args.max_seq_length)

    train, evaluation = (d.map(tokenize, batched=True, remove_columns=[c for c in d.column_names if c != "label"])
                         for d in (train, evaluation))
    if num_labels == 1:  # STS-B: float targets for the MSE loss
        train, evaluation = (d.cast_column("label", Value("float32")) for d in (train, evaluation))

    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name_or_path, num_labels=num_labels,
        problem_type="regression" if num_labels == 1 else "single_label_classification")
    run_args = replace(training_args, learning_rate=learning_rate,
                       output_dir=os.path.join(training_args.output_dir, task, f"lr{learning_rate:g}"))
    trainer = Trainer(model=model, args=run_args, train_dataset=train, eval_dataset=evaluation,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=compute_metrics_for(task), callbacks=callbacks(args))
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(run_args))
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the whole log history, alpha values included
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def main():
    args, training_args = parse_args(GlueArguments, TrainingArguments)
    learning_rates = args.lr_grid or [training_args.learning_rate]
    data = {}
    for task in args.task_name:  # fail before any training when a task's data is missing or malformed
        (first, second), *_ = TASKS[task]
        data[task] = train_eval_split(load_data(args.dataset_name, task), args, seed=training_args.seed)
        require_columns(data[task][0], [c for c in (first, second, "label") if c], f"the columns of GLUE {task}")
        if data[task][1] is None:
            raise ValueError(f"GLUE {task}: no {args.dataset_test_split!r} split to evaluate on")

    results = {}
    for task in args.task_name:
        _, _, names = TASKS[task]
        runs = {lr: run(task, lr, *data[task], args, training_args) for lr in learning_rates}

        def score(metrics):
            return float(np.mean([metrics[f"eval_{m}"] for m in names]))

        best_lr = max(runs, key=lambda lr: score(runs[lr]))
        results[task] = {"best_lr": best_lr, "score": 100 * score(runs[best_lr]),
                         **{m: 100 * runs[best_lr][f"eval_{m}"] for m in names},
                         "runs": {str(lr): {m: 100 * runs[lr][f"eval_{m}"] for m in names} for lr in learning_rates}}

    if training_args.process_index == 0:
        with open(os.path.join(training_args.output_dir, "glue_results.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        table = ["| task | " + " | ".join(results) + " | avg |", "|---" * (len(results) + 2) + "|",
                 "| score | " + " | ".join(f"{r['score']:.2f}" for r in results.values())
                 + f" | {np.mean([r['score'] for r in results.values()]):.2f} |",
                 "| best lr | " + " | ".join(f"{r['best_lr']:g}" for r in results.values()) + " | |"]
        with open(os.path.join(training_args.output_dir, "glue_results.md"), "w") as handle:
            handle.write("\n".join(table) + "\n")
        print("\n".join(table))
    PartialState().destroy_process_group()


if __name__ == "__main__":
    main()
