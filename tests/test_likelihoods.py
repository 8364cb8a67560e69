"""The one discretized Gaussian (seqvi.likelihoods) against a direct numerical integration.

Both users go through it: TIMIT's 16-bit bins (no grid ends) and KTH's 8-bit grid on [0, 1]
(``DiscretizedNormal``: end bins take in the tails).
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from seqvi.likelihoods import discretized_gaussian_log_prob
from seqvi.models.discretized import DiscretizedNormal


def integrated(loc: float, scale: float, lo: float, hi: float) -> float:
    """log of the integral of N(loc, scale)'s density over [lo, hi] by adaptive quadrature (points near
    the mean so the peak is not missed); infinite ends through the tail functions."""
    pdf = lambda v: stats.norm.pdf(v, loc, scale)  # noqa: E731
    mass = 0.0
    if math.isinf(lo):
        lo_fin = min(hi, loc - 40 * scale)
        mass += stats.norm.cdf(lo_fin, loc, scale)
        lo = lo_fin
    if math.isinf(hi):
        hi_fin = max(lo, loc + 40 * scale)
        mass += stats.norm.sf(hi_fin, loc, scale)
        hi = hi_fin
    if hi > lo:
        points = [p for p in (loc - scale, loc, loc + scale) if lo < p < hi] or None
        value, _ = integrate.quad(pdf, lo, hi, points=points, epsabs=0.0, epsrel=1e-12, limit=200)
        mass += value
    return math.log(mass)


CASES = [  # (loc, scale, x, bin width, grid low, grid high)
    (0.1, 0.3, 0.2, 0.05, None, None),          # a bin near the mean
    (0.0, 1.0, 5.0, 0.5, None, None),           # the upper tail
    (0.0, 1.0, -7.0, 0.2, None, None),          # the lower tail
    (0.3, 0.05, 0.0, 1 / 255, 0.0, 1.0),        # first pixel value: (-inf, h]
    (0.3, 0.05, 1.0, 1 / 255, 0.0, 1.0),        # last pixel value: [1 - h, inf)
    (0.95, 0.02, 1.0, 1 / 255, 0.0, 1.0),       # last value, mean nearby
    (0.5, 0.2, 128 / 255, 1 / 255, 0.0, 1.0),   # an inner pixel value
    (0.0, 2.0, 0.0, 1e-4, None, None),          # narrow against the scale
]


@pytest.mark.parametrize("loc,scale,x,width,low,high", CASES)
def test_discretized_gaussian_equals_numerical_integration(loc, scale, x, width, low, high):
    got = discretized_gaussian_log_prob(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64),
                                        torch.tensor(x, dtype=torch.float64), width, low, high)
    lo = -math.inf if low is not None and x < low + width / 2 else x - width / 2
    hi = math.inf if high is not None and x > high - width / 2 else x + width / 2
    assert float(got) == pytest.approx(integrated(loc, scale, lo, hi), rel=1e-9, abs=1e-9)


def test_an_8_bit_grid_sums_to_one_in_float32_and_float64():
    grid = torch.arange(256) / 255
    for dtype in (torch.float32, torch.float64):
        for loc, scale in ((0.5, 0.1), (0.02, 0.004), (1.3, 0.3)):
            p = DiscretizedNormal(torch.tensor(loc, dtype=dtype), torch.tensor(scale, dtype=dtype)).log_prob(grid.to(dtype))
            assert p.dtype == dtype
            assert float(p.double().exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_gradients_are_finite_in_the_tails_and_at_the_ends():
    loc = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    scale = torch.tensor([1e-3, 0.05, 1e-3], requires_grad=True)
    log_p = DiscretizedNormal(loc, scale).log_prob(torch.tensor([1.0, 0.0, 0.9]))
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    assert np.all(log_p.detach().numpy() < 0)
