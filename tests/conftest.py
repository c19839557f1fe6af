"""Shared fixtures: a byte-level BPE tokenizer trained at test time, a tiny random Llama saved locally, real text.

Everything here is offline: the tokenizer is trained with ``tokenizers`` on local text (the documentation text
that ships with Python plus the task data), the model is built from a config, and the data sets are the real
excerpts in the repository's ``data/`` folder (see its README). Heavy imports (transformers, datasets) happen inside the fixtures, so optimizer-only test
runs do not pay for them.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "data"  # in-repository excerpts of the real data sets
GSM8K_TRAIN = DATA / "gsm8k" / "train.jsonl"
HH_RLHF = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"

# A minimal chat template (no generation markers): "<|role|>\ncontent<|endoftext|>\n" per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]


def _stdlib_text() -> str:
    """The documentation text that ships with CPython (``pydoc_data.topics``, ~465 kB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def train_bpe_tokenizer(text: str, vocab_size: int = 1024):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``text`` (about a second for 0.5 MB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunk = 10_000
    tokenizer.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>", pad_token="<|pad|>", unk_token=None,
                                      model_max_length=512)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_llama_config(tokenizer, hidden_size: int = 32, num_layers: int = 2, **overrides):
    from transformers import LlamaConfig

    config = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  tie_word_embeddings=False)
    config.update(overrides)
    return LlamaConfig(**config)


def _gsm8k_rows(limit: int) -> list[dict[str, str]]:
    rows = []
    with GSM8K_TRAIN.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if len(row["question"]) < 220 and len(row["answer"]) < 260:  # short ones keep sequences short
                rows.append({"question": row["question"], "answer": row["answer"]})
            if len(rows) == limit:
                break
    return rows


def _split_dialogue(dialogue: str) -> tuple[str, str]:
    """An HH-RLHF dialogue as (prompt ending in 'Assistant:', final assistant turn)."""
    cut = dialogue.rfind("\n\nAssistant:") + len("\n\nAssistant:")
    return dialogue[:cut], dialogue[cut:]


def _preference_rows(limit: int) -> list[dict[str, str]]:
    rows = []
    with gzip.open(HH_RLHF, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            prompt, chosen = _split_dialogue(row["chosen"])
            prompt_r, rejected = _split_dialogue(row["rejected"])
            if prompt != prompt_r or not chosen.strip() or not rejected.strip() or chosen == rejected:
                continue
            if len(row["chosen"]) > 400 or len(row["rejected"]) > 400:  # short pairs keep sequences short
                continue
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
            if len(rows) == limit:
                break
    return rows


@pytest.fixture(scope="session")
def stdlib_text() -> str:
    """The documentation text that ships with CPython (``pydoc_data.topics``)."""
    return _stdlib_text()


@pytest.fixture(scope="session")
def tokenizer_text() -> str:
    """Text for the test tokenizer: the stdlib docs plus the task data, so that all of them tokenize compactly."""
    parts = [_stdlib_text()[:250_000]]
    parts += [row["question"] + "\n" + row["answer"] for row in _gsm8k_rows(300)]
    parts += [row["prompt"] + row["chosen"] + row["rejected"] for row in _preference_rows(200)]
    return "\n\n".join(parts)


@pytest.fixture(scope="session")
def tiny_tokenizer(tokenizer_text):
    """Byte-level BPE (vocab 1024) with eos/pad tokens and a chat template; built once per session."""
    return train_bpe_tokenizer(tokenizer_text, vocab_size=1024)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A randomly initialised 2-layer Llama (hidden 32) and the tokenizer, saved to a local directory.

    Load a fresh copy per test with ``AutoModelForCausalLM.from_pretrained(tiny_llama_dir)``. Trainers that build
    a reference model (DPO, KTO, RLOO with beta > 0) rebuild it from this path.
    """
    import torch
    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tiny_tokenizer))
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def gsm8k_rows() -> list[dict[str, str]]:
    """16 short GSM8K problems ``{question, answer}`` (answers end in ``#### N``)."""
    return _gsm8k_rows(16)


@pytest.fixture(scope="session")
def preference_rows() -> list[dict[str, str]]:
    """16 short HH-RLHF harmless-base pairs ``{prompt, chosen, rejected}`` split at the last assistant turn."""
    return _preference_rows(16)
