"""What every benchmark shares: the machine record, the results folder, the Tiny Shakespeare data and a tiny LM.

A benchmark is a module ``benchmarks/<name>.py`` with

- ``main(argv: list[str] | None = None)``: parses ``--quick`` (a smoke run of well under a minute that CI runs
  to keep the code working; its numbers mean little), ``--output-dir`` (default ``benchmarks/results``, and
  ``outputs/benchmarks`` for a quick run, so that a smoke run never lands next to the committed results) and
  ``--data_dir``, runs, and writes ``<name>.json`` (or ``<name>_quick.json``) with :func:`write_result`, plus a
  PNG;
- ``summary(result: dict) -> list[dict]``: the rows this benchmark contributes to ``benchmarks/README.md``, each
  ``{"claim": ..., "measured": ..., "verdict": ...}`` derived from a results file (never typed by hand).

Data: the benchmarks read the *full* public data sets from ``--data_dir`` or the ``HF_ALPHAADAM_DATA`` environment
variable (a folder laid out like ``../shared/data``: ``tinyshakespeare/input.txt``, ``gsm8k/``, ``glue/<task>/``;
this repository's machines and CI point it at ``../shared/data``). Without either they load the Hub data sets by
name; offline that fails with :class:`DataUnavailable`, one line saying what to set. (The repository's ``data/``
holds small excerpts for the tests only; a benchmark run on them measures little.)

``python -m benchmarks run <name> [options]`` runs one; ``python -m benchmarks summarize`` rewrites the table.
A benchmark also runs as a script (``python benchmarks/<name>.py``): it then puts the repository root on
``sys.path`` itself before importing this module.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
QUICK_RESULTS = REPO_ROOT / "outputs" / "benchmarks"  # ignored by git: smoke runs never sit next to the results
DATA_ENV = "HF_ALPHAADAM_DATA"
HUB_TINY_SHAKESPEARE = "karpathy/tiny_shakespeare"


class DataUnavailable(RuntimeError):
    """No local copy of a data set was named and the Hub could not be reached (``python -m benchmarks`` prints the
    message as one line)."""


def data_dir() -> Path | None:
    """The folder of full data sets named by ``--data_dir`` / ``HF_ALPHAADAM_DATA``, or ``None`` (use the Hub)."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def data_path(relative: str) -> Path | None:
    """``<data_dir>/<relative>``, or ``None`` without a data folder; a named folder that lacks the file is an error."""
    root = data_dir()
    if root is None:
        return None
    path = root / relative
    if not path.exists():
        raise DataUnavailable(f"{path} not found: --data_dir / {DATA_ENV} is {root}, which must hold {relative} "
                              f"(the layout of ../shared/data)")
    return path


def hub_dataset(name: str, *args: Any, **kwargs: Any):
    """``datasets.load_dataset(name, ...)``; a failure (offline, no such set) becomes one :class:`DataUnavailable`."""
    from datasets import load_dataset

    try:
        return load_dataset(name, *args, **kwargs)
    except Exception as error:  # offline errors come as ConnectionError, OSError or datasets' own types
        raise DataUnavailable(f"could not load the Hub data set {name!r} ({type(error).__name__}); without Hub access "
                              f"set --data_dir or {DATA_ENV} to a folder with the full data sets (this repository's "
                              "machines: ../shared/data)") from error


class _DataDirAction(argparse.Action):
    """``--data_dir DIR`` sets ``HF_ALPHAADAM_DATA``, so that worker processes and helpers see the same folder."""

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[DATA_ENV] = str(values)
        setattr(namespace, self.dest, values)


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on (CPU model, cores, threads, load, versions)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"node": platform.node(), "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(ImportError):
        import transformers

        info["transformers"] = transformers.__version__
    return info


