"""Compact optimizer state and low-precision parameter updates.

Two independent features, both used by :class:`~hf_alphaadam.AlphaAdam` outside its functional core (the core
always sees fp32 moments and, where asked, an fp32 copy of the parameter):

**8-bit moments** (``state_bits=8``), as in bitsandbytes' blockwise 8-bit optimizers (Dettmers et al., "8-bit
Optimizers via Block-wise Quantization", arXiv 2110.02861): each moment is stored as ``uint8`` codes into a
fixed 256-entry map plus one fp32 ``absmax`` per block of :data:`BLOCKSIZE` = 256 elements. ``exp_avg`` uses the
signed dynamic map, ``exp_avg_sq`` the unsigned one (``bitsandbytes.functional.create_dynamic_map``). Before a
step the two moments of one tensor are dequantized to fp32, the step runs in fp32, and they are requantized, one
tensor at a time, so the transient memory is one tensor's fp32 moments. State keys per quantized tensor::

    exp_avg_codes      uint8, the parameter's shape      exp_avg_absmax     fp32, [ceil(numel / 256)]
    exp_avg_sq_codes   uint8, the parameter's shape      exp_avg_sq_absmax  fp32, [ceil(numel / 256)]

The maps are constants rebuilt from bitsandbytes (not stored), so the state holds plain tensors only and
``torch.load(weights_only=True)`` reads it. Memory: ``2 * numel + 8 * ceil(numel / 256)`` bytes per tensor
(:func:`quantized_state_bytes`) against ``8 * numel`` for fp32 moments.

Only a quantizer's sign matters to the asynchronous mask ``1(m_{t-1} g_t > 0)``; the dynamic map keeps the sign of
every value it resolves. (bitsandbytes' CPU kernel 0.50 resolves magnitudes only down to about 2e-5 of the block's
absmax and maps smaller values, zero included, to +2.1e-5 * absmax: a coordinate whose momentum is that tiny
relative to its block may see a flipped sign. Its step is equally tiny, so the effect is on the mask ratio, not on
the parameters.)

**bf16 / fp16 parameter updates** (``bf16_update``): a bf16 parameter has 8 significant bits, so an update
smaller than half a unit in the last place (``|p| * 2^-9``) is rounded away; with a small learning rate most of
training is lost this way. The update is computed in fp32 from an fp32 copy of the parameter and written back:

- ``"plain"``: round to nearest (what ``param.copy_(fp32)`` does).
- ``"kahan"``: Kahan-compensated summation. A buffer ``c`` (state key ``compensation``) in the parameter's own
  dtype holds the rounding error of the last write, and ``param + c`` is the value the update is applied to::

      p32 = param + c;   p32 = update(p32);   param = round(p32);   c = round(p32 - param)

  ``param + c`` carries about 16 significant bits, so updates down to ~2^-17 relative accumulate. The buffer
  is kept in the parameter's dtype as optimi does (2 bytes per parameter; an fp32 buffer would cost as much as
  fp32 master weights, which is then the better choice).
- ``"stochastic"``: round the fp32 result up or down at random with probability proportional to the distance,
  so the rounding is unbiased and small updates accumulate in expectation; no extra memory. The random bits are
  a pure function of ``(rounding_key, step)``: ``rounding_key`` is a per-tensor int64 state tensor fixed when the
  state is created (from the param group index and position), and ``step`` is the tensor's step count, so there
  is no generator state to save, a resumed run draws the same bits as an uninterrupted one, the reference loop
  and the foreach path draw the same bits, and data-parallel replicas (which see the same gradients) round the
  same way and stay identical.

fp32 / fp64 parameters are not affected by ``bf16_update`` (they are written back exactly).
"""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache

import torch
from torch import Tensor

from ._schemas import PRECISION

BLOCKSIZE = 256
MIN_8BIT_SIZE = PRECISION["min_8bit_size"].default
# parameter names recognised as embeddings (kept in 32-bit state by default, as the HF Trainer does for
# bitsandbytes' 8-bit optimizers with every nn.Embedding): embed_tokens, word_embeddings, position_embeddings,
# embed_positions, GPT-2's wte / wpe, ...
EMBEDDING_PATTERN = re.compile(r"embed|(^|\.)(wte|wpe)(\.|$)", re.IGNORECASE)
QUANTIZED_KEYS = ("exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes", "exp_avg_sq_absmax")
# the moments that may be stored in 8 bits (where the optimizer keeps them shaped like the parameter)
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# 8-bit state


