"""The native CPU kernels (``_native/alphaadam_cpu.c``): the shared Adam engine's fp32 step, which updates every fp32
tensor of a call in two passes over memory per tensor (AlphaAdam, Cautious AdamW, AdamW, AdaPM's and AdaDiag's
element-wise tensors), plus AdaPM's element-wise tails (momentum-free Adam, low-rank / compact rows).

Why a C kernel: the exact AlphaAdam step needs three per-tensor sums before any element moves. Eager ops pay for
that with ~35 passes over memory and full-size temporaries; ``torch.compile``'s CPU kernels get it down to two
passes, but their reduction loop reads at half the memory bandwidth and each call costs tens to hundreds of
microseconds of guard and launch overhead, for every tensor. The C kernel runs both passes over one tensor
back to back on the same thread (the second finds the data in cache when it fits), splits large tensors over
threads, and has one call per step.

It is compiled from the shipped source with the system C compiler on first use (about a second; ``$CC`` or
``cc``), cached under ``$HF_ALPHAADAM_CACHE`` (default ``~/.cache/hf_alphaadam``) keyed by the source, the
compiler and the CPU, and loaded with ``ctypes``. Where no compiler works, :func:`available` is ``False`` and
the optimizer takes another path. Next to each library a ``.sha256`` file records its size and SHA-256 at build
time; a cached library is loaded only when it matches (a truncated file would kill the process with SIGBUS when
mapped, a foreign one run anything): otherwise it is rebuilt, with one warning, and where that fails too the
optimizer takes another path.

The math is that of ``_single_tensor_alphaadam`` in fp32 (no FMA contraction), except that the bias corrections
are applied as multiplications by their reciprocals (one division per element instead of three) and the sums are
accumulated in fp32 blocks, then fp64: results agree with the reference to rounding (tested at rtol 1e-5).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from typing import Any

import torch
from torch import Tensor

from ._masking import reported_alpha, step_scale
from ._sharding import SumsReducer
from ._state import copy_back
from ._step_options import AdamStep, Tensors

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_native") / "alphaadam_cpu.c"
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared",
         "-pthread"]
MASKS = {"async": 0, "sync": 1, "none": 2}
ALPHAS = {"norm": 0, "count": 1, "none": 2}
STEP, SUMS, APPLY = 0, 1, 2

StatisticsBucket = tuple[list[int], Tensor, Tensor]


class _Options(ctypes.Structure):
    _fields_ = [("lr", ctypes.c_double), ("beta1", ctypes.c_double), ("beta2", ctypes.c_double),
                ("eps", ctypes.c_double), ("weight_decay", ctypes.c_double), ("alpha_max", ctypes.c_double),
                ("mask", ctypes.c_int32), ("alpha", ctypes.c_int32), ("first_step_full", ctypes.c_int32),
                ("maximize", ctypes.c_int32), ("threads", ctypes.c_int32), ("mode", ctypes.c_int32),
                ("momentum_free", ctypes.c_int32)]


class _Region(ctypes.Structure):
    _fields_ = [("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("v", ctypes.c_void_p), ("used", ctypes.c_void_p),
                ("p_stride", ctypes.c_int64), ("g_stride", ctypes.c_int64), ("v_stride", ctypes.c_int64),
                ("used_stride", ctypes.c_int64), ("n_runs", ctypes.c_int64), ("run_len", ctypes.c_int64),
                ("coef", ctypes.c_float), ("decay", ctypes.c_float), ("eps_scaled", ctypes.c_float),
                ("beta2", ctypes.c_float), ("one_minus_beta2", ctypes.c_float), ("denom", ctypes.c_void_p),
                ("denom_stride", ctypes.c_int64), ("denom_run_stride", ctypes.c_int64)]


_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_ERROR: str | None = None  # why the kernel is unavailable in this process


def cache_dir() -> Path:
    return Path(os.environ.get("HF_ALPHAADAM_CACHE", Path.home() / ".cache" / "hf_alphaadam"))


def _compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


def _cpu_key() -> str:
    """The CPU model and flags: -march=native code must not be reused on a different CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _fingerprint(path: Path | str) -> str:
    """``"<size> <sha256>"`` of a file: what the ``.sha256`` record next to a built library holds."""
    data = Path(path).read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _verified(library: Path) -> bool:
    """Whether the cached ``library`` is the file that was built: its size and SHA-256 match its record."""
    try:
        return _record_path(library).read_text().strip() == _fingerprint(library)
    except OSError:
        return False


