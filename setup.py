"""Build step that installs the start-up hook ``hf_alphaadam-autoregister.pth`` into site-packages.

Everything else is declared in pyproject.toml. The hook's file name and its one line are defined in
``hf_alphaadam/_autoregister.py`` (read here without importing the package). setuptools has no setting for a file
at the root of site-packages, so:

- a regular wheel (``pip install .``, ``pip wheel .``): ``build_py`` also writes the file into the build folder's
  root, which becomes the wheel's root (and so site-packages);
- an editable install (``pip install -e .``): setuptools' editable wheel holds no build output, only the files its
  editable strategy writes; the strategy is wrapped so that it also writes the hook.

Either way the file is listed in the wheel's RECORD, so ``pip uninstall hf-alphaadam`` removes it.
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

_HOOK = runpy.run_path(str(Path(__file__).parent / "hf_alphaadam" / "_autoregister.py"))
PTH_FILE_NAME: str = _HOOK["PTH_FILE_NAME"]
PTH_CONTENT: str = _HOOK["PTH_LINE"] + "\n"


class BuildPyWithStartupHook(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib, PTH_FILE_NAME)
            target.write_text(PTH_CONTENT, encoding="utf-8")

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(Path(self.build_lib, PTH_FILE_NAME))]


class _StrategyWritingTheHook:
    """An editable strategy (setuptools' EditableStrategy protocol) that also writes the start-up hook."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH_FILE_NAME, PTH_CONTENT.encode("utf-8"))

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.strategy.__exit__(*exc_info)


class EditableWheelWithStartupHook(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        return _StrategyWritingTheHook(super()._select_strategy(name, tag, build_lib))


setup(cmdclass={"build_py": BuildPyWithStartupHook, "editable_wheel": EditableWheelWithStartupHook})
