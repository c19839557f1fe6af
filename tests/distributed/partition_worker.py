"""Run under ``torchrun --nproc_per_node 2``: flat-partition groups (``whole_numel``, as the plugin builds them for
DeepSpeed ZeRO) where one rank's partition is empty and never has a gradient. That rank must still join every
reduction, so the other rank's alpha equals the single-process value (and nothing hangs). Writes a JSON report
per rank."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from hf_alphaadam import AlphaAdam

STEPS = 5
OPTIONS = dict(lr=1e-2, weight_decay=0.1)


def data():
    generator = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(10, generator=generator), "b": torch.randn(6, generator=generator)}
    grads = [{name: torch.randn(w.shape, generator=generator) + 0.5 for name, w in weights.items()}
             for _ in range(STEPS)]
    return weights, grads


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    weights, grads = data()

    whole = {name: w.clone().requires_grad_() for name, w in weights.items()}
    reference = AlphaAdam([{"params": [whole[n]], "param_names": [n], "name": n} for n in whole], **OPTIONS)
    # "a" lives entirely on rank 0 (rank 1's partition is empty); "b" is split in halves
    part_a = weights["a"].clone() if rank == 0 else torch.empty(0)
    part_b = weights["b"][3 * rank:3 * rank + 3].clone()
    parts = {"a": part_a.requires_grad_(), "b": part_b.requires_grad_()}
    partitioned = AlphaAdam([{"params": [parts[n]], "param_names": [n], "name": n, "whole_numel": weights[n].numel()}
                             for n in parts], **OPTIONS)

    expected, got = [], []
    for step in range(STEPS):
        for name in whole:
            whole[name].grad = grads[step][name].clone()
        reference.step()
        expected.append(reference.statistics(per_tensor=True)["tensors"])
        parts["a"].grad = grads[step]["a"].clone() if rank == 0 else None
        parts["b"].grad = grads[step]["b"][3 * rank:3 * rank + 3].clone()
        partitioned.step()
        got.append(partitioned.statistics(per_tensor=True)["tensors"])
    report = {"rank": rank, "expected": expected, "got": got,
              "b_diff": (parts["b"].detach() - whole["b"].detach()[3 * rank:3 * rank + 3]).abs().max().item()}
    if rank == 0:
        report["a_diff"] = (parts["a"].detach() - whole["a"].detach()).abs().max().item()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
