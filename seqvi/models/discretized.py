"""A Gaussian integrated over the bins of a uniform grid on [0, 1] (e.g. 8-bit pixels), as a Distribution.

For data on ``{0, 1/(K-1), ..., 1}`` (K = 256 for uint8 scaled by 1/255) each
value owns the bin ``[x - h, x + h]``, h = 1 / (2(K-1)), and the two end bins
extend to -inf and +inf, so P(x) <= 1 and -log P is a proper code length in
nats. This is how AVF reports KTH (Marino et al. 2018: "Gaussian with learned
log-variance, discretized"), and it keeps a learned variance from collapsing
on constant pixels. The probability itself is ``seqvi.likelihoods``' one
discretized Gaussian (float64, log space).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from seqvi.likelihoods import discretized_gaussian_log_prob


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
        return discretized_gaussian_log_prob(self.loc, self.scale, x, 1.0 / (self.bins - 1), low=0.0, high=1.0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            value = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, device=self.loc.device)
            steps = self.bins - 1
            return (value.clamp(0, 1) * steps).round() / steps
