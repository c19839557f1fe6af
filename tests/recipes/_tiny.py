"""The tiny local models of the recipe tests: the same builders as ``python -m hf_alphaadam.models tiny``."""

from __future__ import annotations

from pathlib import Path

from hf_alphaadam.models.tiny import REPO_DATA as DATA
from hf_alphaadam.models.tiny import build_bert, build_gpt2_config, build_llama

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["DATA", "ROOT", "build_bert", "build_gpt2_config", "build_llama"]
