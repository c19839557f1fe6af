"""The step rules are stated twice, in Python (``_masking.step_scale``) and in the C kernel (``rule_of``): fed the same
sums, both must give the same alpha and the same decision to move a tensor."""

import math

import pytest
import torch

from hf_alphaadam.optim import _native
from hf_alphaadam.optim._masking import step_scale, unmasked_step

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"no C compiler here: {_native.unavailable_reason()}")

# (sum u^2, sum (phi u)^2, sum phi) rows: a typical mask, an empty mask, a full mask, a zero masked norm with a
# non-empty mask, a huge ratio, tiny sums
SUMS = torch.tensor([[4.0, 1.0, 30.0], [2.0, 0.0, 0.0], [3.0, 3.0, 64.0], [5.0, 0.0, 7.0], [1e6, 1e-6, 1.0],
                     [1e-30, 1e-31, 2.0]], dtype=torch.float64)
NUMELS = [64, 64, 64, 10, 5, 3]


@pytest.mark.parametrize("alpha", ["norm", "count", "none"])
@pytest.mark.parametrize("alpha_max", [None, 2.5])
def test_native_rule_equals_python_rule(alpha, alpha_max):
    lr, weight_decay = 0.01, 0.1
    native_alpha, native_decay = _native.step_rule(SUMS, NUMELS, alpha=alpha, alpha_max=alpha_max, lr=lr,
                                                   weight_decay=weight_decay)
    scale = step_scale(SUMS.float(), torch.tensor(NUMELS, dtype=torch.float32), alpha, alpha_max)
    torch.testing.assert_close(native_alpha, scale.alpha, rtol=1e-6, atol=0)
    torch.testing.assert_close(native_decay, 1 - lr * weight_decay * scale.moved, rtol=1e-7, atol=0)
    assert native_alpha[1] == 1.0 and native_decay[1] == 1.0  # an empty mask: alpha 1, not moved
    if alpha_max is not None:
        assert float(native_alpha.max()) <= alpha_max


def test_rule_values_by_hand():
    scale = step_scale(SUMS[:3], torch.tensor(NUMELS[:3], dtype=torch.float64), "norm", None)
    assert scale.alpha.tolist() == [2.0, 1.0, 1.0]
    assert scale.mask_ratio.tolist() == [30 / 64, 0.0, 1.0]
    assert scale.moved.tolist() == [1.0, 0.0, 1.0]
    count = step_scale(SUMS[:1], torch.tensor([64.0], dtype=torch.float64), "count", None)
    assert count.alpha.item() == pytest.approx(64 / 31)
    nonfinite = step_scale(torch.tensor([[math.nan, 1.0, 3.0]]), torch.tensor([4.0]), "norm", None)
    assert math.isnan(nonfinite.reported.item())  # a non-finite update is reported as it is


def test_unmasked_step():
    assert unmasked_step("none", "masked", 5)
    assert unmasked_step("async", "full", 1) and not unmasked_step("async", "full", 2)
    assert not unmasked_step("sync", "masked", 1)
