"""Tensor lists of real model shapes, and an interleaved step-time measurement of optimizers over them.

Shared by ``step_time.py`` (CPU rows with the native kernel off) and ``device_check.py`` (GPU). Only the
optimizer step is timed (no forward / backward); each optimizer keeps its own state, the parameters and
gradients are shared (a step's time does not depend on their values). Each round steps every optimizer once, in a
shuffled order, so slow phases of a shared machine hit them alike; a ratio is the median over rounds of the
per-round ratio against torch's fused AdamW.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks._common import gpt2_small_named_shapes

NamedShapes = list[tuple[str, tuple[int, ...]]]
FUSED = "AdamW fused"
FOREACH = "AdamW foreach"


def lora_7b_named_shapes(rank: int = 16, layers: int = 32) -> NamedShapes:
    """LoRA A / B matrices of rank ``rank`` on every projection of a Llama-2-7B (hidden 4096, MLP 11008): 448
    tensors, 40M parameters for r=16 and 32 layers."""
    hidden, mlp = 4096, 11008
    projections = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                   "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
                   "mlp.gate_proj": (mlp, hidden), "mlp.up_proj": (mlp, hidden), "mlp.down_proj": (hidden, mlp)}
    shapes = []
    for layer in range(layers):
        for name, (out_features, in_features) in projections.items():
            prefix = f"model.layers.{layer}.{name}"
            shapes.append((f"{prefix}.lora_A.default.weight", (rank, in_features)))
            shapes.append((f"{prefix}.lora_B.default.weight", (out_features, rank)))
    return shapes


def llama_1b_named_shapes(scale: float = 1.0, layers: int = 16) -> NamedShapes:
    """Llama-3.2-1B's parameters (hidden 2048, MLP 8192, 8 KV heads of 64, vocabulary 128256, tied head): 1.24B
    parameters in 146 tensors; ``scale`` multiplies the widths and the vocabulary."""
    hidden, mlp, kv, vocab = (max(1, int(d * scale)) for d in (2048, 8192, 512, 128256))
    shapes: NamedShapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        shapes += [(f"{prefix}.input_layernorm.weight", (hidden,)),
                   (f"{prefix}.self_attn.q_proj.weight", (hidden, hidden)),
                   (f"{prefix}.self_attn.k_proj.weight", (kv, hidden)),
                   (f"{prefix}.self_attn.v_proj.weight", (kv, hidden)),
                   (f"{prefix}.self_attn.o_proj.weight", (hidden, hidden)),
                   (f"{prefix}.post_attention_layernorm.weight", (hidden,)),
                   (f"{prefix}.mlp.gate_proj.weight", (mlp, hidden)),
                   (f"{prefix}.mlp.up_proj.weight", (mlp, hidden)),
                   (f"{prefix}.mlp.down_proj.weight", (hidden, mlp))]
    return shapes + [("model.norm.weight", (hidden,))]


def tiles_named_shapes(count: int = 2000, side: int = 64) -> NamedShapes:
    """``count`` square matrices: many small tensors, where a step's per-tensor host cost shows."""
    return [(f"tiles.{i}.weight", (side, side)) for i in range(count)]


#: name -> (description, shapes). ``device_check.py`` and ``step_time.py`` pick from these.
TENSOR_LISTS: dict[str, Callable[..., NamedShapes]] = {
    "lora_7b": lora_7b_named_shapes,
    "tiles_64": tiles_named_shapes,
    "gpt2_small": gpt2_small_named_shapes,
    "llama_1b": llama_1b_named_shapes,
}


