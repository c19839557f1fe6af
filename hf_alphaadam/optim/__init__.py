"""Pure-PyTorch optimizers (no transformers / accelerate imports here)."""

from .adadiag import AdaDiag, adadiag
from .adapm import AdaPM, adapm, compare_with_adamw, optimizer_state_memory
from .alphaadam import AlphaAdam, alphaadam

__all__ = ["AdaDiag", "adadiag", "AdaPM", "adapm", "compare_with_adamw", "optimizer_state_memory", "AlphaAdam",
           "alphaadam"]
