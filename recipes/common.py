"""What every recipe shares: a YAML config + command-line overrides, data from the Hub or local files, checks that
fail before training, and the alpha monitor. Kept small on purpose; the recipes read top to bottom without it."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hf_alphaadam  # noqa: F401  (registers optim="alphaadam", "cautious_adamw", ... with the Trainer and parsers)

logger = logging.getLogger(__name__)

# Suffixes of local data files -> the `datasets` builder that reads them (a trailing .gz/.bz2/.xz/.zst is allowed).
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".txt": "text",
                      ".text": "text", ".parquet": "parquet"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation"}  # file stems -> split names


@dataclass
class DataArguments:
    """Data and monitoring options shared by all recipes (each recipe adds its own fields in a subclass)."""

    dataset_name: str | None = field(default=None, metadata={"help": (
        "Hub dataset name, a local data file (.json/.jsonl/.csv/.tsv/.txt/.parquet, optionally .gz; a .txt file "
        "gives one `text` example per paragraph), a folder of such files named after their split (train.jsonl, "
        "dev.jsonl, ...), or a folder from save_to_disk.")})
    dataset_config: str | None = field(default=None, metadata={"help": (
        "Hub dataset config; for a local folder, the sub-folder of that name if it exists (e.g. glue/rte).")})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": (
        "Split to evaluate on; if the data has no such split, `eval_split_size` of the training split is held out.")})
    eval_split_size: float = field(default=0.1, metadata={"help": (
        "Held-out part of the training split when there is no test split: a fraction (< 1) or a count (>= 1).")})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N eval examples."})
    alpha_monitor: bool = field(default=True, metadata={"help": (
        "Log alpha and the mask ratio per parameter group (AlphaMonitorCallback). --alpha_monitor false turns it "
        "off.")})
    alpha_per_tensor: bool = field(default=False, metadata={"help": "Also log alpha / mask ratio per tensor."})


def parse_args(*dataclass_types):
    """`python recipe.py [config.yaml] [--key value ...]`: the YAML sets defaults, the command line overrides them.

    TrlParser reads the YAML with `--config path`; a first argument ending in .yaml/.yml is taken as that path.
    """
    from trl import TrlParser

    argv = sys.argv[1:]
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", *argv]
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path!r} does not exist")
    return TrlParser(dataclass_types).parse_args_and_config(argv)


def load_data(name: str, config: str | None = None):
    """A DatasetDict from a Hub name or a local file / folder (see `DataArguments.dataset_name`)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if not name:
        raise ValueError("no data: set --dataset_name (a Hub name or a local path)")
    path = Path(name).expanduser()
    if not path.exists():
        if name.startswith((".", "/", "~")) or _builder(path) is not None:
            raise FileNotFoundError(f"--dataset_name {name!r}: no such file or folder")
        return load_dataset(name, config)  # a Hub dataset (or one in the local Hub cache when offline)
    if path.is_dir() and config and (path / config).is_dir():
        path = path / config
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        data = load_from_disk(str(path))
        return DatasetDict(train=data) if isinstance(data, Dataset) else data
    files = sorted(p for p in path.iterdir() if _builder(p)) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"--dataset_name {name!r}: no data file ({', '.join(DATA_FILE_BUILDERS)}) in it")
    builders = {_builder(p) for p in files}
    if None in builders or len(builders) > 1:
        raise ValueError(f"--dataset_name {name!r}: cannot read {[p.name for p in files]} as one dataset")
    data_files: dict[str, list[str]] = {}
    for p in files:
        split = "train" if path.is_file() else _stem(p)
        data_files.setdefault(SPLIT_ALIASES.get(split, split), []).append(str(p))
    builder = builders.pop()
    kwargs = {"delimiter": "\t"} if any(_stem_suffix(p) == ".tsv" for p in files) else {}
    if builder == "text":  # one example per paragraph (blank-line separated), newlines inside kept
        kwargs["sample_by"] = "paragraph"
    return load_dataset(builder, data_files=data_files, **kwargs)


def train_eval_split(data, args: DataArguments, seed: int = 42):
    """(train, eval) from a DatasetDict: the named splits, or a seeded hold-out of the training split."""
    if args.dataset_train_split not in data:
        raise ValueError(f"split {args.dataset_train_split!r} not in the data (splits: {list(data)}); "
                         "set --dataset_train_split")
    train = data[args.dataset_train_split]
    if args.dataset_test_split in data:
        evaluation = data[args.dataset_test_split]
    elif args.eval_split_size > 0:
        size = int(args.eval_split_size) if args.eval_split_size >= 1 else args.eval_split_size
        parts = train.train_test_split(test_size=size, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        logger.info("no %r split: held out %d of %r for evaluation", args.dataset_test_split, len(evaluation),
                    args.dataset_train_split)
    else:
        evaluation = None
    if args.max_samples is not None:
        train = train.select(range(min(args.max_samples, len(train))))
    if evaluation is not None and args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation


def require_columns(dataset, columns, hint: str = "") -> None:
    """Fail before training, naming what is missing, when the data lacks a column the recipe reads."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset has columns {dataset.column_names} but needs {missing}" + (f"; {hint}" if hint
                         else ""))


def callbacks(args: DataArguments) -> list:
    """The alpha / mask-ratio monitor (on unless --alpha_monitor false)."""
    if not args.alpha_monitor:
        os.environ["HF_ALPHAADAM_MONITOR"] = "0"  # else the Trainer attaches one by itself to our optimizers
        return []
    from hf_alphaadam import AlphaMonitorCallback

    return [AlphaMonitorCallback(per_tensor=args.alpha_per_tensor)]


def checkpoint_to_resume(training_args) -> str | bool | None:
    """--resume_from_checkpoint PATH, or `true` for the latest complete, readable checkpoint in output_dir (None
    when there is none; a half-written or damaged checkpoint is skipped with a warning)."""
    value = training_args.resume_from_checkpoint
    if value in (None, "", "false", "False"):
        return None
    if value in ("true", "True", True):
        from hf_alphaadam.trainer.checkpoint import last_complete_checkpoint

        return last_complete_checkpoint(training_args.output_dir)
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value!r}: no such checkpoint folder")
    return value


def _stem_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in COMPRESSION_SUFFIXES]
    return suffixes[-1].lower() if suffixes else ""


def _builder(path: Path) -> str | None:
    return DATA_FILE_BUILDERS.get(_stem_suffix(path))


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


GSM8K_PROMPT = "Question: {question}\nAnswer:"  # plain text: base models need no chat template


def gsm8k_number(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the number after the last `####`, else the last number in the
    text; commas and a trailing `.0` removed ("1,000.00" -> "1000"). None when there is no number."""
    import re

    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", tail)
    if not numbers:
        return None
    number = numbers[0] if "####" in text else numbers[-1]
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number
