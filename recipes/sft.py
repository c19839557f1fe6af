"""Supervised fine-tuning on GSM8K with TRL's SFTTrainer, then GSM8K accuracy by greedy generation.

Paper setup (Llama-2-7B, 3 epochs, batch 32, max length 512, 20 warm-up steps):

    python recipes/sft.py recipes/configs/sft_llama2_gsm8k.yaml
    accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml recipes/sft.py \
        recipes/configs/sft_llama2_gsm8k.yaml

Small CPU run, another optimizer, LoRA, local data (any option of SFTConfig / ModelConfig can be overridden):

    python recipes/sft.py recipes/configs/sft_tiny_cpu.yaml --optim adamw_torch --max_steps 5
    python recipes/sft.py recipes/configs/sft_tiny_cpu.yaml --use_peft --lora_r 8 --dataset_name ../shared/data/gsm8k

Every example becomes a plain-text prompt/completion pair ("Question: ...\\nAnswer:" / the worked solution ending
in "#### N"), so base models need no chat template and the loss is on the completion only. The accuracy is the
exact match of the final number of the greedy answer with the reference's `#### N`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from common import (GSM8K_PROMPT, DataArguments, callbacks, checkpoint_to_resume, gsm8k_number, load_data,
                    parse_args, require_columns, train_eval_split)


@dataclass
class SFTScriptArguments(DataArguments):
    dataset_name: str | None = "openai/gsm8k"
    dataset_config: str | None = "main"
    question_column: str = "question"
    answer_column: str = "answer"
    max_new_tokens: int = field(default=256, metadata={"help": "Generation length for the accuracy eval."})
    eval_accuracy: bool = field(default=True, metadata={"help": "Measure GSM8K accuracy after training."})


def to_prompt_completion(example, question_column, answer_column):
    return {"prompt": GSM8K_PROMPT.format(question=example[question_column]),
            "completion": " " + example[answer_column]}


@torch.no_grad()
def gsm8k_accuracy(trainer, dataset, args: SFTScriptArguments) -> float:
    """Greedy answers to `dataset`'s questions (split over the processes), exact match of the final number."""
    model, tokenizer, accelerator = trainer.model, trainer.processing_class, trainer.accelerator
    model.eval()
    rows = list(zip(dataset[args.question_column], dataset[args.answer_column]))
    batch_size = trainer.args.per_device_eval_batch_size
    results = []
    # Equal shares (padded) so that every process runs the same number of generate() calls (ZeRO-3 / FSDP need it).
    with accelerator.split_between_processes(list(range(len(rows))), apply_padding=True) as indices:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            prompts = [GSM8K_PROMPT.format(question=rows[i][0]) for i in batch]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(accelerator.device)
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
            answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            results += [(i, gsm8k_number(a) == gsm8k_number(rows[i][1])) for i, a in zip(batch, answers)]
    correct = dict(gather_object(results))  # padding repeats an index; the dict keeps each question once
    return sum(correct.values()) / max(len(correct), 1)


def main():
    script_args, training_args, model_args = parse_args(SFTScriptArguments, SFTConfig, ModelConfig)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision,
                                       "attn_implementation": model_args.attn_implementation,
                                       **(training_args.model_init_kwargs or {})}

    data = load_data(script_args.dataset_name, script_args.dataset_config)
    train, evaluation = train_eval_split(data, script_args, seed=training_args.seed)
    require_columns(train, [script_args.question_column, script_args.answer_column],
                    "set --question_column / --answer_column")
    columns = {"question_column": script_args.question_column, "answer_column": script_args.answer_column}
    sft_train = train.map(to_prompt_completion, fn_kwargs=columns, remove_columns=train.column_names)
    sft_eval = None if evaluation is None else evaluation.map(to_prompt_completion, fn_kwargs=columns,
                                                              remove_columns=evaluation.column_names)

    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=sft_train,
        eval_dataset=sft_eval,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks(script_args),
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    if evaluation is not None:
        metrics = trainer.evaluate()
        if script_args.eval_accuracy:
            metrics["eval_gsm8k_accuracy"] = gsm8k_accuracy(trainer, evaluation, script_args)
            trainer.log({"eval_gsm8k_accuracy": metrics["eval_gsm8k_accuracy"]})
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_state()  # trainer_state.json: the whole log history, alpha values included
    trainer.end()


if __name__ == "__main__":
    main()
