"""Fixtures for the recipe tests: tiny local models, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from _tiny import build_bert, build_gpt2_config, build_llama

pytest.importorskip("trl", reason="the recipes need the 'recipes' extra (trl, peft, datasets, ...)")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"llama": dir, "gpt2": dir (config + tokenizer), "bert": dir}: tiny random models with local tokenizers."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {"llama": build_llama(root / "llama"), "gpt2": build_gpt2_config(root / "gpt2"),
            "bert": build_bert(root / "bert")}
