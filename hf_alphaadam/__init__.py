"""hf-alphaadam: AlphaAdam and friends for PyTorch and the Hugging Face Trainer."""

from .optim import AlphaAdam

__version__ = "0.1.0"
__all__ = ["AlphaAdam", "__version__"]
