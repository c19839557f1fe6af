"""hf-alphaadam: AlphaAdam and friends for PyTorch and the Hugging Face Trainer."""

from .optim import AdaDiag, AdaPM, AlphaAdam
from .trainer.callback import AlphaMonitorCallback
from .trainer.plotting import plot_alpha
from .trainer.registry import OPTIMIZERS, OptimizerSpec, add_optimizer, optimizer_cls_and_kwargs, register
from .trainer.registry import register_at_import as _register_at_import

__version__ = "0.1.0"
__all__ = ["AdaDiag", "AdaPM", "AlphaAdam", "AlphaMonitorCallback", "OPTIMIZERS", "OptimizerSpec", "add_optimizer",
           "optimizer_cls_and_kwargs", "plot_alpha", "register", "__version__"]

# optim="alphaadam", "cautious_adamw", ... for TrainingArguments, HfArgumentParser / TrlParser and the Trainer
_register_at_import()
