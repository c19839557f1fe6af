"""Finding the checkpoint to resume from after a crash.

The Trainer writes a checkpoint's files one after the other and ``trainer_state.json`` last, without an atomic
rename, so a process killed while saving leaves a partial ``checkpoint-N`` directory that
``transformers.trainer_utils.get_last_checkpoint`` would still pick; a file damaged later (a full disk, a copy cut
short) makes the resume fail deep inside ``torch.load``. :func:`last_complete_checkpoint` skips both: a checkpoint
counts as complete when its ``trainer_state.json`` reads as JSON and every model, optimizer, scheduler and RNG
file at its top level opens (:func:`unreadable_files`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# files written with torch.save (zip archives): model weights (.bin), optimizer.pt, scheduler.pt, rng_state*.pth,
# training_args.bin
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_SAFETENSORS_SUFFIX = ".safetensors"
# a safetensors header larger than this is damage, not a header (the format's own limit is 100 MB)
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def _zip_problem(path: str) -> str | None:
    """Why the torch.save archive at ``path`` cannot be opened (its zip directory does not read), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return "an empty archive"
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return f"not a readable zip archive ({error})"
    return None


def _safetensors_problem(path: str) -> str | None:
    """Why the safetensors file at ``path`` cannot be opened (a header that does not read, or data cut short)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, shorter than the 8-byte header length"
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"a header length of {length} bytes in a file of {size} bytes"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as error:
        return f"an unreadable header ({error})"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        return f"{size} bytes but its header describes {needed}: the data was cut short"
    return None


def unreadable_files(path: str) -> dict[str, str]:
    """``{file name: problem}`` for the top-level files of checkpoint ``path`` that cannot be opened:
    ``trainer_state.json`` missing or not JSON, a ``.pt`` / ``.pth`` / ``.bin`` whose zip directory does not read,
    a ``.safetensors`` whose header does not read or whose data is shorter than the header says. Only the
    directories are read (no tensor data): cheap for checkpoints of any size."""
    problems: dict[str, str] = {}
    try:
        with open(os.path.join(path, "trainer_state.json")) as handle:
            json.load(handle)
    except (OSError, ValueError) as error:
        problems["trainer_state.json"] = f"missing or not JSON ({type(error).__name__})"
    try:
        names = sorted(os.listdir(path))
    except OSError as error:
        return {path: f"not readable ({error})"}
    for name in names:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        problem = None
        if name.endswith(_TORCH_SUFFIXES):
            problem = _zip_problem(file)
        elif name.endswith(_SAFETENSORS_SUFFIX):
            problem = _safetensors_problem(file)
        if problem is not None:
            problems[name] = problem
    return problems


def is_complete_checkpoint(path: str) -> bool:
    """True if ``path`` holds a readable ``trainer_state.json`` (written last by the Trainer) and every model,
    optimizer and scheduler file opens (see :func:`unreadable_files`)."""
    return not unreadable_files(path)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` directory in ``output_dir``, or None if there is none. Incomplete or
    damaged ones are skipped, each with a warning naming the files that do not open."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))),
                   reverse=True)
    for _, name in steps:
        path = os.path.join(output_dir, name)
        problems = unreadable_files(path)
        if not problems:
            return path
        logger.warning("skipping incomplete or damaged checkpoint %s: %s", path,
                       "; ".join(f"{file}: {problem}" for file, problem in problems.items()))
    return None
