"""``python -m hf_alphaadam.models {tiny,smollm2} [OUT] [options]``: build the local models (see the package doc)."""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {"tiny": "hf_alphaadam.models.tiny", "smollm2": "hf_alphaadam.models.smollm2"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "nothing"
        raise SystemExit(f"usage: python -m hf_alphaadam.models {{{','.join(COMMANDS)}}} [OUT] [options] "
                         f"(got {given}); add --help after a command for its options")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
