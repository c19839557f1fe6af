"""8-bit AlphaAdam: optimizer-state memory and step time against bitsandbytes' AdamW8bit and 32-bit AlphaAdam,
and the loss curve of 8-bit against 32-bit AlphaAdam on a small causal LM.

1. **State memory and step time** on tensors shaped like GPT-2 small (124M; HF Conv1D layout, see
   ``step_time.py``), named ``wte`` / ``wpe`` / ``h.N...`` so that embeddings keep 32-bit state in both 8-bit
   optimizers (as the HF Trainer does for ``optim="adamw_bnb_8bit"``, which builds
   ``bitsandbytes.optim.AdamW(optim_bits=8)``). Each optimizer has its own parameters and random gradients;
   state bytes count every distinct state tensor (bitsandbytes' shared quantization maps once). Timing: one
   round = one step of each optimizer in a shuffled order, repeated; the medians over rounds are reported, and the
   ratios are medians of per-round ratios (so slow phases of a shared machine hit every optimizer alike).
2. **Loss curve**: a Llama (from ``LlamaConfig``, ~0.9M parameters, character vocabulary) trained on Tiny
   Shakespeare for a few hundred steps with 8-bit and 32-bit AlphaAdam from the same init and batches
   (``min_8bit_size`` lowered to 1024 so that this small model's matrices are actually quantized).

    python benchmarks/eight_bit.py            # full GPT-2 small shapes + 300 LM steps (~10+ min on 2 CPU cores)
    python benchmarks/eight_bit.py --quick    # scale 1/8, 60 LM steps: a smoke run

Writes ``benchmarks/results/eight_bit.json`` and ``eight_bit.png`` (``--output-dir`` to change). ``--device cuda``
runs both parts on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hf_alphaadam.optim.alphaadam import AlphaAdam  # noqa: E402

SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def gpt2_small_named_shapes(scale: float = 1.0, layers: int = 12) -> list[tuple[str, tuple[int, ...]]]:
    d = max(8, round(768 * scale))
    vocab = max(16, round(50257 * scale))
    context = max(8, round(1024 * scale))
    shapes = [("wte.weight", (vocab, d)), ("wpe.weight", (context, d))]
    for i in range(layers):
        block = [("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                 ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                 ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
                 ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))]
        shapes += [(f"h.{i}.{name}", shape) for name, shape in block]
    shapes += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return shapes


def machine(device: torch.device) -> dict:
    info = {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "load_average_start": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    return info


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    seen, total = set(), 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step" and value.numel() > 1:
                pointer = value.untyped_storage().data_ptr()
                if pointer not in seen:
                    seen.add(pointer)
                    total += value.untyped_storage().nbytes()
    return total


def build_optimizers(named_shapes, device):
    import bitsandbytes as bnb

    def params():
        generator = torch.Generator().manual_seed(0)
        return [(name, torch.nn.Parameter(torch.randn(shape, generator=generator).mul_(0.02).to(device)))
                for name, shape in named_shapes]

    builders = {}
    named = params()
    builders["AlphaAdam 32-bit"] = (AlphaAdam(named, lr=1e-4), named)
    named = params()
    builders["AlphaAdam 8-bit"] = (AlphaAdam(named, lr=1e-4, state_bits=8), named)
    named = params()
    manager = bnb.optim.GlobalOptimManager.get_instance()
    manager.register_parameters([p for _, p in named])
    for name, param in named:
        if name in ("wte.weight", "wpe.weight"):  # what the HF Trainer does for nn.Embedding modules
            manager.override_config(param, "optim_bits", 32)
    builders["bnb AdamW8bit"] = (bnb.optim.AdamW([p for _, p in named], lr=1e-4, optim_bits=8), named)
    return builders


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_steps(named_shapes, rounds: int, device) -> dict:
    optimizers = build_optimizers(named_shapes, device)
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(shape, generator=generator).mul_(1e-3).to(device) for _, shape in named_shapes]
    for _, named in optimizers.values():
        for (_, param), grad in zip(named, grads):
            param.grad = grad.clone()
    for optimizer, _ in optimizers.values():  # warm-up: creates the state
        optimizer.step()
    sync(device)
    times = {name: [] for name in optimizers}
    order = list(optimizers)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            sync(device)
            start = time.perf_counter()
            optimizers[name][0].step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    numel = sum(torch.Size(shape).numel() for _, shape in named_shapes)
    base = "AlphaAdam 32-bit"
    result = {"num_params": numel, "rounds": rounds, "optimizers": {}}
    for name, (optimizer, _) in optimizers.items():
        result["optimizers"][name] = {
            "state_bytes": state_bytes(optimizer),
            "state_bytes_per_param": state_bytes(optimizer) / numel,
            "step_s_median": statistics.median(times[name]),
            "step_time_ratio_vs_alphaadam_32bit": statistics.median(t / b for t, b in zip(times[name], times[base])),
        }
    return result


def lm_curve(steps: int, device, seed: int = 0) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    text = SHAKESPEARE.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train, valid = data[:split], data[split:]
    config = LlamaConfig(vocab_size=len(chars), hidden_size=192, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False)
    context, batch_size = 128, 16

    def batch(generator, source):
        starts = torch.randint(0, len(source) - context - 1, (batch_size,), generator=generator)
        return torch.stack([source[s:s + context] for s in starts]).to(device)

    curves = {}
    for bits in (32, 8):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(device)
        optimizer = AlphaAdam(list(model.named_parameters()), lr=3e-3, weight_decay=0.01, state_bits=bits,
                              min_8bit_size=1024)
        generator = torch.Generator().manual_seed(seed)
        losses = []
        start = time.perf_counter()
        for _ in range(steps):
            ids = batch(generator, train)
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            generator = torch.Generator().manual_seed(123)
            valid_loss = statistics.mean(model(input_ids=(ids := batch(generator, valid)), labels=ids).loss.item()
                                         for _ in range(8))
        quantized = sum(1 for s in optimizer.state.values() if "exp_avg_codes" in s)
        curves[f"{bits}-bit"] = {"train_loss": losses, "valid_loss": valid_loss, "seconds": elapsed,
                                 "state_bytes": state_bytes(optimizer), "quantized_tensors": quantized}
    num_params = sum(p.numel() for p in model.parameters())
    return {"model": "LlamaForCausalLM", "num_params": num_params, "steps": steps, "context": context,
            "batch_size": batch_size, "lr": 3e-3, "curves": curves,
            "final_train_loss_gap": abs(statistics.mean(curves["8-bit"]["train_loss"][-20:])
                                        - statistics.mean(curves["32-bit"]["train_loss"][-20:])),
            "valid_loss_gap": abs(curves["8-bit"]["valid_loss"] - curves["32-bit"]["valid_loss"])}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    optimizers = result["step_benchmark"]["optimizers"]
    names = list(optimizers)
    axes[0].bar(names, [optimizers[n]["state_bytes"] / 2**20 for n in names], color=["C0", "C1", "C2"])
    axes[0].set_ylabel("optimizer state (MiB)")
    axes[0].set_title(f"state, {result['step_benchmark']['num_params'] / 1e6:.0f}M params (GPT-2 small shapes)")
    axes[1].bar(names, [optimizers[n]["step_s_median"] * 1e3 for n in names], color=["C0", "C1", "C2"])
    axes[1].set_ylabel("step time, median (ms)")
    axes[1].set_title(f"step time on {result['machine']['device']}")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelsize=8)
    lm = result["loss_curve"]
    for label, curve in lm["curves"].items():
        losses = torch.tensor(curve["train_loss"])
        window = 10
        smooth = losses.unfold(0, window, 1).mean(1) if len(losses) >= window else losses
        axes[2].plot(range(window - 1, window - 1 + len(smooth)) if len(losses) >= window else range(len(losses)),
                     smooth, label=f"AlphaAdam {label} (valid {curve['valid_loss']:.3f})")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("train loss (10-step mean)")
    axes[2].set_title(f"Llama {lm['num_params'] / 1e6:.2f}M, Tiny Shakespeare")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scale 1/8 shapes, 3 rounds, 60 LM steps")
    parser.add_argument("--scale", type=float, default=None, help="GPT-2 dims multiplier (default 1, quick 1/8)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, quick 3)")
    parser.add_argument("--lm-steps", type=int, default=None, help="LM steps (default 300, quick 60)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scale = args.scale if args.scale is not None else (1 / 8 if args.quick else 1.0)
    rounds = args.rounds or (3 if args.quick else 7)
    lm_steps = args.lm_steps or (60 if args.quick else 300)

    result = {"benchmark": "eight_bit", "machine": machine(device), "quick": args.quick, "scale": scale}
    print(f"step benchmark: GPT-2 small shapes x{scale}, {rounds} rounds", flush=True)
    result["step_benchmark"] = bench_steps(gpt2_small_named_shapes(scale), rounds, device)
    for name, row in result["step_benchmark"]["optimizers"].items():
        print(f"  {name:18s} state {row['state_bytes'] / 2**20:9.1f} MiB ({row['state_bytes_per_param']:.2f} B/param)"
              f"  step {row['step_s_median'] * 1e3:9.1f} ms  x{row['step_time_ratio_vs_alphaadam_32bit']:.2f}",
              flush=True)
    print(f"loss curve: {lm_steps} steps", flush=True)
    result["loss_curve"] = lm_curve(lm_steps, device)
    for label, curve in result["loss_curve"]["curves"].items():
        print(f"  {label}: final train {statistics.mean(curve['train_loss'][-20:]):.4f}  valid {curve['valid_loss']:.4f}"
              f"  ({curve['quantized_tensors']} quantized tensors, {curve['seconds']:.0f} s)", flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "eight_bit.json").write_text(json.dumps(result, indent=1))
    plot(result, args.output_dir / "eight_bit.png")
    print(f"wrote {args.output_dir / 'eight_bit.json'} and eight_bit.png")


if __name__ == "__main__":
    main()
