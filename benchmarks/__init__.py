"""Benchmarks of hf-alphaadam against torch.optim.AdamW (not tests): ``python -m benchmarks --help``."""
