"""Tiny models and tokenizers built locally (no Hub access) for the recipe tests and notebooks.

Each builder trains a tokenizer on a slice of the real data in ``../shared/data`` (about a second), builds a model
from a config with random weights and ``save_pretrained``s both into one directory, so that the recipes load them
exactly like a Hub checkpoint: ``--model_name_or_path <dir>``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = (ROOT / ".." / "shared" / "data").resolve()

# A minimal chat template (user/assistant turns, generation prompt) so that TRL's conversational code paths work.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _jsonl(path: Path, limit: int) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def causal_lm_texts() -> list[str]:
    """GSM8K, HH-RLHF and Shakespeare text: what the SFT / DPO / GRPO / pretraining tests feed the models."""
    texts = [row["question"] + "\n" + row["answer"] for row in _jsonl(DATA / "gsm8k" / "train.jsonl", 2000)]
    texts += [row["chosen"] + row["rejected"] for row in _jsonl(DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", 500)]
    texts += (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:300_000].split("\n\n")
    return texts


def glue_texts() -> list[str]:
    texts = []
    for task in ("rte", "mrpc", "sst2", "stsb"):
        for row in _jsonl(DATA / "glue" / task / "train.jsonl", 1500):
            texts += [row[key] for key in ("sentence", "sentence1", "sentence2") if key in row]
    return texts


def byte_level_bpe(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer with <|endoftext|> (bos/eos) and <pad>, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                      eos_token="<|endoftext|>", pad_token="<pad>", model_max_length=512)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def wordpiece(texts: list[str], vocab_size: int = 1024):
    """An uncased BERT-style WordPiece tokenizer ([CLS] a [SEP] b [SEP]) as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                                                   show_progress=False))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def build_llama(directory: Path, hidden_size: int = 64, layers: int = 2) -> Path:
    """A ~0.2 M-parameter Llama causal LM + byte-level BPE tokenizer (SFT, DPO, GRPO)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_bpe(causal_lm_texts())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_gpt2_config(directory: Path, hidden_size: int = 64, layers: int = 2, block: int = 64) -> Path:
    """A GPT-2 config (no weights: the pretraining recipe initialises from it) + byte-level BPE tokenizer."""
    from transformers import GPT2Config

    tokenizer = byte_level_bpe(causal_lm_texts())
    GPT2Config(vocab_size=len(tokenizer), n_embd=hidden_size, n_layer=layers, n_head=4, n_positions=block,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_bert(directory: Path, hidden_size: int = 64, layers: int = 2) -> Path:
    """A tiny BERT encoder (no task head: the GLUE recipe adds one per task) + WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = wordpiece(glue_texts())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":  # python tests/recipes/_tiny.py OUTDIR  -> OUTDIR/{llama,gpt2,bert}
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    for name, build in (("llama", build_llama), ("gpt2", build_gpt2_config), ("bert", build_bert)):
        print(build(out / name))
