"""geometry.poincare.arccosh1p and cosh_dist_minus_1, the forms the clustering kernels use."""
import math

import pytest
import torch

from hyperseg.geometry.poincare import arccosh1p, cosh_dist_minus_1, dist


def test_arccosh1p_is_arccosh_of_one_plus_delta_and_its_sinh():
    delta = torch.tensor([0.0, 1e-300, 1e-12, 1e-3, 0.5, 3.0, 1e6], dtype=torch.float64)
    d, sh = arccosh1p(delta)
    for di, si, x in zip(d.tolist(), sh.tolist(), delta.tolist()):
        # math.acosh(1 + x) loses the digits of x < 1e-16; the series arccosh(1 + x) = sqrt(2x)(1 - x/12) does not
        ref = math.sqrt(2 * x) * (1 - x / 12) if x < 1e-6 else math.acosh(1 + x)
        assert di == pytest.approx(ref, rel=1e-12, abs=0)
        assert si == pytest.approx(math.sinh(ref), rel=1e-12, abs=0)


@pytest.mark.parametrize("c", [1.0, 2.5])
def test_cosh_dist_minus_1_gives_the_poincare_distance(c):
    g = torch.Generator().manual_seed(0)
    x = 0.6 * torch.rand(50, 3, generator=g, dtype=torch.float64) / math.sqrt(3 * c)
    y = 0.6 * torch.rand(50, 3, generator=g, dtype=torch.float64) / math.sqrt(3 * c)
    delta = cosh_dist_minus_1(x, y, c)
    # the paper's Eq. (1) argument, written out
    ref = 2 * c * ((x - y) ** 2).sum(-1) / ((1 - c * (x * x).sum(-1)) * (1 - c * (y * y).sum(-1)))
    torch.testing.assert_close(delta, ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(arccosh1p(delta)[0] / math.sqrt(c), dist(x, y, c), rtol=1e-12, atol=1e-15)
    assert (cosh_dist_minus_1(x, x, c) == 0).all()
