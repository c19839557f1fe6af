"""Run under ``torchrun --nproc_per_node 2``: AlphaAdam on FSDP2 (``fully_shard``) parameters against the same
model unsharded in every process, then a distributed-checkpoint round trip. Writes a JSON report per rank.

``python fsdp2_worker.py OUT PATH``: PATH is ``foreach`` / ``loop`` (the optimizer built on the sharded model) or
``swap`` (built on the unsharded model, whose parameters are then replaced by their DTensors in the param groups,
as Accelerate does when it prepares a model for FSDP2 after the optimizer exists). ``adapm`` runs
:func:`adapm_main` instead."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from hf_alphaadam import AlphaAdam


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    # odd sizes so that shards are uneven (and one bias shard is empty on one rank)
    return torch.nn.Sequential(torch.nn.Embedding(37, 12), torch.nn.Linear(12, 9), torch.nn.GELU(),
                               torch.nn.Linear(9, 1))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 37, (16,), generator=generator)
    return tokens, (tokens % 5).float()


def train(model, optimizer, steps, start=0):
    alphas = []
    for step in range(start, start + steps):
        tokens, target = batch(step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(tokens).squeeze(-1), target).backward()
        optimizer.step()
        alphas.append(optimizer.statistics(per_tensor=True)["tensors"])
    return alphas


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    for layer in (model[0], model[1], model[3]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main(out_dir: str, path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    options = dict(lr=1e-2, weight_decay=0.1, foreach=path != "loop")

    reference = build_model()
    reference_opt = AlphaAdam(reference.named_parameters(), **options)
    reference_alphas = train(reference, reference_opt, 6)

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    sharded = build_model()
    if path == "swap":
        sharded_opt = AlphaAdam(sharded.named_parameters(), **options)  # holds the plain parameters
        shard(sharded, mesh)
        sharded_params = [p for _, p in sharded.named_parameters()]  # same order, now DTensors
        assert len(sharded_opt.param_groups) == 1
        sharded_opt.param_groups[0]["params"] = sharded_params
    else:
        shard(sharded, mesh)
        sharded_opt = AlphaAdam(sharded.named_parameters(), **options)  # built before the first step: lazy state
    sharded_alphas = train(sharded, sharded_opt, 3)

    # distributed-checkpoint round trip in the middle of the run
    model_sd, optim_sd = get_state_dict(sharded, sharded_opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(out_dir, "dcp"))
    resumed = shard(build_model(), mesh)
    resumed_opt = AlphaAdam(resumed.named_parameters(), **options)
    model_sd, optim_sd = get_state_dict(resumed, resumed_opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "dcp"))
    set_state_dict(resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    sharded_alphas += train(resumed, resumed_opt, 3, start=3)

    state_kinds = {}
    for name, param in resumed.named_parameters():
        st = resumed_opt.state[param]
        state_kinds[name] = {key: type(value).__name__ for key, value in st.items()}
        assert st["exp_avg"].dtype == torch.float32
    report = {
        "rank": rank,
        "reference_alphas": reference_alphas,
        "sharded_alphas": sharded_alphas,
        "max_param_diff": max((full(p).detach() - q.detach()).abs().max().item()
                              for p, q in zip(resumed.parameters(), reference.parameters())),
        "max_exp_avg_diff": max((full(resumed_opt.state[p]["exp_avg"]) - reference_opt.state[q]["exp_avg"])
                                .abs().max().item() for p, q in zip(resumed.parameters(), reference.parameters())),
        "local_shapes": {n: list(p.to_local().shape) for n, p in resumed.named_parameters()},
        "state_kinds": state_kinds,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    dist.barrier()
    dist.destroy_process_group()


def adapm_main(out_dir: str) -> None:
    """AdaPM on FSDP2: element-wise blocks (no momentum for the embedding, full elsewhere) equal the unsharded run;
    low-rank momentum and the compact second moment, which need whole matrices, are refused with their reason."""
    from hf_alphaadam import AdaPM

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    options = dict(lr=1e-2, weight_decay=0.1, none_modules=r"^0\.", log_policy=False)
    reference = build_model()
    reference_opt = AdaPM(reference.named_parameters(), **options)
    train(reference, reference_opt, 4)

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    sharded = shard(build_model(), mesh)
    sharded_opt = AdaPM(sharded.named_parameters(), **options)
    train(sharded, sharded_opt, 4)
    refusals = {}
    for name, extra in {"lowrank": dict(lowrank_modules=r"^1\.", rank=2), "mini": dict(second_moment="mini")}.items():
        try:
            AdaPM(sharded.named_parameters(), **{**options, **extra})
            refusals[name] = None
        except (ValueError, RuntimeError) as error:
            refusals[name] = f"{type(error).__name__}: {error}"
    report = {
        "rank": rank,
        "max_param_diff": max((full(p).detach() - q.detach()).abs().max().item()
                              for p, q in zip(sharded.parameters(), reference.parameters())),
        "embedding_state": sorted(sharded_opt.state[sharded[0].weight]),
        "linear_state": sorted(sharded_opt.state[sharded[1].weight]),
        "refusals": refusals,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2] == "adapm":
        adapm_main(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2])
