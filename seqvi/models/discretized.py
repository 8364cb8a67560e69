"""A Gaussian integrated over the bins of a uniform grid on [0, 1] (e.g. 8-bit pixels).

For data on ``{0, 1/(K-1), ..., 1}`` (K = 256 for uint8 scaled by 1/255) each
value owns the bin ``[x - h, x + h]``, h = 1 / (2(K-1)), and the two end bins
extend to -inf and +inf::

    P(x) = Phi((x + h - loc) / scale) - Phi((x - h - loc) / scale)

so P(x) <= 1 and -log P is a proper code length in nats. This is how AVF
reports KTH (Marino et al. 2018: "Gaussian with learned log-variance,
discretized"), and it keeps a learned variance from collapsing on constant
pixels. For a bin narrow against ``scale``, -log P ~ -log N(x; loc, scale) - log(2h).

Computed in log space with ``log_ndtr``: a bin above the mean is measured in
the upper tail, so neither far tail underflows to log(0): log P = log Phi(a)
+ log(1 - Phi(b) / Phi(a)) with (a, b) = (upper, lower) or (-lower, -upper).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints


class DiscretizedNormal(Distribution):
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, bins: int = 256, validate_args: bool = False):
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.bins = bins
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        """The underlying Gaussian's mean (what video prediction shows)."""
        return self.loc

    def log_prob(self, x: Tensor) -> Tensor:
        half = 0.5 / (self.bins - 1)
        inv = 1.0 / self.scale
        upper = (x - self.loc + half) * inv
        lower = (x - self.loc - half) * inv
        # P = Phi(upper) - Phi(lower), or Phi(-lower) - Phi(-upper) for a bin above the mean; the end
        # bins keep only their first term. Two log_ndtr calls per value (they dominate the cost).
        first, last = x < half, x > 1 - half
        survival = last | ((lower > 0) & ~first)
        a = torch.special.log_ndtr(torch.where(survival, -lower, upper))
        b = torch.special.log_ndtr(torch.where(survival, -upper, lower))
        tail = torch.log(-torch.expm1((b - a).clamp(max=-1e-12)))
        return a + torch.where(first | last, torch.zeros_like(tail), tail)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            value = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, device=self.loc.device)
            steps = self.bins - 1
            return (value.clamp(0, 1) * steps).round() / steps
