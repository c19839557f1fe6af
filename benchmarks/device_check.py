"""The device check: what a GPU machine must show about the package, in one command (``scripts/device_check.sh``).

Sections (``--skip`` leaves some out), each timed and recorded with its verdict:

- ``correctness``: the compiled multi-tensor AlphaAdam step (``_compiled_alphaadam``: AlphaAdam and Cautious
  modes) and the compiled momentum-free AdaPM step against the reference loop / foreach step on the device, for
  fp32 and bf16 parameters (fp32 moments): largest differences of parameters, moments and statistics.
- ``step_time``: ``optimizer.step()`` time against ``torch.optim.AdamW(fused=True)`` on GPT-2-small, Llama-1B and
  LoRA-7B tensor lists (``benchmarks/_tensor_lists.py``; every tensor through the compiled step, native kernel
  off; AlphaAdam's foreach path alongside). Targets on a GPU: AlphaAdam <= 1.5x, Cautious <= 1.3x, AdaPM <= 1.5x;
  the first step (compiles) is reported.
- ``trainer``: a 50-step Hugging Face Trainer run with bf16 autocast, ``optim="alphaadam"`` and the
  ``AlphaMonitorCallback``: the loss falls and alpha / mask-ratio keys reach the logs.
- ``memory``: peak memory (``torch.cuda.max_memory_allocated``) of three training steps of one model with AdamW,
  AdaPM, AdaPM mini and 8-bit AlphaAdam, and each optimizer's state bytes (on the CPU: state bytes only).
- ``deepspeed``: a DeepSpeed ZeRO-2 smoke run (Trainer, ``recipes/accelerate/ds_zero2.json``) in one process on
  one device, in a subprocess: it finishes, the loss is finite and alpha is logged.

On a GPU (default) sizes are real (Llama-1B: 1.24B parameters) and the report goes to
``benchmarks/results/gpu_<device>.json``, the device named inside; the whole check is sized to finish in under
8 minutes on one GPU (not yet timed on one: no GPU was available when it was written). ``--cpu`` runs the same
code on the CPU with small sizes and writes to ``outputs/device_check/`` (never ``benchmarks/results/``): CI
runs it, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_result  # noqa: E402
from benchmarks._tensor_lists import (FUSED, TENSOR_LISTS, engine_module,  # noqa: E402
                                      time_step_rounds)

logger = logging.getLogger("device_check")

SECTIONS = ("correctness", "step_time", "trainer", "memory", "deepspeed")
TARGETS = {"AlphaAdam": 1.5, "Cautious": 1.3, "AdaPM": 1.5}  # step time vs fused AdamW, on a GPU
# "AlphaAdam foreach" (no target) tells which route a GPU should take for each list: the compiled step makes two
# kernel launches per tensor, foreach about 35 multi-tensor launches per step
STEP_KINDS = [FUSED, "AlphaAdam", "AlphaAdam foreach", "Cautious", "AdaPM"]
# sizes: GPU (real shapes) and --cpu (small, for CI)
SIZES = {
    "gpu": {"lists": {"gpt2_small": {}, "llama_1b": {}, "lora_7b": {}}, "rounds": 20, "model_hidden": 512,
            "model_layers": 8, "vocab": 32000, "sequence": 256, "batch": 8, "correctness_scale": 64},
    "cpu": {"lists": {"gpt2_small": {"scale": 1 / 16, "layers": 2}, "llama_1b": {"scale": 1 / 32, "layers": 2},
                      "lora_7b": {"layers": 1}},
            "rounds": 2, "model_hidden": 32, "model_layers": 2, "vocab": 128, "sequence": 16, "batch": 4,
            "correctness_scale": 1},
}
# a chunk of 4 tensors compiles in a few seconds on a small CPU (the default CPU chunk of 8 takes ~20 s per kernel)
CPU_CHUNK_TENSORS = 4


def correctness(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """Compiled steps vs the reference on ``device``: max differences, and whether they are within tolerance."""
    try:
        from hf_alphaadam.optim import _adapm_fast
    except ImportError:  # before the optim/ split (the package's ``adapm`` attribute is the function)
        _adapm_fast = importlib.import_module("hf_alphaadam.optim.adapm")
    from hf_alphaadam.optim._compiled import _compiled_alphaadam, _compiled_momentum_free

    reference_step = engine_module()._single_tensor_alphaadam
    k = size["correctness_scale"]
    shapes = [(6 * k, 5), (7,), (1,), (70 * k, 80), (3, 4, 2), (0,), (33, 17 * k)]
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
    report: dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16):
        for mask, alpha in (("async", "norm"), ("sync", "count")):
            runs = []
            for step_function in (reference_step, _compiled_alphaadam):
                generator = torch.Generator(device="cpu").manual_seed(0)
                params = [torch.randn(s, generator=generator).to(device=device, dtype=dtype) for s in shapes]
                moments = [[torch.zeros(s, device=device) for s in shapes] for _ in range(2)]
                steps = [torch.tensor(0.0) for _ in shapes]
                statistics = []
                for step in range(5):
                    grads = [(torch.randn(s, generator=generator) + 0.3).to(device=device, dtype=dtype)
                             for s in shapes]
                    buckets = step_function(params, grads, *moments, steps, lr=1e-2 / (step + 1), beta1=0.9,
                                            beta2=0.999, eps=1e-8, weight_decay=0.05, mask=mask, alpha=alpha,
                                            alpha_max=None, first_step="full", maximize=False)
                    statistics.append(_by_position(buckets, len(shapes)))
                runs.append((params, moments, statistics))
            (p_ref, m_ref, s_ref), (p_got, m_got, s_got) = runs
            param_diff = max(_max_diff(a, b) for a, b in zip(p_ref, p_got))
            moment_diff = max(_max_diff(a, b) for a, b in zip(m_ref[0] + m_ref[1], m_got[0] + m_got[1]))
            statistics_diff = max(_max_diff(a, b) for a, b in zip(s_ref, s_got))
            report[f"alphaadam {mask}+{alpha} {str(dtype).removeprefix('torch.')}"] = {
                "max_param_diff": param_diff, "max_moment_diff": moment_diff, "max_statistics_diff": statistics_diff,
                "ok": param_diff <= tolerance[dtype] * 10 and moment_diff <= 1e-5 and statistics_diff <= 1e-3}
    runs = []
    for step_function in (_adapm_fast._foreach_momentum_free, _compiled_momentum_free):
        generator = torch.Generator(device="cpu").manual_seed(0)
        params = [torch.randn(s, generator=generator).to(device) for s in shapes]
        exp_avg_sqs = [torch.zeros(s, device=device) for s in shapes]
        steps = [torch.tensor(0.0) for _ in shapes]
        for step in range(5):
            grads = [torch.randn(s, generator=generator).to(device) for s in shapes]
            step_function(params, grads, exp_avg_sqs, steps, lr=1e-2, beta2=0.999, eps=1e-8, weight_decay=0.1,
                          maximize=False)
        runs.append(params + exp_avg_sqs)
    difference = max(_max_diff(a, b) for a, b in zip(*runs))
    report["adapm momentum-free float32"] = {"max_diff": difference, "ok": difference <= 1e-5}
    return {"cases": report, "ok": all(case["ok"] for case in report.values())}


def _by_position(buckets: list, n: int) -> torch.Tensor:
    """The ``[n, 2]`` (alpha, mask ratio) of the statistics buckets, by input position."""
    out = torch.full((n, 2), float("nan"), dtype=torch.float64)
    for positions, alpha, ratio in buckets:
        out[positions, 0] = alpha.double().cpu()
        out[positions, 1] = ratio.double().cpu()
    return out


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    a, b = a.double().cpu(), b.double().cpu()
    both_nan = a.isnan() & b.isnan()
    return float(torch.where(both_nan, 0.0, (a - b).abs()).max())


def step_time(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """Step time of AlphaAdam, Cautious and AdaPM against fused AdamW per tensor list, with the GPU targets."""
    lists = {}
    for name, options in size["lists"].items():
        shapes = TENSOR_LISTS[name](**options)
        measured = time_step_rounds(shapes, STEP_KINDS, device, size["rounds"])
        for kind, entry in measured["optimizers"].items():
            entry.pop("times_s")
            if kind in TARGETS:
                entry["target"] = TARGETS[kind]
                entry["meets"] = entry["ratio_vs_adamw_fused"] <= TARGETS[kind]
            logger.info("%-10s %-10s median %.3f ms, %.2fx fused AdamW, first step %.2f s", name, kind,
                        1e3 * entry["median_s"], entry["ratio_vs_adamw_fused"], entry["first_step_s"])
        lists[name] = measured
    targets_apply = device.type == "cuda"  # the targets are for a GPU; on the CPU the run only has to work
    return {"lists": lists, "targets_apply": targets_apply,
            "ok": all((entry.get("meets", True) if targets_apply else math.isfinite(entry["ratio_vs_adamw_fused"]))
                      for measured in lists.values() for entry in measured["optimizers"].values())}


def _llama(size: dict[str, Any], device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hidden = size["model_hidden"]
    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=size["model_layers"], num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), max_position_embeddings=size["sequence"])
    return LlamaForCausalLM(config).to(device)


class _RandomTokens(torch.utils.data.Dataset):
    def __init__(self, count: int, length: int, vocab: int) -> None:
        self.tokens = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def trainer(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """50 Trainer steps, bf16 autocast, optim="alphaadam", the alpha monitor attached."""
    import hf_alphaadam  # noqa: F401  (registers optim="alphaadam")
    from transformers import Trainer, TrainingArguments

    from hf_alphaadam import AlphaMonitorCallback

    model = _llama(size, device)
    # repeated sequences: a model that learns shows a falling loss within 50 steps
    data = _RandomTokens(8, size["sequence"], size["vocab"])
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir, max_steps=50, per_device_train_batch_size=size["batch"],
                                 learning_rate=3e-3, bf16=True, optim="alphaadam", logging_steps=10,
                                 report_to=[], save_strategy="no", use_cpu=device.type == "cpu",
                                 dataloader_num_workers=0, disable_tqdm=True)
        run = Trainer(model=model, args=args, train_dataset=data, callbacks=[AlphaMonitorCallback()])
        started = time.perf_counter()
        run.train()
        elapsed = time.perf_counter() - started
    logs = [entry for entry in run.state.log_history if "loss" in entry]
    alpha_keys = sorted({key for entry in logs for key in entry if key.startswith(("alpha/", "mask_ratio/"))})
    losses = [entry["loss"] for entry in logs]
    return {"steps": run.state.global_step, "seconds": elapsed, "losses": losses, "alpha_keys": alpha_keys,
            "ok": run.state.global_step == 50 and bool(alpha_keys) and all(map(math.isfinite, losses))
            and losses[-1] < losses[0]}


def memory(device: torch.device, size: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of three training steps per optimizer on one model (CUDA), and the optimizer's state bytes."""
    from hf_alphaadam import OPTIMIZERS

    def adamw(named):
        return torch.optim.AdamW([p for _, p in named], lr=1e-4, fused=device.type == "cuda")

    def registered(name: str) -> Callable:
        spec = OPTIMIZERS[name]
        return lambda named: spec.resolve_class()(named, lr=1e-4, **spec.defaults)

    builders = {"AdamW": adamw, "adapm": registered("adapm"), "adapm_mini": registered("adapm_mini"),
                "alphaadam_8bit": registered("alphaadam_8bit")}
    results = {}
    for name, build in builders.items():
        model = _llama(size, device)
        optimizer = build(list(model.named_parameters()))
        tokens = torch.randint(0, size["vocab"], (size["batch"], size["sequence"]), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state_bytes = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                          for value in state.values() if isinstance(value, torch.Tensor))
        results[name] = {"state_bytes": state_bytes,
                         "peak_memory_bytes": (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                               else None),
                         "params": sum(p.numel() for p in model.parameters())}
        logger.info("memory %-15s state %.1f MB, peak %s", name, state_bytes / 1e6,
                    results[name]["peak_memory_bytes"])
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"optimizers": results, "measured": "peak and state bytes" if device.type == "cuda" else "state bytes",
            "ok": all(entry["state_bytes"] > 0 for entry in results.values())}


