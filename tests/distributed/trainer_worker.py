"""A tiny Trainer run used by the distributed and resume tests (single process, torchrun DDP, DeepSpeed).

    python trainer_worker.py OUT_DIR [--max_steps 8] [--save_steps 4] [--stop_after N] [--resume]
        [--optim alphaadam] [--per_device_batch 8] [--deepspeed ds.json] [--sleep 0]

Writes ``OUT_DIR/report-rank{r}.json`` with the training losses, per-tensor alpha per step and a hash of the
final parameters; checkpoints go to ``OUT_DIR/run``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

import hf_alphaadam  # noqa: F401  (registers optim="alphaadam")
from hf_alphaadam.trainer.checkpoint import last_complete_checkpoint


class TokenData(torch.utils.data.Dataset):
    def __init__(self, size: int = 64, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(1234)
        # a learnable pattern: each sequence counts up from a random start, modulo the vocabulary
        starts = torch.randint(0, 128, (size, 1), generator=generator)
        self.tokens = (starts + torch.arange(length)) % 128

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


class RecordAlpha(TrainerCallback):
    """Per-tensor alpha of every optimizer step, read straight from the optimizer."""

    def __init__(self, stop_after: int | None, sleep: float) -> None:
        self.alphas: list[dict] = []
        self.stop_after = stop_after
        self.sleep = sleep

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        inner = optimizer
        while not hasattr(inner, "statistics") and hasattr(inner, "optimizer"):
            inner = inner.optimizer
        stats = inner.statistics(per_tensor=True)["tensors"]
        self.alphas.append({name: value["alpha"] for name, value in stats.items()})
        if self.stop_after is not None and state.global_step >= self.stop_after:
            control.should_training_stop = True
            control.should_save = True
        time.sleep(self.sleep)
        return control


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--save_steps", type=int, default=4)
    parser.add_argument("--stop_after", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--optim", default="alphaadam")
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--deepspeed", default=None)
    parser.add_argument("--sleep", type=float, default=0.0)
    cli = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    args = TrainingArguments(
        output_dir=os.path.join(cli.out_dir, "run"), max_steps=cli.max_steps, save_steps=cli.save_steps,
        per_device_train_batch_size=cli.per_device_batch, learning_rate=3e-3, weight_decay=0.1, warmup_steps=2,
        logging_steps=1, optim=cli.optim, use_cpu=True, report_to="none", seed=7, data_seed=7,
        deepspeed=cli.deepspeed, save_only_model=False, disable_tqdm=True, dataloader_num_workers=0,
    )
    record = RecordAlpha(cli.stop_after, cli.sleep)
    trainer = Trainer(model=model, args=args, train_dataset=TokenData(), callbacks=[record])
    resume = last_complete_checkpoint(args.output_dir) if cli.resume else None
    trainer.train(resume_from_checkpoint=resume)

    digest = hashlib.sha256()
    for name, param in sorted(trainer.model.named_parameters()):
        digest.update(name.encode())
        if hasattr(param, "ds_tensor"):  # ZeRO-3: the parameter itself is an empty placeholder
            param = param.ds_tensor
        digest.update(param.detach().float().cpu().numpy().tobytes())
    losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    report = {"losses": losses, "alphas": record.alphas, "param_hash": digest.hexdigest(),
              "resumed_from": resume, "world_size": trainer.args.world_size,
              "distributed_type": str(trainer.accelerator.state.distributed_type)}
    rank = trainer.args.process_index
    with open(os.path.join(cli.out_dir, f"report-rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    if torch.distributed.is_initialized():  # shut gloo down cleanly: exiting with its threads alive can abort
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