def require_bitsandbytes():
    """Import ``bitsandbytes.functional`` or raise an ImportError that says how to install it."""
    try:
        import bitsandbytes.functional as functional
    except ImportError as error:
        raise ImportError(
            "state_bits=8 stores the optimizer moments with bitsandbytes' blockwise 8-bit quantization, but "
            "bitsandbytes could not be imported. Install it with `pip install hf-alphaadam[bnb]` (or "
            f"`pip install bitsandbytes`). Original error: {error}") from error
    return functional


@lru_cache(maxsize=None)
def _maps_on_cpu() -> tuple[Tensor, Tensor]:
    functional = require_bitsandbytes()
    return functional.create_dynamic_map(signed=True), functional.create_dynamic_map(signed=False)


_MAPS: dict[torch.device, tuple[Tensor, Tensor]] = {}


def quantization_map(device: torch.device, signed: bool) -> Tensor:
    """bitsandbytes' dynamic map (signed for the first moment, unsigned for the second) on ``device``."""
    device = torch.device(device)
    if device not in _MAPS:
        _MAPS[device] = tuple(m.to(device) for m in _maps_on_cpu())
    return _MAPS[device][0 if signed else 1]


def is_embedding_name(name: str | None) -> bool:
    return name is not None and EMBEDDING_PATTERN.search(str(name)) is not None


def quantize_tensor(numel: int | Tensor, name: str | None, min_8bit_size: int, quantize_embeddings: bool) -> bool:
    """Whether a tensor (of ``numel`` elements: the whole tensor's, so that every rank decides alike) gets 8-bit
    moments: at least ``min_8bit_size`` elements and, unless ``quantize_embeddings``, a name not recognised as an
    embedding."""
    if (numel.numel() if isinstance(numel, Tensor) else numel) < min_8bit_size:
        return False
    return quantize_embeddings or not is_embedding_name(name)


