"""GRPO on GSM8K questions with TRL's GRPOTrainer and a correctness reward.

    python recipes/grpo.py recipes/configs/grpo_gsm8k.yaml
    python recipes/grpo.py recipes/configs/grpo_tiny_cpu.yaml --optim adamw_torch --max_steps 5
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/grpo.py recipes/configs/grpo_gsm8k.yaml

Each question becomes the prompt "Question: ...\\nAnswer:" (the SFT recipe's format, so an SFT checkpoint is a
good start). The reward is 1 when the final number of a completion (after "####", else the last number) equals
the reference's "#### N", else 0. GRPOTrainer samples `num_generations` completions per prompt and logs the mean
reward (`reward`, `rewards/correctness/mean`); with an eval split it reports the same on held-out questions.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_peft_config

from common import (GSM8K_PROMPT, DataArguments, callbacks, checkpoint_to_resume, gsm8k_number, load_data,
                    parse_args, require_columns, train_eval_split)


@dataclass
class GRPOScriptArguments(DataArguments):
    dataset_name: str | None = "openai/gsm8k"
    dataset_config: str | None = "main"
    question_column: str = "question"
    answer_column: str = "answer"


def correctness(completions, target, **kwargs) -> list[float]:
    """1.0 where the completion's final number is the reference answer."""
    return [float(gsm8k_number(c) is not None and gsm8k_number(c) == t) for c, t in zip(completions, target)]


def to_prompt(example, question_column, answer_column):
    return {"prompt": GSM8K_PROMPT.format(question=example[question_column]),
            "target": gsm8k_number(example[answer_column])}


def main():
    script_args, training_args, model_args = parse_args(GRPOScriptArguments, GRPOConfig, ModelConfig)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision,
                                       "attn_implementation": model_args.attn_implementation,
                                       **(training_args.model_init_kwargs or {})}

    data = load_data(script_args.dataset_name, script_args.dataset_config)
    train, evaluation = train_eval_split(data, script_args, seed=training_args.seed)
    require_columns(train, [script_args.question_column, script_args.answer_column],
                    "set --question_column / --answer_column")
    columns = {"question_column": script_args.question_column, "answer_column": script_args.answer_column}
    train, evaluation = (None if d is None else d.map(to_prompt, fn_kwargs=columns, remove_columns=d.column_names)
                         for d in (train, evaluation))

    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=correctness,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks(script_args),
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    if evaluation is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_state()  # trainer_state.json: the whole log history, alpha values included
    trainer.end()


if __name__ == "__main__":
    main()
