"""Pure-PyTorch optimizers (no transformers / accelerate imports here)."""

from .alphaadam import AlphaAdam, alphaadam

__all__ = ["AlphaAdam", "alphaadam"]
