"""hf-alphaadam: AlphaAdam and friends for PyTorch and the Hugging Face Trainer.

Importing the package is light: it loads neither torch nor transformers. Each public name is imported on first
use (``hf_alphaadam.AlphaAdam`` loads :mod:`hf_alphaadam.optim`, ``hf_alphaadam.AlphaMonitorCallback`` the Trainer
side). The import arms the lazy registration of the ``optim=`` names (:mod:`hf_alphaadam._autoregister`): they are
registered with transformers as soon as its training arguments are imported, or at once if they already are.
"""

from . import _autoregister

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY_NAMES = {
    "AdaDiag": ".optim",
    "AdaPM": ".optim",
    "AlphaAdam": ".optim",
    "AlphaMonitorCallback": ".trainer.callback",
    "plot_alpha": ".trainer.plotting",
    "OPTIMIZERS": ".optim.catalog",
    "OptimizerSpec": ".optim.catalog",
    "add_optimizer": ".trainer.registry",
    "optimizer_cls_and_kwargs": ".trainer.registry",
    "register": ".trainer.registry",
}
_SUBPACKAGES = ("optim", "trainer", "integrations")

__all__ = ["AdaDiag", "AdaPM", "AlphaAdam", "AlphaMonitorCallback", "OPTIMIZERS", "OptimizerSpec", "add_optimizer",
           "optimizer_cls_and_kwargs", "plot_alpha", "register", "__version__"]


def __getattr__(name: str):
    from importlib import import_module

    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES, *_SUBPACKAGES})


_autoregister.arm()
