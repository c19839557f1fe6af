"""The bad-state table, run by ``test_bad_state.py`` in a subprocess: each case must end with the expected Python
error, never a signal (heap corruption, an out-of-bounds read).

Run as ``python _bad_state_cases.py [CASE ...]``. Before each case it prints ``START <case>`` and flushes, after it
``PASS <case>`` or ``FAIL <case>: <why>``, so that the parent names the case a crash happened in.
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Callable

import torch

from hf_alphaadam import AdaDiag, AdaPM, AlphaAdam
from hf_alphaadam.optim import alphaadam as functional_alphaadam

CASES: dict[str, tuple[Callable[[], None], type[BaseException], str]] = {}


def case(name: str, error: type[BaseException], pattern: str):
    def register(function: Callable[[], None]) -> Callable[[], None]:
        CASES[name] = (function, error, pattern)
        return function
    return register


def stepped(optimizer_cls=AlphaAdam, rows: int = 80, dtype=torch.float32, steps: int = 2, **options):
    """A (weight, bias) model of ``rows`` x 16 stepped ``steps`` times: (params, optimizer)."""
    generator = torch.Generator().manual_seed(rows)
    weight = torch.nn.Parameter(torch.randn(rows, 16, generator=generator, dtype=dtype))
    bias = torch.nn.Parameter(torch.randn(16, generator=generator, dtype=dtype))
    named = [("layers.0.mlp.up_proj.weight", weight), ("layers.0.mlp.up_proj.bias", bias)]
    params = named if optimizer_cls is not AlphaAdam else [weight, bias]
    if optimizer_cls is AdaPM:
        options.setdefault("log_policy", False)
    optimizer = optimizer_cls(params, lr=1e-2, **options)
    for _ in range(steps):
        for p in (weight, bias):
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        optimizer.step()
    return [weight, bias], optimizer


def give_grads(params) -> None:
    for p in params:
        p.grad = torch.ones_like(p)


def saved(optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


# ------------------------------------------------------------------------------------ state before a kernel writes

@case("native: smaller moment set into the state", ValueError, r"exp_avg.*shape \(80, 16\), expected \(81, 16\)")
def _():
    params, optimizer = stepped(rows=81)
    optimizer.state[params[0]]["exp_avg"] = torch.zeros(80, 16)
    give_grads(params)
    optimizer.step()


@case("native: larger second moment set into the state", ValueError, r"exp_avg_sq.*shape \(82, 16\)")
def _():
    params, optimizer = stepped(rows=81)
    optimizer.state[params[0]]["exp_avg_sq"] = torch.zeros(82, 16)
    give_grads(params)
    optimizer.step()


@case("foreach: smaller moment", ValueError, r"exp_avg.*expected \(81, 16\)")
def _():
    params, optimizer = stepped(rows=81, foreach=True)
    optimizer.state[params[0]]["exp_avg"] = torch.zeros(80, 16)
    give_grads(params)
    optimizer.step()


@case("fused (compiled path): smaller moment, checked before any compilation", ValueError, r"expected \(81, 16\)")
def _():
    params, optimizer = stepped(rows=81, dtype=torch.float64, fused=True, steps=0)
    optimizer.state[params[0]].update(step=torch.tensor(0.0), exp_avg=torch.zeros(80, 16, dtype=torch.float64),
                                      exp_avg_sq=torch.zeros(81, 16, dtype=torch.float64))
    give_grads(params)
    optimizer.step()


@case("functional alphaadam(): moment on a list of the wrong length", ValueError,
      r"exp_avgs has 0 entries but params has 1")
def _():
    p = torch.zeros(4)
    functional_alphaadam([p], [p.clone()], [], [torch.zeros(4)], [torch.tensor(0.0)], lr=1e-3, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.0, mask="async", alpha="norm", alpha_max=None,
                         first_step="full", maximize=False)


@case("functional alphaadam(): integer moment", ValueError, r"dtype int64, expected a floating-point dtype")
def _():
    p = torch.zeros(4)
    functional_alphaadam([p], [p.clone()], [torch.zeros(4, dtype=torch.int64)], [torch.zeros(4)],
                         [torch.tensor(0.0)], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                         mask="async", alpha="norm", alpha_max=None, first_step="full", maximize=False)


@case("8-bit: codes truncated to one row", ValueError, r"exp_avg_codes.*shape \(1, 16\), expected \(512, 16\)")
def _():
    params, optimizer = stepped(rows=512, state_bits=8)
    state = optimizer.state[params[0]]
    state["exp_avg_codes"] = state["exp_avg_codes"][:1].clone()
    give_grads(params)
    optimizer.step()


@case("8-bit: truncated absmax", ValueError, r"exp_avg_sq_absmax.*shape \(3,\), expected \(32,\)")
def _():
    params, optimizer = stepped(rows=512, state_bits=8)
    state = optimizer.state[params[0]]
    state["exp_avg_sq_absmax"] = state["exp_avg_sq_absmax"][:3].clone()
    give_grads(params)
    optimizer.step()


@case("8-bit: codes of the wrong dtype", ValueError, r"exp_avg_codes.*dtype float32, expected uint8")
def _():
    params, optimizer = stepped(rows=512, state_bits=8)
    state = optimizer.state[params[0]]
    state["exp_avg_codes"] = state["exp_avg_codes"].float()
    give_grads(params)
    optimizer.step()


@case("bf16 kahan: compensation of another shape", ValueError, r"compensation.*shape \(8, 16\), expected \(81, 16\)")
def _():
    params, optimizer = stepped(rows=81, dtype=torch.bfloat16, bf16_update="kahan")
    optimizer.state[params[0]]["compensation"] = torch.zeros(8, 16, dtype=torch.bfloat16)
    give_grads(params)
    optimizer.step()


@case("AdaPM native momentum-free: smaller second moment", ValueError, r"exp_avg_sq.*shape \(80, 16\).*\(81, 16\)")
def _():
    params, optimizer = stepped(AdaPM, rows=81, policy="none")
    optimizer.state[params[0]]["exp_avg_sq"] = torch.zeros(80, 16)
    give_grads(params)
    optimizer.step()


@case("AdaPM low-rank: factor of another rank", ValueError, r"lowrank_left.*expected")
def _():
    params, optimizer = stepped(AdaPM, rows=81, policy="lowrank", rank=4)
    state = optimizer.state[params[0]]
    state["lowrank_left"] = torch.zeros(*state["lowrank_left"].shape[:-1], 3)
    give_grads(params)
    optimizer.step()


@case("AdaDiag: basis of another size", ValueError, r"basis_.*expected")
def _():
    params, optimizer = stepped(AdaDiag, rows=81)
    state = optimizer.state[params[0]]
    key = "basis_left" if "basis_left" in state else "basis_right"
    state[key] = torch.eye(state[key].shape[0] - 1)
    give_grads(params)
    optimizer.step()


# ------------------------------------------------------------------------------------------------- load_state_dict

@case("load: moments saved for 80 rows into 81", ValueError, r"exp_avg.*shape \(80, 16\), expected \(81, 16\)")
def _():
    _, source = stepped(rows=80)
    stepped(rows=81)[1].load_state_dict(saved(source))


@case("load: moments saved for 82 rows into 81", ValueError, r"shape \(82, 16\), expected \(81, 16\)")
def _():
    _, source = stepped(rows=82)
    stepped(rows=81)[1].load_state_dict(saved(source))


@case("load: 8-bit codes truncated", ValueError, r"exp_avg_codes.*shape \(1, 16\)")
def _():
    _, source = stepped(rows=512, state_bits=8)
    state = saved(source)
    state["state"][0]["exp_avg_codes"] = state["state"][0]["exp_avg_codes"][:1]
    stepped(rows=512, state_bits=8)[1].load_state_dict(state)


@case("load: step = -5", ValueError, r"'step'.*-5.0, expected a finite number >= 0")
def _():
    _, optimizer = stepped()
    state = saved(optimizer)
    state["state"][0]["step"] = torch.tensor(-5.0)
    optimizer.load_state_dict(state)


@case("load: negative exp_avg_sq", ValueError, r"exp_avg_sq.*negative values")
def _():
    _, optimizer = stepped()
    state = saved(optimizer)
    state["state"][0]["exp_avg_sq"] = -state["state"][0]["exp_avg_sq"] - 1
    optimizer.load_state_dict(state)


@case("load: NaN first moment", ValueError, r"exp_avg.*NaN or Inf")
def _():
    _, optimizer = stepped()
    state = saved(optimizer)
    state["state"][1]["exp_avg"][0] = float("nan")
    optimizer.load_state_dict(state)


@case("load: lr = -1", ValueError, r"option out of range: lr must be (a finite number )?>= 0, got -1")
def _():
    _, optimizer = stepped()
    state = saved(optimizer)
    state["param_groups"][0]["lr"] = -1.0
    optimizer.load_state_dict(state)


@case("load: betas = 0.9", ValueError, r"betas must be a pair")
def _():
    _, optimizer = stepped()
    state = saved(optimizer)
    state["param_groups"][0]["betas"] = 0.9
    optimizer.load_state_dict(state)


@case("load: AdaDiag state into AlphaAdam", ValueError, r"written by AdaDiag, but this optimizer is a AlphaAdam")
def _():
    _, source = stepped(AdaDiag)
    stepped()[1].load_state_dict(saved(source))


@case("load: AdaDiag state without the record into AlphaAdam", ValueError, r"unexpected keys \['basis_")
def _():
    _, source = stepped(AdaDiag)
    state = saved(source)
    for group in state["param_groups"]:
        del group["hf_alphaadam.optimizer"]
    stepped()[1].load_state_dict(state)


@case("load: AdaPM state into AlphaAdam", ValueError, r"written by AdaPM")
def _():
    _, source = stepped(AdaPM, policy="lowrank", rank=2)
    stepped()[1].load_state_dict(saved(source))


@case("load: AdaPM state without the record into AlphaAdam", ValueError, r"is not the state AlphaAdam keeps")
def _():
    _, source = stepped(AdaPM, policy="lowrank", rank=2)
    state = saved(source)
    for group in state["param_groups"]:
        del group["hf_alphaadam.optimizer"]
    stepped()[1].load_state_dict(state)


@case("load: not a state dict", ValueError, r"expects a dict with 'state' and 'param_groups'")
def _():
    stepped()[1].load_state_dict({"weights": 1})


# ----------------------------------------------------------------------------------------------- unclear errors

@case("constructor: betas=0.9", ValueError, r"betas must be a pair .*got 0.9")
def _():
    AlphaAdam([torch.nn.Parameter(torch.zeros(2))], betas=0.9)


@case("native path: a group's mask changed after construction", ValueError, r"mask must be one of .*'bogus'")
def _():
    params, optimizer = stepped()
    optimizer.param_groups[0]["mask"] = "bogus"
    give_grads(params)
    optimizer.step()


@case("AdaDiag: a group's mask changed after construction", ValueError, r"mask must be one of .*'bogus'")
def _():
    params, optimizer = stepped(AdaDiag)
    optimizer.param_groups[0]["mask"] = "bogus"
    give_grads(params)
    optimizer.step()


@case("AdaDiag: NaN gradient", ValueError, r"SVD .*NaN or Inf")
def _():
    params, optimizer = stepped(AdaDiag, steps=0)
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    optimizer.step()


def main(names: list[str]) -> int:
    failures = 0
    for name in names or list(CASES):
        function, error, pattern = CASES[name]
        print(f"START {name}", flush=True)
        try:
            function()
        except error as raised:
            if re.search(pattern, str(raised)):
                print(f"PASS {name}", flush=True)
                continue
            why = f"{type(raised).__name__} {str(raised)[:400]!r} does not match {pattern!r}"
        except BaseException as raised:  # noqa: BLE001 - reported per case
            why = f"{type(raised).__name__}: {str(raised)[:400]}, expected {error.__name__}"
        else:
            why = f"no error, expected {error.__name__}"
        failures += 1
        print(f"FAIL {name}: {why}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
