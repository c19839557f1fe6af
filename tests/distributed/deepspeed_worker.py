"""Run under ``DS_ACCELERATOR=cpu torchrun --nproc_per_node 2``: AlphaAdam as DeepSpeed's client optimizer with
ZeRO stage 1, 2 or 3, one param group per tensor (each flat partition belongs to one tensor), against the same
model and optimizer in a single process. Both ranks see the same batch, so the averaged gradient is the
single-process one. Writes a JSON report per rank."""

from __future__ import annotations

import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist

from hf_alphaadam import AlphaAdam


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(37, 12), torch.nn.Linear(12, 9), torch.nn.GELU(),
                               torch.nn.Linear(9, 1))


def per_tensor_groups(model):
    return [{"params": [param], "param_names": [name], "name": name, "whole_numel": param.numel(),
             "weight_decay": 0.1 if param.ndim >= 2 else 0.0}
            for name, param in model.named_parameters()]


def batch(step: int):
    generator = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 37, (16,), generator=generator)
    return tokens, (tokens % 5).float()


def loss_of(model, step):
    tokens, target = batch(step)
    return torch.nn.functional.mse_loss(model(tokens).squeeze(-1), target)


def mixed_groups_are_refused(stage: int) -> str:
    """Plain groups (several tensors each) under ZeRO-1/2 become flat partitions: step() must refuse."""
    model = build_model()
    optimizer = AlphaAdam(model.parameters(), lr=1e-2)
    config = {"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.backward(loss_of(engine, 0))
    try:
        engine.step()
    except RuntimeError as error:
        return str(error)
    return ""


def main(out_dir: str, stage: int) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    refusal = mixed_groups_are_refused(stage)

    reference = build_model()
    reference_opt = AlphaAdam([{"params": [p], "param_names": [n], "name": n,
                                "weight_decay": 0.1 if p.ndim >= 2 else 0.0}
                               for n, p in reference.named_parameters()], lr=1e-2)
    reference_alphas, reference_losses = [], []
    for step in range(5):
        reference_opt.zero_grad()
        loss = loss_of(reference, step)
        loss.backward()
        reference_opt.step()
        reference_losses.append(loss.item())
        reference_alphas.append(reference_opt.statistics(per_tensor=True)["tensors"])

    model = build_model()
    optimizer = AlphaAdam(per_tensor_groups(model), lr=1e-2)
    config = {"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "gradient_clipping": 0.0, "steps_per_print": 1000}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    alphas, losses = [], []
    for step in range(5):
        loss = loss_of(engine, step)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        alphas.append(optimizer.statistics(per_tensor=True)["tensors"])
    report = {"rank": rank, "reference_alphas": reference_alphas, "alphas": alphas,
              "reference_losses": reference_losses, "losses": losses, "refusal": refusal}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
