"""The recipes' configs parse, and bad configuration fails before any training with a message that names the
problem. These run the recipes in-process (no subprocess, no training), so they take about a second each."""

from __future__ import annotations

import runpy
import sys

import pytest

from _run import CONFIGS, DATA, RECIPES

sys.path.insert(0, str(RECIPES))
import common  # noqa: E402  (recipes/common.py)

RECIPE_OF_CONFIG = {"sft": "sft.py", "dpo": "dpo.py", "grpo": "grpo.py", "glue": "glue.py",
                    "pretrain": "pretrain_gpt2.py"}


class Parsed(Exception):
    """Raised by the patched parse_args to stop a recipe right after its arguments are parsed."""


def run_in_process(monkeypatch, recipe: str, *argv, stop_after_parse: bool = False):
    monkeypatch.setattr(sys, "argv", [str(RECIPES / recipe), *map(str, argv)])
    if stop_after_parse:
        real = common.parse_args

        def parse_then_stop(*types):
            raise Parsed(real(*types))

        monkeypatch.setattr(common, "parse_args", parse_then_stop)
    runpy.run_path(str(RECIPES / recipe), run_name="__main__")


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_parses(monkeypatch, config):
    recipe = RECIPE_OF_CONFIG[config.split("_")[0]]
    overrides = ["--bf16", "false", "--use_cpu", "true"]  # the GPU configs ask for bf16
    with pytest.raises(Parsed) as parsed:
        run_in_process(monkeypatch, recipe, CONFIGS / config, *overrides, stop_after_parse=True)
    script_args, training_args, *_ = parsed.value.args[0]
    assert getattr(training_args.optim, "value", training_args.optim) == "alphaadam"
    assert script_args.alpha_monitor and "tensorboard" in training_args.report_to


def test_yaml_then_overrides(monkeypatch):
    with pytest.raises(Parsed) as parsed:
        run_in_process(monkeypatch, "sft.py", CONFIGS / "sft_tiny_cpu.yaml", "--max_steps", "7",
                       "--optim", "adamw_torch", "--alpha_monitor", "false", stop_after_parse=True)
    script_args, training_args, model_args = parsed.value.args[0]
    assert training_args.max_steps == 7 and training_args.optim == "adamw_torch" and not script_args.alpha_monitor
    assert training_args.warmup_steps == 2 and model_args.model_name_or_path == "outputs/models/tiny-llama"


def _fails_before_training(monkeypatch, tmp_path, error, match, recipe, config, *argv):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        run_in_process(monkeypatch, recipe, CONFIGS / config, "--output_dir", out, *argv)
    assert not (out / "checkpoint-1").exists()


def test_unknown_glue_task(monkeypatch, tmp_path):
    _fails_before_training(monkeypatch, tmp_path, ValueError, r"unknown GLUE task.*mnli_typo.*choose from",
                           "glue.py", "glue_tiny_cpu.yaml", "--task_name", "rte", "mnli_typo")


def test_missing_data_file(monkeypatch, tmp_path):
    _fails_before_training(monkeypatch, tmp_path, FileNotFoundError, r"nowhere\.jsonl.*no such file",
                           "sft.py", "sft_tiny_cpu.yaml", "--dataset_name", tmp_path / "nowhere.jsonl")


def test_missing_column(monkeypatch, tmp_path):
    _fails_before_training(monkeypatch, tmp_path, ValueError, r"needs \['problem'\].*question_column",
                           "sft.py", "sft_tiny_cpu.yaml", "--dataset_name", DATA / "gsm8k",
                           "--question_column", "problem")


def test_dpo_needs_pairs(monkeypatch, tmp_path):
    _fails_before_training(monkeypatch, tmp_path, ValueError, r"needs \['chosen', 'rejected'\]",
                           "dpo.py", "dpo_tiny_cpu.yaml", "--dataset_name", DATA / "gsm8k")


def test_glue_missing_split(monkeypatch, tmp_path):
    _fails_before_training(monkeypatch, tmp_path, ValueError, r"split 'training' not in the data",
                           "glue.py", "glue_tiny_cpu.yaml", "--dataset_name", DATA / "glue",
                           "--dataset_train_split", "training")


def test_unregistered_optimizer_on_the_command_line(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_in_process(monkeypatch, "glue.py", CONFIGS / "glue_tiny_cpu.yaml", "--optim", "alphaadamx")
    assert "alphaadamx" in capsys.readouterr().err


def test_unregistered_optimizer_in_the_config(monkeypatch, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text((CONFIGS / "glue_tiny_cpu.yaml").read_text().replace("optim: alphaadam", "optim: alphaadamx"))
    with pytest.raises(ValueError, match="alphaadamx"):
        run_in_process(monkeypatch, "glue.py", config)


def test_missing_config_file(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="config file"):
        run_in_process(monkeypatch, "sft.py", tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "number"), [
    ("so 5 + 3 = 8\n#### 8", "8"), ("#### 1,000", "1000"), ("#### -3.50", "-3.5"), ("total 12.0 and then 7", "7"),
    ("no number", None), ("#### 72 apples, not 5", "72")])
def test_gsm8k_number(text, number):
    assert common.gsm8k_number(text) == number


def test_load_data_local_forms(tmp_path):
    gsm8k = common.load_data(str(DATA / "gsm8k"))
    assert set(gsm8k) == {"train", "test"} and "question" in gsm8k["train"].column_names
    glue = common.load_data(str(DATA / "glue"), "rte")  # dev.jsonl -> "validation"
    assert set(glue) == {"train", "validation"}
    hh = common.load_data(str(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"))
    assert list(hh) == ["train"] and len(hh["train"]) == 400  # the excerpt's rows
    text = common.load_data(str(DATA / "tinyshakespeare" / "input.txt"))
    assert text["train"].column_names == ["text"] and "\n" in text["train"][0]["text"]  # paragraphs

    gsm8k["train"].select(range(5)).save_to_disk(str(tmp_path / "saved"))
    assert len(common.load_data(str(tmp_path / "saved"))["train"]) == 5
    (tmp_path / "pairs.tsv").write_text("sentence\tlabel\nfine film\t1\nawful\t0\n")
    assert common.load_data(str(tmp_path / "pairs.tsv"))["train"]["label"] == [1, 0]


# The model folders `python -m hf_alphaadam.models tiny` writes, and the keys of a config that name a path.
BUILT_MODELS = {"outputs/models/" + name for name in ("tiny-llama", "tiny-gpt2", "tiny-bert", "all-minilm-l6-v2")}
PATH_KEYS = ("model_name_or_path", "config_name", "tokenizer_name", "dataset_name")


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*_tiny_cpu.yaml")))
def test_tiny_cpu_configs_are_offline(config):
    """Every tiny CPU config names only the models the tiny builder writes and data in the repository, so that it
    runs as shipped on a clone (tests/recipes/test_recipes.py runs each recipe with these models and data)."""
    import yaml

    from hf_alphaadam.models.tiny import BUILDERS, DEFAULT_OUT

    assert {str(DEFAULT_OUT / name) for name in BUILDERS} < BUILT_MODELS
    values = yaml.safe_load((CONFIGS / config).read_text())
    named = {key: values[key] for key in PATH_KEYS if values.get(key)}
    assert named.get("dataset_name") and (named.get("model_name_or_path") or named.get("config_name")), named
    for key, value in named.items():
        if key == "dataset_name":
            assert (RECIPES.parent / value).exists() and value.startswith("data/"), (key, value)
        else:
            assert value in BUILT_MODELS, (key, value)