def deepspeed(device: torch.device, size: dict[str, Any], timeout: float) -> dict[str, Any]:
    """ZeRO-2 through the Trainer in a one-process subprocess (its own distributed world of size 1)."""
    try:
        import deepspeed as _  # noqa: F401
    except ImportError as error:
        return {"ok": False, "error": f"deepspeed is not installed: {error}"}
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "deepspeed.json"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if device.type == "cpu":
            env["DS_ACCELERATOR"] = "cpu"
        command = [sys.executable, "-m", "benchmarks.device_check", "--deepspeed-worker", str(report),
                   "--worker-size", json.dumps(size)] + (["--cpu"] if device.type == "cpu" else [])
        started = time.perf_counter()
        try:
            process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                     timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        elapsed = time.perf_counter() - started
        if process.returncode != 0 or not report.exists():
            return {"ok": False, "seconds": elapsed, "returncode": process.returncode,
                    "stderr_tail": process.stderr[-3000:]}
        result = json.loads(report.read_text())
    result["seconds"] = elapsed
    result["ok"] = result["steps"] == 10 and result["alpha_logged"] and all(map(math.isfinite, result["losses"]))
    return result


def deepspeed_worker(report: Path, size: dict[str, Any], cpu: bool) -> None:
    """The subprocess of :func:`deepspeed`: 10 Trainer steps under ZeRO-2, written to ``report``."""
    import hf_alphaadam  # noqa: F401
    from transformers import Trainer, TrainingArguments

    device = torch.device("cpu" if cpu else "cuda")
    model = _llama(size, device)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir, max_steps=10, per_device_train_batch_size=size["batch"],
                                 learning_rate=3e-3, bf16=not cpu, optim="alphaadam", logging_steps=2,
                                 report_to=[], save_strategy="no", disable_tqdm=True,
                                 deepspeed=str(REPO_ROOT / "recipes" / "accelerate" / "ds_zero2.json"))
        run = Trainer(model=model, args=args, train_dataset=_RandomTokens(8, size["sequence"], size["vocab"]))
        run.train()
    logs = [entry for entry in run.state.log_history if "loss" in entry]
    report.write_text(json.dumps({"steps": run.state.global_step, "losses": [entry["loss"] for entry in logs],
                                  "alpha_logged": any(key.startswith("alpha/") for entry in logs for key in entry),
                                  "distributed_type": str(run.accelerator.distributed_type)}))


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = "cpu" if args.cpu else "gpu"
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("device_check: no CUDA device here; run with --cpu for the small CPU version")
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        from hf_alphaadam.optim import _compiled

        _compiled.CHUNK_TENSORS = dict(_compiled.CHUNK_TENSORS, cpu=CPU_CHUNK_TENSORS)
    if args.combo_kernels:
        from hf_alphaadam.optim import _compiled

        _compiled.INDUCTOR_OPTIONS["cuda"] = {"combo_kernels": True}
    size = SIZES[mode]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_info()["cpu"]
    report: dict[str, Any] = {"device": device_name, "mode": mode, "combo_kernels": args.combo_kernels,
                              "sections": {}}
    started = time.perf_counter()
    for section in SECTIONS:
        if section in args.skip:
            continue
        section_started = time.perf_counter()
        logger.info("section %s", section)
        try:
            if section == "deepspeed":
                result = deepspeed(device, size, timeout=args.deepspeed_timeout)
            else:
                result = {"correctness": correctness, "step_time": step_time, "trainer": trainer,
                          "memory": memory}[section](device, size)
        except Exception as error:  # noqa: BLE001 - a failed section is recorded and the next one runs
            logger.exception("section %s failed", section)
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        result["section_seconds"] = time.perf_counter() - section_started
        report["sections"][section] = result
        logger.info("section %s: %s in %.1f s", section, "ok" if result["ok"] else "NOT OK",
                    result["section_seconds"])
    report["total_seconds"] = time.perf_counter() - started
    report["ok"] = all(section["ok"] for section in report["sections"].values())
    return report


