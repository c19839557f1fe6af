"""Direct preference optimisation on HH-RLHF-style pairs with TRL's DPOTrainer.

    python recipes/dpo.py recipes/configs/dpo_hh_rlhf.yaml
    python recipes/dpo.py recipes/configs/dpo_tiny_cpu.yaml --optim cautious_adamw --max_steps 5
    python recipes/dpo.py recipes/configs/dpo_tiny_cpu.yaml \
        --dataset_name ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/dpo.py recipes/configs/dpo_hh_rlhf.yaml

The data holds whole dialogues in `chosen` / `rejected` ("\\n\\nHuman: ... \\n\\nAssistant: ..."). The prompt is
everything up to and including the last "\\n\\nAssistant:", the responses are what follows it; pairs whose two
dialogues differ before that point are dropped. Data that already has `prompt` / `chosen` / `rejected` columns is
used as it is. Evaluation reports DPO's reward accuracy and margin on the held-out pairs
(`eval_rewards/accuracies`, `eval_rewards/margins`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config

from common import (DataArguments, callbacks, checkpoint_to_resume, load_data, parse_args, require_columns,
                    train_eval_split)

ASSISTANT = "\n\nAssistant:"


@dataclass
class DPOScriptArguments(DataArguments):
    dataset_name: str | None = "Anthropic/hh-rlhf"
    dataset_config: str | None = None


def split_dialogues(example):
    """{'chosen': dialogue, 'rejected': dialogue} -> shared prompt + the two last assistant turns."""
    cut = example["chosen"].rfind(ASSISTANT) + len(ASSISTANT)
    prompt = example["chosen"][:cut]
    valid = cut >= len(ASSISTANT) and example["rejected"].startswith(prompt)
    return {"prompt": prompt, "chosen": example["chosen"][cut:], "rejected": example["rejected"][cut:],
            "valid": valid}


def to_preference_pairs(dataset):
    if dataset is None or "prompt" in dataset.column_names:
        return dataset
    pairs = dataset.map(split_dialogues, remove_columns=dataset.column_names).filter(lambda row: row["valid"])
    return pairs.remove_columns("valid")


def main():
    script_args, training_args, model_args = parse_args(DPOScriptArguments, DPOConfig, ModelConfig)
    training_args.model_init_kwargs = {"dtype": model_args.dtype, "revision": model_args.model_revision,
                                       "attn_implementation": model_args.attn_implementation,
                                       **(training_args.model_init_kwargs or {})}

    data = load_data(script_args.dataset_name, script_args.dataset_config)
    train, evaluation = train_eval_split(data, script_args, seed=training_args.seed)
    require_columns(train, ["chosen", "rejected"], "DPO needs preference pairs")
    train, evaluation = to_preference_pairs(train), to_preference_pairs(evaluation)

    trainer = DPOTrainer(
        model=model_args.model_name_or_path,  # the reference model is loaded from the same checkpoint
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),  # with LoRA the reference is the base model, adapters disabled
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