def _build() -> Path:
    """The shared library for this source, compiler and CPU, compiling it if the cache does not hold a verified
    copy (a damaged or unrecorded one is rebuilt, with a warning)."""
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_key(),
                                    platform.platform()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"alphaadam_cpu_{key}.so"
    if target.is_file():
        if _verified(target):
            return target
        logger.warning("AlphaAdam: the cached native kernel %s does not match its build record (truncated, "
                       "replaced or written by an older version); rebuilding it", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile to a private name, record its checksum, then rename: concurrent processes (the ranks of one job)
    # never load a torn file, and a file that changes after the build no longer matches its record
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    record = f"{temporary}.sha256"
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", temporary, str(SOURCE), "-lm"], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build {SOURCE.name}:\n{result.stderr.strip()}")
        Path(record).write_text(_fingerprint(temporary))
        os.replace(record, _record_path(target))
        os.replace(temporary, target)
    finally:
        for path in (temporary, record):
            if os.path.exists(path):
                os.unlink(path)
    if not _verified(target):  # another process replaced the file or its record in between
        raise RuntimeError(f"{target} does not match its build record right after the build")
    logger.debug("built %s", target)
    return target


def _load() -> ctypes.CDLL:
    """The loaded kernel (built on first use); raises with the reason when it cannot be built or loaded."""
    global _LIBRARY, _ERROR
    if _LIBRARY is not None:
        return _LIBRARY
    with _LOCK:
        if _LIBRARY is None:
            if _ERROR is not None:
                raise RuntimeError(_ERROR)
            try:
                library = ctypes.CDLL(str(_build()))
                function = library.alphaadam_cpu_f32
                pointers = ctypes.POINTER(ctypes.c_void_p)
                function.argtypes = [ctypes.c_int64, pointers, pointers, pointers, pointers,
                                     ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double),
                                     ctypes.POINTER(ctypes.c_double), ctypes.POINTER(_Options),
                                     ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_float),
                                     ctypes.POINTER(ctypes.c_float)]
                function.restype = ctypes.c_int
                rule = library.alphaadam_rule_f32
                rule.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
                                 ctypes.POINTER(_Options), ctypes.POINTER(ctypes.c_float),
                                 ctypes.POINTER(ctypes.c_float)]
                rule.restype = ctypes.c_int
                tail = library.adapm_tail_f32
                tail.argtypes = [ctypes.c_int64, ctypes.POINTER(_Region), ctypes.c_int32]
                tail.restype = ctypes.c_int
                _LIBRARY = library
            except Exception as error:  # noqa: BLE001 - no compiler, a failed build, an unloadable library
                _ERROR = f"the native AlphaAdam kernel is unavailable: {type(error).__name__}: {error}"
                raise RuntimeError(_ERROR) from error
    return _LIBRARY


