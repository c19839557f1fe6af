"""Lazy registration: the ``optim=`` names reach transformers when transformers imports the modules that need them.

``import hf_alphaadam`` (and, after ``pip install``, every Python start through the ``hf_alphaadam-autoregister.pth``
file; see the README's "Use from TRL / LLaMA-Factory / axolotl") calls :func:`arm`. The rules:

- When ``transformers.training_args`` has finished executing, the package's names become ``OptimizerNames``
  members (``registry.register_training_arguments``): ``TrainingArguments(optim="alphaadam")``,
  ``HfArgumentParser`` and ``TrlParser`` accept them from then on.
- When ``transformers.trainer`` has finished executing, the rest of the registration runs (``registry.register``:
  the Trainer's optimizer handlers).
- A module that is already imported when :func:`arm` runs is handled at once, so the import order of
  ``hf_alphaadam`` and ``transformers`` does not matter.
- Until one of those modules is imported, nothing else happens: no torch, no transformers. This module imports only
  ``os`` and ``sys``, which every interpreter has loaded before it processes ``.pth`` files.
- The hook never breaks the import it watches: a failed registration is logged as a warning.

The watch is a finder at the front of ``sys.meta_path``. It answers only for the two module names above: it asks
the other finders for the module's spec and wraps the spec's loader so that the registration runs right after the
module's code. The real loader is put back on the module before its code runs, so the module looks as if it had
been imported normally. The finder removes itself once both modules have been seen.

``HF_ALPHAADAM_AUTOREGISTER=0`` keeps the ``.pth`` start-up hook from arming the watch (an explicit
``import hf_alphaadam`` still arms it).
"""

import os
import sys

ENVIRONMENT_VARIABLE = "HF_ALPHAADAM_AUTOREGISTER"
_SWITCH_VALUES = ("0", "1")

# The start-up hook: setup.py installs this one line as site-packages/<PTH_FILE_NAME>. site.py executes a .pth line
# that starts with "import" at every interpreter start; this one imports hf_alphaadam (which only arms the watch)
# unless the switch is 0, and swallows every error so that a broken install can never stop Python from starting.
# site.py reads .pth files in name order: this name sorts after setuptools' "__editable__.*.pth", so an editable
# install's finder is in place when the line runs.
PTH_FILE_NAME = "hf_alphaadam-autoregister.pth"
PTH_LINE = (f'import os; os.environ.get("{ENVIRONMENT_VARIABLE}") == "0" or '
            'exec("try:\\n import hf_alphaadam\\nexcept BaseException:\\n pass")')


def _register_training_arguments() -> None:
    from .trainer import registry

    registry.register_training_arguments()


def _register_trainer() -> None:
    from .trainer import registry

    registry.register()


# watched module -> what runs right after it has been imported
_HOOKS = {"transformers.training_args": _register_training_arguments, "transformers.trainer": _register_trainer}
_pending = set(_HOOKS)


class _RunHookAfterExec:
    """A loader that executes the module with the real loader, then runs the module's hook."""

    def __init__(self, loader, name):
        self.loader = loader
        self.name = name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        self.loader.exec_module(module)
        _run_hook(self.name)


class _PostImportFinder:
    """A ``sys.meta_path`` finder that answers only for the watched modules (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunHookAfterExec(spec.loader, fullname)
                return spec
        return None


_FINDER = _PostImportFinder()


def _run_hook(name: str) -> None:
    if name not in _pending:
        return
    _pending.discard(name)
    if not _pending and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    try:
        _HOOKS[name]()
    except Exception as error:  # noqa: BLE001 -- the import being watched must not fail because of us
        import logging

        logging.getLogger(__name__).warning(
            "hf_alphaadam could not register its optim= names after %s was imported (%s: %s); pass the optimizer "
            "explicitly with Trainer(optimizer_cls_and_kwargs=hf_alphaadam.optimizer_cls_and_kwargs(...)) instead",
            name, type(error).__name__, error)


def _is_initializing(module) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def arm() -> None:
    """Register at once with the watched modules that are already imported; watch for the others (idempotent).

    A watched module that is being imported right now (``arm`` called from inside its import) is left to the
    other hook: ``transformers.trainer`` runs the whole registration."""
    _check_switch()
    for name in [name for name in _HOOKS if name in _pending]:
        module = sys.modules.get(name)
        if module is not None and not _is_initializing(module):
            _run_hook(name)
    if _pending and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def is_armed() -> bool:
    """Whether the watch still waits for a watched module."""
    return _FINDER in sys.meta_path


def _check_switch() -> None:
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value is not None and value not in _SWITCH_VALUES:
        import logging

        logging.getLogger(__name__).warning(
            "%s=%r is not allowed: use 0 (no registration at Python start-up) or 1 (the default); the start-up "
            "registration stays on", ENVIRONMENT_VARIABLE, value)
