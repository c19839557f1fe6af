"""The scalars of one Adam step, as every path of the package receives them.

A functional entry point (``alphaadam``, ``adapm``, ``adadiag``) takes them as keywords and passes them on as
``**options``; each path reads them once into :class:`AdamStep` (unknown or missing names are a TypeError there),
so the list is written here and not again in every path's signature.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class AdamStep(NamedTuple):
    """AdamW's hyper-parameters and the mask / alpha rules (``_masking.py``) of one step."""

    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    mask: str
    alpha: str
    alpha_max: float | None
    first_step: str
    maximize: bool


Tensors = list[Tensor]
OptionalTensors = list["Tensor | None"]