def enabled() -> bool:
    """``False`` when the environment turns the native kernel off (``HF_ALPHAADAM_NATIVE=0``)."""
    return os.environ.get("HF_ALPHAADAM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def available() -> bool:
    """Whether the native kernel can be used in this process (builds it on the first call; a failed build is
    logged once as a warning, and later calls answer ``False`` at once)."""
    if not enabled():
        return False
    if _LIBRARY is not None:
        return True
    first_failure = _ERROR is None
    try:
        _load()
    except RuntimeError as error:
        if first_failure:
            logger.warning("AlphaAdam: %s; using the other step paths. Set HF_ALPHAADAM_NATIVE=0 to skip the "
                           "attempt.", str(error).splitlines()[0])
        return False
    return True


def unavailable_reason() -> str | None:
    return _ERROR


def supports(*tensor_lists: list[Tensor]) -> bool:
    """Whether every tensor is a plain fp32 CPU tensor (the kernel's only dtype), outside ``torch.compile``."""
    if torch.compiler.is_compiling():
        return False
    return all(t is not None and t.device.type == "cpu" and t.dtype == torch.float32 and not t.is_sparse
               for tensors in tensor_lists for t in tensors)


def applies(*tensor_lists: list[Tensor]) -> bool:
    """Whether the native kernel serves a step over these tensors: turned on, every tensor a plain fp32 CPU
    tensor, and the kernel built here (the first call builds it)."""
    return enabled() and supports(*tensor_lists) and available()


def _pointers(tensors: list[Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _pointer(tensor: Tensor | None, kind: type):
    return None if tensor is None else ctypes.cast(tensor.data_ptr(), ctypes.POINTER(kind))


def _working_copies(*tensor_lists: list[Tensor]) -> list[list[Tensor]]:
    """The tensors themselves where contiguous, contiguous copies (written back by :func:`_write_back`) elsewhere."""
    return [[t if t.is_contiguous() else t.contiguous() for t in tensors] for tensors in tensor_lists]


def _tensor_arguments(tensors: list[list[Tensor]], whole_numels: list[int], state_steps: list[Tensor]) -> list:
    """The kernel's leading arguments: count, (p, g, m, v) pointer arrays, local and whole sizes, the steps."""
    n = len(tensors[0])
    return [n, *[_pointers(values) for values in tensors], (ctypes.c_int64 * n)(*[t.numel() for t in tensors[0]]),
            (ctypes.c_double * n)(*[float(x) for x in whole_numels]),
            (ctypes.c_double * n)(*[float(s) for s in state_steps])]


def _call(arguments: list, options: _Options, sums: Tensor | None, alpha: Tensor | None,
          decay: Tensor | None) -> None:
    status = _load().alphaadam_cpu_f32(*arguments, ctypes.byref(options), _pointer(sums, ctypes.c_double),
                                       _pointer(alpha, ctypes.c_float), _pointer(decay, ctypes.c_float))
    if status != 0:
        raise RuntimeError(f"the native AlphaAdam kernel failed (status {status})")


def _native_alphaadam(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
                      state_steps: Tensors, *, numels: list[int] | None = None,
                      reduce_sums: SumsReducer | None = None, **options: Any) -> list[StatisticsBucket]:
    """The native path; same arguments, in-place effects and return value as ``_multi_tensor_alphaadam``.

    Without ``reduce_sums`` one call does everything; with it (sharded tensors) one call computes the local
    sums, ``reduce_sums`` adds them over the shards, and a second call applies the update with the global alpha.
    """
    lr, beta1, beta2, eps, weight_decay, mask, alpha, alpha_max, first_step, maximize = AdamStep(**options)
    if not params:
        return []
    n = len(params)
    work = _working_copies(params, grads, exp_avgs, exp_avg_sqs)
    torch._foreach_add_(state_steps, 1)
    whole = numels if numels is not None else [t.numel() for t in params]
    lr_value = float(lr)
    options = _Options(lr=lr_value, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                       alpha_max=-1.0 if alpha_max is None else float(alpha_max), mask=MASKS[mask],
                       alpha=ALPHAS[alpha], first_step_full=int(first_step == "full"), maximize=int(maximize),
                       threads=torch.get_num_threads(), mode=STEP if reduce_sums is None else SUMS)
    arguments = _tensor_arguments(work, whole, state_steps)
    sums = torch.zeros(n, 3, dtype=torch.float64)
    alpha_values = torch.ones(n, dtype=torch.float32)
    _call(arguments, options, sums, alpha_values if reduce_sums is None else None, None)
    numel = torch.tensor(whole, dtype=torch.float32)
    sums = sums.to(torch.float32)
    if reduce_sums is not None:  # the step rules on the global sums, then the kernel applies them
        sums = reduce_sums(sums, list(range(n)))
        scale = step_scale(sums, numel, alpha, alpha_max)
        alpha_values = scale.alpha.to(torch.float32).contiguous()
        decay = (1 - (lr_value * weight_decay) * scale.moved).to(torch.float32).contiguous()
        options.mode = APPLY
        _call(arguments, options, None, alpha_values, decay)
    for originals, computed in zip((params, exp_avgs, exp_avg_sqs), (work[0], work[2], work[3])):
        copy_back(originals, computed)
    mask_ratio = sums[:, 2] / numel
    if alpha == "norm":
        alpha_values = reported_alpha(sums, alpha_values, alpha)
    return [(list(range(n)), alpha_values, mask_ratio)]


def step_rule(sums: Tensor, whole_numels: list[int], *, alpha: str, alpha_max: float | None, lr: float,
              weight_decay: float) -> tuple[Tensor, Tensor]:
    """The kernel's step rules on given sums ``[n, 3]``: ``(alpha [n], decay [n])`` as the kernel computes them
    (for the test that compares them with ``_masking.step_scale``)."""
    n = sums.shape[0]
    sums = sums.to(torch.float64).contiguous()
    options = _Options(lr=float(lr), weight_decay=weight_decay, alpha_max=-1.0 if alpha_max is None else
                       float(alpha_max), alpha=ALPHAS[alpha], mask=MASKS["async"])
    alpha_values = torch.empty(n, dtype=torch.float32)
    decay = torch.empty(n, dtype=torch.float32)
    whole = (ctypes.c_double * n)(*[float(x) for x in whole_numels])
    status = _load().alphaadam_rule_f32(n, _pointer(sums, ctypes.c_double), whole, ctypes.byref(options),
                                        _pointer(alpha_values, ctypes.c_float), _pointer(decay, ctypes.c_float))
    if status != 0:
        raise RuntimeError(f"the native step rule failed (status {status})")
    return alpha_values, decay


def momentum_free_adam(params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor],
                       state_steps: list[Tensor], *, lr: float | Tensor, beta2: float, eps: float, weight_decay: float,
                       maximize: bool) -> None:
    """AdaPM's blocks without momentum, in one pass: ``p = p (1 - lr wd) - lr g / (sqrt(v / bc2) + eps)`` with
    ``v`` Adam's EMA of ``g^2`` (the same arguments and effects as ``adapm._foreach_momentum_free``)."""
    if not params:
        return
    n = len(params)
    if len(grads) != n or len(exp_avg_sqs) != n:
        raise ValueError(f"momentum-free step: {n} params but {len(grads)} gradients and {len(exp_avg_sqs)} "
                         "exp_avg_sq: pass one of each per parameter")
    for index, (param, grad, exp_avg_sq) in enumerate(zip(params, grads, exp_avg_sqs)):
        if grad.shape != param.shape or exp_avg_sq.shape != param.shape:
            raise ValueError(f"momentum-free step: tensor {index} has shape {tuple(param.shape)} but its gradient "
                             f"{tuple(grad.shape)} and exp_avg_sq {tuple(exp_avg_sq.shape)}: they must be equal")
    p, g, v = _working_copies(params, grads, exp_avg_sqs)
    torch._foreach_add_(state_steps, 1)
    lr_value = float(lr)
    options = _Options(lr=lr_value, beta1=0.0, beta2=beta2, eps=eps, weight_decay=weight_decay, alpha_max=-1.0,
                       mask=MASKS["none"], alpha=ALPHAS["none"], first_step_full=1, maximize=int(maximize),
                       threads=torch.get_num_threads(), mode=APPLY, momentum_free=1)
    arguments = _tensor_arguments([p, g, p, v], [t.numel() for t in p], state_steps)  # m: unused, any pointer
    _call(arguments, options, None, torch.ones(n, dtype=torch.float32),
          torch.full((n,), 1 - lr_value * weight_decay, dtype=torch.float32))
    copy_back(params, p)
    copy_back(exp_avg_sqs, v)


def _runs(view: Tensor, run_axis: int) -> tuple[int, int, int] | None:
    """``(n_runs, run_len, run_stride)`` of a 2-D view whose ``run_axis`` is contiguous, else ``None``."""
    if view.dim() != 2 or view.stride(run_axis) != 1 and view.shape[run_axis] > 1:
        return None
    other = 1 - run_axis
    n_runs, run_len = view.shape[other], view.shape[run_axis]
    return n_runs, run_len, view.stride(other) if n_runs > 1 else run_len


def adapm_tail(parts: list[tuple[Tensor, Tensor, Tensor | None, Tensor, float]], *, decay: float, eps_scaled: float,
               beta2: float, denominators: list[Tensor] | None = None) -> bool:
    """AdaPM's element-wise tail without mask and alpha, for row segments of one tensor's canonical matrix:
    ``V = beta2 V + (1 - beta2) G^2;  P = P decay + coef used / (sqrt(V) + eps_scaled)`` per part
    ``(P, G, V, used, coef)`` (2-D views of one segment's rows, fp32 CPU). With ``denominators`` (a compact second
    moment: one ``[rows, 1]`` view of per-row denominators per part; ``G`` and ``V`` are then not used and may be
    ``None``): ``P = P decay + coef used / denominator``. Returns ``False``, touching nothing, when the views are
    not laid out as equally long contiguous runs (the caller then uses torch ops)."""
    regions = []
    for index, (P, G, V, used, coef) in enumerate(parts):
        run_axis = 1 if P.stride(1) == 1 or P.shape[1] == 1 else 0
        arrays = (P, used) if denominators is not None else (P, G, V, used)
        layouts = [_runs(t, run_axis) for t in arrays]
        if any(layout is None for layout in layouts) or len({layout[:2] for layout in layouts}) != 1:
            return False
        n_runs, run_len = layouts[0][:2]
        denom, denom_strides = None, (0, 0)
        if denominators is not None:
            rows_view = denominators[index]
            if rows_view.shape != (P.shape[0], 1):
                return False
            denom = rows_view.data_ptr()
            # per canonical row: along each run (runs down the rows) or one per run (runs along a row)
            denom_strides = (rows_view.stride(0), 0) if run_axis == 0 else (0, rows_view.stride(0))
            G = V = P  # not read
        strides = [layouts[0][2], layouts[0][2], layouts[0][2], layouts[-1][2]] if denominators is not None else \
            [layout[2] for layout in layouts]
        regions.append(_Region(P.data_ptr(), G.data_ptr(), V.data_ptr(), used.data_ptr(), *strides, n_runs,
                               run_len, coef, decay, eps_scaled, beta2, 1 - beta2, denom, *denom_strides))
    array = (_Region * len(regions))(*regions)
    status = _load().adapm_tail_f32(len(regions), array, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"the native AdaPM kernel failed (status {status})")
    return True