def output_name(device_name: str, cpu: bool) -> str:
    """``gpu_<device>`` (e.g. ``gpu_nvidia_h200``) or ``cpu_device_check``."""
    if cpu:
        return "cpu_device_check"
    return "gpu_" + re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU (CI); writes to outputs/")
    parser.add_argument("--skip", default="", type=lambda text: [s for s in text.split(",") if s],
                        help=f"comma-separated sections to leave out, from {', '.join(SECTIONS)}")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: benchmarks/results on a GPU, outputs/device_check with --cpu")
    parser.add_argument("--combo-kernels", action="store_true",
                        help="compile the CUDA kernels with inductor's combo kernels (one launch per chunk)")
    parser.add_argument("--deepspeed-timeout", type=float, default=240.0)
    parser.add_argument("--deepspeed-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [s for s in args.skip if s not in SECTIONS]
    if unknown:
        parser.error(f"--skip: unknown section(s) {unknown}; the sections are {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.deepspeed_worker is not None:
        deepspeed_worker(args.deepspeed_worker, json.loads(args.worker_size), args.cpu)
        return None
    report = run(args)
    output_dir = args.output_dir or (REPO_ROOT / "outputs" / "device_check" if args.cpu
                                     else REPO_ROOT / "benchmarks" / "results")
    path = write_result(report, output_dir, output_name(report["device"], args.cpu), quick=False)
    logger.info("wrote %s (%s)", path, "all sections ok" if report["ok"] else "some sections NOT ok")
    return report


if __name__ == "__main__":
    main()