def engine_module():
    """The module holding AlphaAdam's functional core and its dispatch constants."""
    for name in ("hf_alphaadam.optim._adam_engine", "hf_alphaadam.optim.alphaadam"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if hasattr(module, "COMPILE_MIN_NUMEL"):
                return module
    raise ImportError("no module of hf_alphaadam.optim defines COMPILE_MIN_NUMEL")


@contextlib.contextmanager
def whole_group_compiled() -> Iterator[None]:
    """``fused=True`` sends every tensor of a group through the compiled multi-tensor step (the dispatch issue 19
    proposes; the current one sends tensors under ``COMPILE_MIN_NUMEL`` to foreach), with the native C kernel
    off."""
    engine = engine_module()
    previous_numel, previous_native = engine.COMPILE_MIN_NUMEL, os.environ.get("HF_ALPHAADAM_NATIVE")
    engine.COMPILE_MIN_NUMEL = 1
    os.environ["HF_ALPHAADAM_NATIVE"] = "0"
    try:
        yield
    finally:
        engine.COMPILE_MIN_NUMEL = previous_numel
        if previous_native is None:
            os.environ.pop("HF_ALPHAADAM_NATIVE", None)
        else:
            os.environ["HF_ALPHAADAM_NATIVE"] = previous_native


def build_optimizer(kind: str, named: list[tuple[str, torch.Tensor]], lr: float = 1e-5) -> torch.optim.Optimizer:
    """One of: ``AdamW fused``, ``AdamW foreach``, ``AlphaAdam``, ``Cautious`` (both ``fused=True``), ``AlphaAdam
    foreach`` (``foreach=True``: the multi-tensor eager path, few launches per step on a GPU), ``AdaPM`` (its
    defaults, on named parameters)."""
    params = [p for _, p in named]
    if kind == FUSED:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    if kind == FOREACH:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=True)
    from hf_alphaadam.optim import catalog

    if kind == "AlphaAdam":
        return catalog.build("alphaadam", params, lr=lr, weight_decay=0.01, fused=True)
    if kind == "AlphaAdam foreach":
        return catalog.build("alphaadam", params, lr=lr, weight_decay=0.01, foreach=True)
    if kind == "Cautious":
        return catalog.build("cautious_adamw", params, lr=lr, weight_decay=0.01, fused=True)
    if kind == "AdaPM":
        return catalog.build("adapm", named, lr=lr, weight_decay=0.01, log_policy=False)
    raise ValueError(f"unknown optimizer kind {kind!r}; known: {FUSED}, {FOREACH}, AlphaAdam, AlphaAdam foreach, "
                     "Cautious, AdaPM")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step_rounds(named_shapes: NamedShapes, kinds: list[str], device: torch.device, rounds: int,
                     dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Any]:
    """Interleaved step times of the optimizers ``kinds`` over parameters of ``named_shapes``.

    Returns per optimizer: ``median_s``, ``first_step_s`` (includes any compilation), ``ratio_vs_adamw_fused``
    (median of per-round ratios; ``FUSED`` must be in ``kinds``) and the raw ``times_s``."""
    torch.manual_seed(seed)
    named = [(name, torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype).mul_(0.02)))
             for name, shape in named_shapes]
    for _, p in named:
        p.grad = torch.randn_like(p).mul_(1e-3)
    optimizers = {kind: build_optimizer(kind, named) for kind in kinds}
    first: dict[str, float] = {}

    def step(kind: str) -> float:
        synchronize(device)
        started = time.perf_counter()
        optimizers[kind].step()
        synchronize(device)
        return time.perf_counter() - started

    with whole_group_compiled():
        for kind in kinds:
            first[kind] = step(kind)
            step(kind)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        order = list(kinds)
        rng = random.Random(seed)
        for _ in range(rounds):
            rng.shuffle(order)
            for kind in order:
                times[kind].append(step(kind))
    results: dict[str, Any] = {}
    for kind, values in times.items():
        entry = {"median_s": statistics.median(values), "first_step_s": first[kind], "times_s": values}
        if FUSED in times:
            entry["ratio_vs_adamw_fused"] = statistics.median(a / b for a, b in zip(values, times[FUSED]))
        results[kind] = entry
    return {"tensors": len(named), "numel": sum(p.numel() for _, p in named), "optimizers": results}
