"""LLaMA-Factory's ``optim: alphaadam`` (examples/llamafactory/sft_lora.yaml) through the registration mechanism.

LLaMA-Factory is not installed here (``pip install llamafactory`` replaces the CPU torch with a CUDA build). What
it does with the file is reproduced instead: ``llamafactory.hparams.parser`` reads the YAML into a dict and calls
``HfArgumentParser([...ModelArguments, DataArguments, TrainingArguments(Seq2SeqTrainingArguments), ...])
.parse_dict(...)``. Here the same dict goes through ``HfArgumentParser(Seq2SeqTrainingArguments)`` in a fresh
interpreter that never imports hf_alphaadam (the ``.pth`` start-up hook registers the names).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "llamafactory"
CONFIG = EXAMPLE / "sft_lora.yaml"
# The keys of the example that belong to LLaMA-Factory's own argument classes (ModelArguments, DataArguments,
# FinetuningArguments in src/llamafactory/hparams/), not to Seq2SeqTrainingArguments.
LLAMAFACTORY_KEYS = {"model_name_or_path", "stage", "finetuning_type", "lora_rank", "lora_target", "dataset",
                     "dataset_dir", "template", "cutoff_len", "max_samples"}

PARSE = """
    import json, sys
    import yaml
    from transformers import HfArgumentParser, Seq2SeqTrainingArguments, Trainer

    config = yaml.safe_load(open(sys.argv[1]))
    fields = set(Seq2SeqTrainingArguments.__dataclass_fields__)
    (args,) = HfArgumentParser(Seq2SeqTrainingArguments).parse_dict(config, allow_extra_keys=True)
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    print("REPORT " + json.dumps({
        "imported": "hf_alphaadam.trainer.registry" in sys.modules, "optim": args.optim.value,
        "optim_type": type(args.optim).__name__, "optim_args": args.optim_args,
        "not_training_arguments": sorted(set(config) - fields), "constructor": optimizer_cls.__name__,
        "alpha_max": kwargs["alpha_max"], "mask": kwargs["mask"], "lr": kwargs["lr"]}))
"""


def test_llamafactory_yaml_parses_with_alphaadam_without_an_import(tmp_path):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HF_ALPHAADAM_AUTOREGISTER", "PYTHONPATH")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(PARSE), str(CONFIG)], capture_output=True,
                            text=True, env=environment, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert report["imported"] is True  # by the start-up hook, when transformers' training arguments were imported
    assert (report["optim"], report["optim_type"], report["optim_args"]) == ("alphaadam", "OptimizerNames",
                                                                            "alpha_max=10")
    assert report["constructor"] == "AlphaAdamWithTrainerGroups"
    assert (report["alpha_max"], report["mask"], report["lr"]) == (10.0, "async", 2e-4)
    # every other key is one of LLaMA-Factory's own: no TrainingArguments key is misspelt
    assert set(report["not_training_arguments"]) == LLAMAFACTORY_KEYS


def test_llamafactory_dataset_entry_points_at_the_example_data():
    config = yaml.safe_load(CONFIG.read_text())
    info = json.loads((REPO_ROOT / config["dataset_dir"] / "dataset_info.json").read_text())
    entry = info[config["dataset"]]
    data = REPO_ROOT / config["dataset_dir"] / entry["file_name"]  # LLaMA-Factory joins them like this
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == config["max_samples"] == 64
    assert entry["formatting"] == "alpaca"
    assert all(set(entry["columns"].values()) <= set(row) for row in rows)
