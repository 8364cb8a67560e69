"""The per-step free energy F_t, shared by objectives and by iterative inference.

For one filtering step with approximate posterior q(z_t | .) = N(loc, scale)
and the model's prior p(z_t | h_{t-1}) and emission p(x_t | z_t, h_{t-1})::

    recon_t = -log p(x_t | z_t, h_{t-1}),   z_t ~ q  (reparameterized)     (B,)
    kl_t    = KL(q(z_t | .) || p(z_t | h_{t-1}))   (analytic, Gaussian)      (B,)
    F_t     = recon_t + kl_t                                                 (B,)

Log-densities and KLs are summed over every non-batch dimension. Lives below
both ``objectives`` and ``inference`` so neither imports the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor
from torch.distributions import Distribution, Normal


class StepTerms(NamedTuple):
    recon: Tensor   # (B,) -log p(x_t | z_t, h)
    kl: Tensor      # (B,) KL(q || p)
    z: Tensor       # (B, Z) the sample used


def gaussian_kl(q: Normal, p: Normal) -> Tensor:
    """KL(N(q.loc, q.scale) || N(p.loc, p.scale)) summed over non-batch dims -> (B,)."""
    var_ratio = (q.scale / p.scale).pow(2)
    t1 = ((q.loc - p.loc) / p.scale).pow(2)
    kl = 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    return kl.flatten(1).sum(1)


def log_likelihood(p_x: Distribution, x: Tensor) -> Tensor:
    """log p(x) summed over non-batch dims -> (B,)."""
    return p_x.log_prob(x).flatten(1).sum(1)


def step_free_energy(model: Any, q_z: Normal, p_z: Normal, x: Tensor, state: Any) -> StepTerms:
    z = q_z.rsample()
    recon = -log_likelihood(model.emission(z, state), x)
    return StepTerms(recon, gaussian_kl(q_z, p_z), z)