def add_common_arguments(parser: argparse.ArgumentParser, quick_help: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--quick`` (described by ``quick_help``; left out when ``None``, for a
    benchmark that defines its own), ``--output-dir`` and ``--data_dir``."""
    if quick_help is not None:
        parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where <name>[_quick].json and .png go (default: benchmarks/results, and "
                             "outputs/benchmarks for --quick)")
    parser.add_argument("--data_dir", type=Path, default=data_dir(), action=_DataDirAction,
                        help=f"folder with the full data sets, laid out like ../shared/data (default: ${DATA_ENV}; "
                             "without it the Hub data sets by name)")
    return parser


def set_threads(threads: int | None, quick: bool) -> None:
    """``torch.set_num_threads(threads)`` when given; a quick run defaults to 1 (CI shares the CPU)."""
    if threads:
        torch.set_num_threads(threads)
    elif quick:
        torch.set_num_threads(1)


def result_path(output_dir: Path | str | None, name: str, quick: bool, suffix: str = ".json") -> Path:
    """``<output_dir>/<name>[_quick]<suffix>``; ``output_dir=None`` is ``benchmarks/results`` for a full run and
    ``outputs/benchmarks`` for a quick one (quick runs never overwrite or sit next to the real results)."""
    if output_dir is None:
        output_dir = QUICK_RESULTS if quick else RESULTS
    return Path(output_dir) / f"{name}{'_quick' if quick else ''}{suffix}"


def write_result(result: dict[str, Any], output_dir: Path | str | None, name: str, quick: bool) -> Path:
    """Write ``result`` (with the machine and load at the end added) as indented JSON; returns the path."""
    result = dict(result)
    result.setdefault("benchmark", name)
    result.setdefault("quick", quick)
    result.setdefault("machine", machine_info())
    result.setdefault("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_end"] = list(os.getloadavg())
    path = result_path(output_dir, name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def gpt2_small_named_shapes(scale: float = 1.0, layers: int = 12) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2 small's parameters (124M at scale 1) as ``(name, shape)`` in HF's Conv1D layout (``[in, out]``).

    ``wte`` 50257 x 768, ``wpe`` 1024 x 768, 12 blocks ``h.N.`` of ln / attn.c_attn / attn.c_proj / mlp.c_fc /
    mlp.c_proj weights and biases, ``ln_f``; ``scale`` multiplies the hidden size, vocabulary and context.
    """
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


def tiny_shakespeare() -> str:
    """The whole Tiny Shakespeare text: ``<data_dir>/tinyshakespeare/input.txt``, else the Hub's copy."""
    path = data_path("tinyshakespeare/input.txt")
    if path is not None:
        return path.read_text(encoding="utf-8")
    splits = hub_dataset(HUB_TINY_SHAKESPEARE)
    return "".join(row["text"] for split in ("train", "validation", "test") for row in splits[split])


def char_data(path: Path | None = None, valid_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Character-level token ids of a text file (default: :func:`tiny_shakespeare`): (train, valid, vocabulary
    size); the last part is validation."""
    text = tiny_shakespeare() if path is None else Path(path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int((1 - valid_fraction) * data.numel())
    return data[:split], data[split:], len(chars)


def batches(data: torch.Tensor, count: int, batch_size: int, context: int, seed: int) -> Iterator[torch.Tensor]:
    """``count`` random ``[batch_size, context + 1]`` windows, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        starts = torch.randint(0, len(data) - context - 1, (batch_size,), generator=generator)
        yield torch.stack([data[s:s + context + 1] for s in starts.tolist()])


def tiny_llama(vocab: int, hidden: int = 128, layers: int = 4, heads: int = 4, context: int = 256, seed: int = 0):
    """A Llama built from a config (no weights downloaded), untied embeddings, seeded init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(2.75 * hidden),
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=context + 1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over a ``[batch, context + 1]`` window."""
    logits = model(input_ids=batch[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].reshape(-1))


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup_fraction: float = 0.05):
    """Linear warm-up then cosine decay to 0 over ``steps``."""
    warmup = max(1, int(steps * warmup_fraction))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def decay_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """The Trainer's grouping: weight decay on >= 2-D weights, none on biases and norms; names kept."""
    decay = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": [p for _, p in decay], "param_names": [n for n, _ in decay], "weight_decay": weight_decay,
             "name": "decay"},
            {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay], "weight_decay": 0.0,
             "name": "no_decay"}]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# ------------------------------------------------------------------ lr sweeps and paired seeds (shared by sweeps)

#: two-sided 95 % quantiles of Student's t by degrees of freedom (seeds - 1); above 10, 2.23 (an upper bound)
T_95 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean, sample std and the half-width of the 95 % Student-t interval of the mean (``nan`` for one value)."""
    mean, std = mean_std(values)
    n = len(values)
    half = T_95.get(n - 1, 2.23) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "half_width_95": half, "n": n, "values": list(values)}


def eval_steps(steps: int, points: int) -> list[int]:
    """The steps at which the validation loss is measured: every ``1/points`` of training (always including
    20 / 40 / 60 / 100 % when ``points`` is a multiple of 5), plus step 0."""
    return sorted({0} | {max(1, round(steps * k / points)) for k in range(1, points + 1)})


def at_fraction(curve: list[list[float]], steps: int, fraction: float) -> float:
    """The validation loss of ``curve`` (``[[step, loss], ...]``) at ``round(fraction * steps)``."""
    target = max(1, round(fraction * steps))
    for step, value in curve:
        if step == target:
            return value
    raise KeyError(f"no evaluation at step {target} ({fraction:.0%} of {steps}); evaluate there")


def best_lrs(sweep: list[dict[str, Any]], key: str = "1.0") -> dict[str, float]:
    """Each variant's lr with the lowest validation loss ``run["at_fraction"][key]`` (default: the final one)."""
    best: dict[str, tuple[float, float]] = {}
    for run in sweep:
        final = run["at_fraction"][key]
        if run["variant"] not in best or final < best[run["variant"]][1]:
            best[run["variant"]] = (run["lr"], final)
    return {variant: lr for variant, (lr, _) in best.items()}


def tried_lrs(sweep: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The lrs each variant was run at in the sweep."""
    tried: dict[str, set[float]] = {}
    for run in sweep:
        tried.setdefault(run["variant"], set()).add(run["lr"])
    return {variant: sorted(lrs) for variant, lrs in tried.items()}


def edge_extensions(sweep: list[dict[str, Any]], factor: float) -> list[tuple[str, float]]:
    """``(variant, lr)`` to run next: one grid step (``factor``) beyond the edge where a variant's best lr is the
    largest or the smallest it was run at, so that the chosen lr ends up bracketed."""
    tried, out = tried_lrs(sweep), []
    for variant, lr in best_lrs(sweep).items():
        if len(tried[variant]) < 2:
            continue
        if lr == tried[variant][-1]:
            out.append((variant, float(f"{lr * factor:.6g}")))
        elif lr == tried[variant][0]:
            out.append((variant, float(f"{lr / factor:.6g}")))
    return out


def at_edge(sweep: list[dict[str, Any]]) -> list[str]:
    """The variants whose best lr is the smallest or largest of two or more lrs tried (not bracketed)."""
    tried = tried_lrs(sweep)
    return [v for v, lr in best_lrs(sweep).items() if len(tried[v]) > 1 and lr in (tried[v][0], tried[v][-1])]
