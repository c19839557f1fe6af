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

Targets: 8-bit AlphaAdam's state within 1 % of AdamW8bit's bytes, and its validation loss at most 0.5 % above
32-bit AlphaAdam's (``tests/optim/test_8bit.py`` holds a 100-step run to within 0.5 % either way); the step time
is reported without a target. The 32-bit baseline is ``AlphaAdam`` with its defaults: since ``fused=None`` became
the default, that is the compiled path for GPT-2 small's 124M parameters (the committed result predates it and
used the foreach path).

    python -m benchmarks run eight_bit            # full GPT-2 small shapes + 300 LM steps (~27 min on 1 loaded core)
    python -m benchmarks run eight_bit --quick    # scale 1/16, 2 rounds, 20 LM steps of a hidden-64 Llama: ~15 s
                                                  # after imports (a smoke run)

Writes ``benchmarks/results/eight_bit[_quick].json`` and ``.png`` (``--output-dir`` to change). ``--device cuda``
runs both parts on a GPU.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import (add_common_arguments, char_data, gpt2_small_named_shapes,  # noqa: E402
                                machine_info, set_threads, write_result)
from hf_alphaadam.optim import catalog  # noqa: E402

logger = logging.getLogger("eight_bit")
STATE_TARGET = 0.01  # 8-bit AlphaAdam's state bytes within 1 % of AdamW8bit's
VALID_TARGET = 0.005  # 8-bit validation loss at most 0.5 % above 32-bit's


def machine(device: torch.device) -> dict:
    """``_common.machine_info()`` plus the device and the bitsandbytes version."""
    info = machine_info()
    info["device"] = str(device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    return info


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every distinct state tensor (shared storages once; step counters and scalars left out)."""
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
    builders["AlphaAdam 32-bit"] = (catalog.build("alphaadam", named, lr=1e-4), named)
    named = params()
    builders["AlphaAdam 8-bit"] = (catalog.build("alphaadam_8bit", named, lr=1e-4), named)
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
    """State bytes and interleaved step times of the three optimizers on GPT-2-shaped tensors."""
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


def lm_curve(steps: int, device, seed: int = 0, hidden: int = 192, intermediate: int = 512) -> dict:
    """Train losses, validation loss and state of 8-bit and 32-bit AlphaAdam from the same init and batches."""
    from transformers import LlamaConfig, LlamaForCausalLM

    train, valid, vocab = char_data()
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
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
        optimizer = catalog.build("alphaadam_8bit" if bits == 8 else "alphaadam", list(model.named_parameters()),
                                  lr=3e-3, weight_decay=0.01, min_8bit_size=1024)
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
    """State bytes, step times and the two loss curves."""
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "scale 1/16 shapes, 2 rounds, 20 LM steps of a hidden-64 Llama, 1 thread")
    parser.add_argument("--scale", type=float, default=None, help="GPT-2 dims multiplier (default 1, quick 1/16)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, quick 2)")
    parser.add_argument("--lm-steps", type=int, default=None, help="LM steps (default 300, quick 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; quick 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_threads(args.threads, args.quick)
    device = torch.device(args.device)
    scale = args.scale if args.scale is not None else (1 / 16 if args.quick else 1.0)
    rounds = args.rounds or (2 if args.quick else 7)
    lm_steps = args.lm_steps or (20 if args.quick else 300)

    result = {"benchmark": "eight_bit", "machine": machine(device), "quick": args.quick, "scale": scale}
    logger.info("step benchmark: GPT-2 small shapes x%g, %d rounds", scale, rounds)
    result["step_benchmark"] = bench_steps(gpt2_small_named_shapes(scale), rounds, device)
    for name, row in result["step_benchmark"]["optimizers"].items():
        print(f"  {name:18s} state {row['state_bytes'] / 2**20:9.1f} MiB ({row['state_bytes_per_param']:.2f} B/param)"
              f"  step {row['step_s_median'] * 1e3:9.1f} ms  x{row['step_time_ratio_vs_alphaadam_32bit']:.2f}",
              flush=True)
    logger.info("loss curve: %d steps", lm_steps)
    result["loss_curve"] = lm_curve(lm_steps, device, **(dict(hidden=64, intermediate=176) if args.quick else {}))
    for label, curve in result["loss_curve"]["curves"].items():
        print(f"  {label}: final train {statistics.mean(curve['train_loss'][-20:]):.4f}  valid {curve['valid_loss']:.4f}"
              f"  ({curve['quantized_tensors']} quantized tensors, {curve['seconds']:.0f} s)", flush=True)
    path = write_result(result, args.output_dir, "eight_bit", args.quick)
    plot(result, path.with_suffix(".png"))
    logger.info("wrote %s and .png", path)
    return result


def summary(result: dict) -> list[dict[str, str]]:
    """README rows: state bytes against AdamW8bit's, step time (no target), loss against 32-bit AlphaAdam."""
    bench, lm = result["step_benchmark"], result["loss_curve"]
    opt = bench["optimizers"]
    eight, bnb, full = opt["AlphaAdam 8-bit"], opt["bnb AdamW8bit"], opt["AlphaAdam 32-bit"]
    shapes = (f"GPT-2 small shapes x{result['scale']:g}, {bench['num_params'] / 1e6:.1f}M params"
              + ("; quick run" if result.get("quick") else ""))
    state_gap = eight["state_bytes"] / bnb["state_bytes"] - 1
    curves = lm["curves"]
    valid_gap = curves["8-bit"]["valid_loss"] / curves["32-bit"]["valid_loss"] - 1
    device = result["machine"].get("device", "cpu")
    return [
        {"claim": f"8-bit AlphaAdam state within {STATE_TARGET:.0%} of bitsandbytes AdamW8bit's (embeddings 32-bit)",
         "measured": f"{eight['state_bytes_per_param']:.2f} vs {bnb['state_bytes_per_param']:.2f} B/param "
                     f"({state_gap:+.2%}); 32-bit AlphaAdam {full['state_bytes_per_param']:.2f} ({shapes})",
         "verdict": "meets" if abs(state_gap) <= STATE_TARGET else "misses"},
        {"claim": f"8-bit step time on {device} (no target)",
         "measured": f"8-bit AlphaAdam {eight['step_time_ratio_vs_alphaadam_32bit']:.2f}x, bnb AdamW8bit "
                     f"{bnb['step_time_ratio_vs_alphaadam_32bit']:.2f}x the 32-bit AlphaAdam step "
                     f"(median of {bench['rounds']} interleaved rounds)",
         "verdict": "noted"},
        {"claim": f"8-bit AlphaAdam validation loss at most {VALID_TARGET:.1%} above 32-bit's",
         "measured": f"{curves['8-bit']['valid_loss']:.4f} vs {curves['32-bit']['valid_loss']:.4f} ({valid_gap:+.2%}; "
                     f"{lm['num_params'] / 1e6:.2f}M Llama, {lm['steps']} steps, "
                     f"{curves['8-bit']['quantized_tensors']} tensors quantized)",
         "verdict": "misses" if valid_gap > VALID_TARGET else "meets" if valid_gap >= -VALID_TARGET
         else f"meets (8-bit lower by more than {VALID_TARGET:.1%}: not the same curve)"},
    ]


if __name__ == "__main__":
    main()
