"""Finding the checkpoint to resume from after a crash.

The Trainer writes a checkpoint's files one after the other and ``trainer_state.json`` last, without an atomic
rename, so a process killed while saving leaves a partial ``checkpoint-N`` directory that
``transformers.trainer_utils.get_last_checkpoint`` would still pick. :func:`last_complete_checkpoint` skips it.
"""

from __future__ import annotations

import json
import logging
import os
import re

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: str) -> bool:
    """True if ``path`` holds a readable ``trainer_state.json`` (written last by the Trainer)."""
    state_file = os.path.join(path, "trainer_state.json")
    try:
        with open(state_file) as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` directory in ``output_dir``, or None if there is none."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))),
                   reverse=True)
    for _, name in steps:
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("skipping incomplete checkpoint %s (no readable trainer_state.json)", path)
    return None
