"""Independent per-tensor steps run side by side in worker threads, each with single-threaded torch kernels.

Why: a low-rank AdaPM block's step is a chain of small matrix products (skinny ``rows x cols`` by ``cols x r``
GEMMs and a QR), element-wise passes and Python glue. On the CPU, MKL splits those small products over its
threads badly (two threads run them barely faster than one), and the Python glue never runs in parallel, so
with ``torch.get_num_threads() == 2`` the step took as long as with one. Giving each of ``n`` worker threads
whole tensors, with MKL and OpenMP limited to one thread *in that worker only*, keeps every core busy instead.
Each tensor's arithmetic is unchanged: results equal the serial step's up to the rounding of a one-thread GEMM
(MKL may add in another order with more threads).

The per-thread limits use ``MKL_Set_Num_Threads_Local`` and ``omp_set_num_threads`` (both per calling thread)
from the libraries torch is linked with. Where they cannot be found (a torch without MKL, another OpenMP) or do
not take effect, :func:`available` is ``False`` and callers run the tensors one after another.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

R = TypeVar("R")

_LOCK = threading.Lock()
_CONTROLS: tuple[Any, Any] | None = None
_CONTROLS_ERROR: str | None = None
_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] | None = None  # (process id, workers): a forked child or another size gets a new pool
_VERIFIED: bool | None = None  # whether the limits take effect in a worker (checked once)


def _find_symbol(name: str, libraries: Sequence[str]) -> Any:
    """``name`` from the process's global symbols or, failing that, from one of torch's own libraries."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        pass
    lib_dir = Path(torch.__file__).resolve().parent / "lib"
    for library in libraries:
        path = lib_dir / library
        if path.is_file():
            try:
                return getattr(ctypes.CDLL(str(path)), name)
            except (AttributeError, OSError):
                continue
    raise LookupError(f"{name} not found in the process or in {lib_dir} ({', '.join(libraries)})")


def _controls() -> tuple[Any, Any]:
    """``(MKL_Set_Num_Threads_Local, omp_set_num_threads)`` as ctypes functions; raises ``LookupError``."""
    global _CONTROLS, _CONTROLS_ERROR
    if _CONTROLS is not None:
        return _CONTROLS
    if _CONTROLS_ERROR is not None:
        raise LookupError(_CONTROLS_ERROR)
    try:
        if not torch.backends.mkl.is_available():
            raise LookupError("torch is built without MKL")
        if not torch.backends.openmp.is_available():
            raise LookupError("torch is built without OpenMP")
        mkl_local = _find_symbol("MKL_Set_Num_Threads_Local", ["libtorch_cpu.so"])
        omp_set = _find_symbol("omp_set_num_threads", ["libgomp.so.1", "libiomp5.so", "libomp.so"])
        mkl_local.argtypes, mkl_local.restype = [ctypes.c_int], ctypes.c_int
        omp_set.argtypes, omp_set.restype = [ctypes.c_int], None
    except LookupError as error:
        _CONTROLS_ERROR = str(error)
        raise
    _CONTROLS = (mkl_local, omp_set)
    return _CONTROLS


def _single_threaded_worker() -> None:
    """Pool initializer: torch's kernels in this thread use one thread (the other threads keep their settings)."""
    torch.get_num_threads()  # torch's lazy per-thread set-up first, so that it cannot undo the lines below
    mkl_local, omp_set = _controls()
    mkl_local(1)
    omp_set(1)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_KEY
    key = (os.getpid(), workers)
    with _LOCK:
        if _POOL is None or _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY[0] == key[0]:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="hf_alphaadam", initializer=_single_threaded_worker)
            _POOL_KEY = key
        return _POOL


def _close_before_fork() -> None:
    """Idle workers are joined before a fork (a DataLoader's, say): the child would not have them anyway, and
    Python warns about forking a process with other threads. The next step starts them again."""
    global _POOL, _POOL_KEY
    if _POOL is None or threading.current_thread().name.startswith("hf_alphaadam"):
        return
    pool, _POOL, _POOL_KEY = _POOL, None, None
    pool.shutdown(wait=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_before_fork)


def available() -> bool:
    """Whether worker threads can be limited to one torch thread each here (checked once, in a worker)."""
    global _VERIFIED
    if _VERIFIED is None:
        try:
            _controls()
            _VERIFIED = _pool(1).submit(torch.get_num_threads).result() == 1
            if not _VERIFIED:
                logger.debug("per-thread torch thread limits did not take effect: tensors run serially")
        except LookupError as error:
            logger.debug("no per-thread torch thread limits (%s): tensors run serially", error)
            _VERIFIED = False
    return _VERIFIED


def resolve_threads(requested: int | None, tensors: Sequence[torch.Tensor]) -> int:
    """How many worker threads to use for ``tensors``: ``requested``, or for ``None`` torch's thread count when
    every tensor is on the CPU; never more than there are tensors; 1 (serial) where :func:`available` is False."""
    if requested is None:
        if not tensors or any(t.device.type != "cpu" for t in tensors):
            return 1
        requested = torch.get_num_threads()
    threads = min(int(requested), len(tensors))
    if threads <= 1 or not available():
        return 1
    return threads


def balanced_shares(weights: Sequence[float], shares: int) -> list[list[int]]:
    """Indices of ``weights`` split into ``shares`` lists of similar total weight (largest first, each to the
    lightest share); the indices keep their order within a share."""
    loads = [0.0] * shares
    assigned: list[list[int]] = [[] for _ in range(shares)]
    for index in sorted(range(len(weights)), key=lambda i: -weights[i]):
        lightest = min(range(shares), key=loads.__getitem__)
        assigned[lightest].append(index)
        loads[lightest] += weights[index]
    return [sorted(share) for share in assigned if share]


def map_tensors(function: Callable[[int, int], R], count: int, weights: Sequence[float], threads: int) -> list[R]:
    """``[function(i, share) for i in range(count)]``, run in ``threads`` single-threaded workers when
    ``threads > 1`` (``share`` numbers the worker's list, for per-worker scratch). ``function`` must touch only
    its own tensors. Grad mode is carried into the workers; the first exception is raised here."""
    if threads <= 1 or count <= 1:
        return [function(i, 0) for i in range(count)]
    shares = balanced_shares(weights, threads)
    grad_enabled = torch.is_grad_enabled()

    def run(share: int) -> list[tuple[int, R]]:
        with torch.set_grad_enabled(grad_enabled):
            return [(i, function(i, share)) for i in shares[share]]

    pool = _pool(threads)
    futures = [pool.submit(run, share) for share in range(len(shares))]
    results: list[Any] = [None] * count
    for future in futures:
        for i, value in future.result():
            results[i] = value
    return results
