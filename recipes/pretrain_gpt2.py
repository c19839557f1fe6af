"""GPT-2 pretraining from a config (random init) on a text corpus, with validation loss at fixed fractions of training.

Paper setup (nanoGPT on OpenWebText; Small / Medium / Large at lr 6e-4 / 3e-4 / 2e-4, batch 12 / 6 / 4; the
ablation's validation loss at 20 / 40 / 60 / 100 % of 10k steps, Table 3):

    python recipes/pretrain_gpt2.py recipes/configs/pretrain_gpt2_small.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain_gpt2.py \
        recipes/configs/pretrain_gpt2_medium.yaml
    python recipes/pretrain_gpt2.py recipes/configs/pretrain_gpt2_tiny_cpu.yaml --optim cautious_adamw

Documents (rows of `text_column`; paragraphs of a .txt file) are tokenized, each followed by the end-of-text token,
concatenated and cut into `block_size` blocks. The held-out split is `eval_split_size` of the documents when the data
has no validation split. `val_loss.json` / `val_loss.md` in output_dir list the eval loss at each fraction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from itertools import chain

from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainerCallback, TrainingArguments, set_seed)

from common import (DataArguments, callbacks, checkpoint_to_resume, load_data, parse_args, require_columns,
                    train_eval_split)


@dataclass
class PretrainArguments(DataArguments):
    dataset_name: str | None = "Skylion007/openwebtext"
    dataset_test_split: str = "validation"
    eval_split_size: float = 0.0005  # nanoGPT's OpenWebText hold-out
    text_column: str = "text"
    config_name: str | None = field(default="openai-community/gpt2", metadata={
        "help": "Model config (Hub name or local folder) to initialise from; ignored with --model_name_or_path."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Config changes, e.g. 'n_layer=24,n_embd=1024,n_head=16'."})
    tokenizer_name: str | None = field(default="openai-community/gpt2", metadata={"help": "Tokenizer to use."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Continue from these weights instead of a random init."})
    block_size: int = field(default=1024, metadata={"help": "Tokens per training sequence."})
    eval_fractions: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 1.0], metadata={
        "help": "Evaluate when these fractions of max_steps are done."})
    preprocessing_num_workers: int | None = None


class EvaluateAtFractions(TrainerCallback):
    """Ask the Trainer to evaluate when each fraction of the run's steps is reached."""

    def __init__(self, fractions):
        self.fractions = fractions

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in {max(1, round(f * state.max_steps)) for f in self.fractions}:
            control.should_evaluate = True


def tokenize_and_group(dataset, tokenizer, args: PretrainArguments):
    """Documents -> token ids (+ end of text) -> consecutive blocks of args.block_size tokens."""
    def tokenize(batch):
        ids = tokenizer(batch[args.text_column])["input_ids"]
        return {"input_ids": [doc + [tokenizer.eos_token_id] for doc in ids]}

    def group(batch):
        tokens = list(chain.from_iterable(batch["input_ids"]))
        usable = len(tokens) // args.block_size * args.block_size
        return {"input_ids": [tokens[i:i + args.block_size] for i in range(0, usable, args.block_size)]}

    dataset = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names,
                          num_proc=args.preprocessing_num_workers, desc="tokenize")
    return dataset.map(group, batched=True, batch_size=1000, num_proc=args.preprocessing_num_workers, desc="group")


def main():
    args, training_args = parse_args(PretrainArguments, TrainingArguments)
    data = load_data(args.dataset_name, args.dataset_config)
    train, evaluation = train_eval_split(data, args, seed=training_args.seed)
    require_columns(train, [args.text_column], "set --text_column")

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path)
    set_seed(training_args.seed)
    if args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
    else:
        config = AutoConfig.from_pretrained(args.config_name)
        if args.config_overrides:
            config.update_from_string(args.config_overrides)
        model = AutoModelForCausalLM.from_config(config)
    if len(tokenizer) > model.config.vocab_size or args.block_size > model.config.max_position_embeddings:
        raise ValueError(f"the model (vocab {model.config.vocab_size}, {model.config.max_position_embeddings} "
                         f"positions) cannot take the tokenizer's {len(tokenizer)} tokens / --block_size "
                         f"{args.block_size}")
    print(f"{model.config.model_type}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")

    with training_args.main_process_first(desc="tokenize"):  # the others then read the cached result
        train = tokenize_and_group(train, tokenizer, args)
        evaluation = tokenize_and_group(evaluation, tokenizer, args) if evaluation is not None else None
    if len(train) == 0:
        raise ValueError(f"the training data has fewer than --block_size {args.block_size} tokens")

    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[*callbacks(args), *([EvaluateAtFractions(args.eval_fractions)] if evaluation else [])],
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the whole log history, alpha values included
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # Table 3 of the paper: validation loss at each fraction of the run.
    max_steps = trainer.state.max_steps
    losses = {round(entry["step"] / max_steps, 4): entry["eval_loss"]
              for entry in trainer.state.log_history if "eval_loss" in entry}
    if trainer.is_world_process_zero() and losses:
        with open(os.path.join(training_args.output_dir, "val_loss.json"), "w") as handle:
            json.dump({"max_steps": max_steps, "val_loss": {str(k): v for k, v in losses.items()}}, handle, indent=2)
        rows = [f"| {100 * f:g}% | {loss:.4f} | {math.exp(min(loss, 50)):.2f} |" for f, loss in sorted(losses.items())]
        table = "\n".join(["| of training | val loss | perplexity |", "|---|---|---|", *rows])
        with open(os.path.join(training_args.output_dir, "val_loss.md"), "w") as handle:
            handle.write(table + "\n")
        print(table)
    trainer.end()


if __name__ == "__main__":
    main()