def num_blocks(numel: int) -> int:
    return -(-numel // BLOCKSIZE)


def init_quantized_state(state: dict, param: Tensor, keys: tuple[str, ...] = MOMENT_KEYS) -> None:
    """Zero moments ``keys`` in 8-bit form: codes of the map's zero and zero absmax (dequantizes to exactly 0)."""
    blocks = num_blocks(param.numel())
    for key in keys:
        signed = key == "exp_avg"
        zero_code = int(torch.argmin(quantization_map("cpu", signed).abs()))
        state[f"{key}_codes"] = torch.full(param.shape, zero_code, dtype=torch.uint8, device=param.device)
        state[f"{key}_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=param.device)


def quantized_keys(state: dict) -> list[str]:
    """The moments of ``state`` that are stored in 8 bits."""
    return [key for key in MOMENT_KEYS if f"{key}_codes" in state]


def is_quantized(state: dict) -> bool:
    return any(f"{key}_codes" in state for key in MOMENT_KEYS)


def dequantize_moment(state: dict, key: str) -> Tensor:
    """The fp32 value of moment ``key`` (``"exp_avg"`` or ``"exp_avg_sq"``) of a quantized state.

    bitsandbytes trusts the sizes it is given: callers check the state first with
    ``_validation.check_quantized_moments`` (the step and the ``state_bits`` conversion on load do)."""
    functional = require_bitsandbytes()
    codes, absmax = state[f"{key}_codes"], state[f"{key}_absmax"]
    return functional.dequantize_blockwise(codes, absmax=absmax,
                                           code=quantization_map(codes.device, key == "exp_avg"),
                                           blocksize=BLOCKSIZE)


def quantize_moment_(state: dict, key: str, value: Tensor) -> None:
    """Store the fp32 ``value`` into the codes / absmax of moment ``key`` in place."""
    functional = require_bitsandbytes()
    codes, absmax = state[f"{key}_codes"], state[f"{key}_absmax"]
    new_codes, quant_state = functional.quantize_blockwise(
        value.float(), code=quantization_map(codes.device, key == "exp_avg"), blocksize=BLOCKSIZE)
    codes.copy_(new_codes.view(codes.shape))
    absmax.copy_(quant_state.absmax)


def quantized(value: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """New ``(codes, absmax)`` of the fp32 ``value`` (codes shaped like it): a moment converted to 8 bits."""
    functional = require_bitsandbytes()
    codes, quant_state = functional.quantize_blockwise(
        value.float().contiguous(), code=quantization_map(value.device, signed), blocksize=BLOCKSIZE)
    return codes.view(value.shape), quant_state.absmax.float().contiguous()


def quantized_state_bytes(numel: int) -> int:
    """Bytes of the two quantized moments of a tensor: uint8 codes plus an fp32 absmax per 256-element block."""
    return 2 * numel + 2 * 4 * num_blocks(numel)


# ---------------------------------------------------------------------------------------------------------
# bf16 / fp16 parameter updates


def is_low_precision(param: Tensor) -> bool:
    return param.dtype in _LOW_PRECISION


def rounding_key(group_index: int, position: int) -> Tensor:
    """A per-tensor key for the stochastic-rounding stream (kept in state as an int64 CPU tensor)."""
    return torch.tensor(_mix(group_index * 1_000_003 + position + 1), dtype=torch.int64)


def _mix(value: int) -> int:
    """splitmix64 finaliser, to a non-negative 63-bit int (a generator seed)."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (value ^ (value >> 31)) & 0x7FFFFFFFFFFFFFFF


def rounding_seed(key: Tensor | int, step: float) -> int:
    """The generator seed of one tensor's rounding at one step."""
    return _mix(int(key) ^ _mix(int(step)))


def master_copy(param: Tensor, compensation: Tensor | None) -> Tensor:
    """The fp32 value the update is applied to: ``param`` (+ the Kahan compensation)."""
    master = param.float()
    if compensation is not None:
        master.add_(compensation)
    return master


def stochastic_round(value: Tensor, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """Round fp32 ``value`` to ``dtype`` (bf16 or fp16), up or down with probability given by the distance.

    bf16: add 16 uniform random bits below the kept mantissa of the fp32 pattern and truncate (the rounding acts
    on the magnitude, so it is unbiased for either sign). fp16: choose between the two neighbours explicitly.
    """
    value = value.float()
    if dtype == torch.bfloat16:
        noise = torch.randint(0, 1 << 16, value.shape, dtype=torch.int32, device=value.device, generator=generator)
        bits = value.view(torch.int32) + noise
        bits.bitwise_and_(-65536)  # 0xFFFF0000: keep sign, exponent and the 7 stored mantissa bits
        return bits.view(torch.float32).to(torch.bfloat16)
    if dtype == torch.float16:
        uniform = torch.rand(value.shape, device=value.device, generator=generator)
        nearest = value.to(torch.float16)
        nearest32 = nearest.float()
        toward = torch.where(value > nearest32, torch.full_like(nearest, math.inf), torch.full_like(nearest, -math.inf))
        other = torch.nextafter(nearest, toward)
        other32 = other.float()
        gap = (other32 - nearest32).abs()
        # probability of the other neighbour = distance to the nearest / gap (<= 1/2)
        take_other = uniform * gap < (value - nearest32).abs()
        return torch.where(take_other & torch.isfinite(other32), other, nearest)
    raise ValueError(f"stochastic rounding is defined for bf16 / fp16, got {dtype}")


def write_back_(param: Tensor, master: Tensor, mode: str, compensation: Tensor | None = None,
                generator: torch.Generator | None = None) -> None:
    """Write the updated fp32 ``master`` into the low-precision ``param`` (see the module docstring)."""
    if mode == "stochastic":
        param.copy_(stochastic_round(master, param.dtype, generator))
        return
    param.copy_(master)
    if mode == "kahan" and compensation is not None:
        compensation.copy_(master.sub_(param))


def note_unaffected_params(optimizer, group: dict, params: list[Tensor]) -> None:
    """Log once per optimizer and group when ``bf16_update`` is set but the group has no bf16 / fp16 tensor
    (fp32 parameters are written back exactly; the option then does nothing)."""
    noted = optimizer.__dict__.setdefault("_bf16_update_noted", set())
    if id(group) in noted:
        return
    noted.add(id(group))
    if not any(is_low_precision(p) for p in params):
        logger.info("bf16_update=%r has no effect on param group %r: none of its parameters is bf16 / fp16 "
                    "(fp32 parameters are updated exactly)", group["bf16_update"], group.get("name"))
