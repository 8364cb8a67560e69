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

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

# (rows of the global batch this process holds, global batch size), set by the engine
# under data parallelism so that every process draws the noise of the whole batch.
_NOISE_SHARD: ContextVar[tuple[Tensor, int] | None] = ContextVar("noise_shard", default=None)


class StepTerms(NamedTuple):
    recon: Tensor   # (B,) -log p(x_t | z_t, h)
    kl: Tensor      # (B,) KL(q || p)
    z: Tensor       # (B, Z) the sample used
    recon_binned: Tensor | None = None   # (B,) -log P(bin of x_t), when a bin width is given


def gaussian_kl(q: Normal, p: Normal) -> Tensor:
    """KL(N(q.loc, q.scale) || N(p.loc, p.scale)) summed over non-batch dims -> (B,)."""
    var_ratio = (q.scale / p.scale).pow(2)
    t1 = ((q.loc - p.loc) / p.scale).pow(2)
    kl = 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    return kl.flatten(1).sum(1)


def log_likelihood(p_x: Distribution, x: Tensor) -> Tensor:
    """log p(x) summed over non-batch dims -> (B,)."""
    return p_x.log_prob(x).flatten(1).sum(1)


@contextlib.contextmanager
def noise_shard(rows: Tensor, global_batch: int) -> Iterator[None]:
    """Within this block, ``reparameterize`` draws global-batch noise and keeps ``rows``."""
    whole = len(rows) == global_batch and bool(torch.equal(rows.cpu(), torch.arange(global_batch)))
    token = _NOISE_SHARD.set(None if whole else (rows, global_batch))   # all rows in order: plain draws
    try:
        yield
    finally:
        _NOISE_SHARD.reset(token)


def standard_normal(like: Tensor) -> Tensor:
    """eps ~ N(0, I) shaped like ``like``. Under ``noise_shard``, the global batch's eps, sliced.

    A local batch of K * b rows (K particles stacked as k * b + i) maps to
    global rows k * B + rows[i]. A shard holding every row in order draws
    exactly what a plain ``randn_like`` draws, so it takes that shortcut.
    """
    shard = _NOISE_SHARD.get()
    if shard is None:
        return torch.randn_like(like)
    rows, global_batch = shard
    local = like.shape[0]
    particles = local // len(rows)
    index = (torch.arange(particles).unsqueeze(1) * global_batch + rows.unsqueeze(0)).reshape(-1)
    return torch.randn((particles * global_batch, *like.shape[1:]), dtype=like.dtype,
                       device=like.device)[index.to(like.device)]


def reparameterize(q_z: Normal) -> Tensor:
    """z = loc + scale * eps, eps from ``standard_normal`` (global-batch noise under ``noise_shard``)."""
    return q_z.loc + q_z.scale * standard_normal(q_z.loc)


def step_free_energy(model: Any, q_z: Normal, p_z: Normal, x: Tensor, state: Any,
                     bin_width: float | None = None) -> StepTerms:
    """F_t's terms for one sample z ~ q. With ``bin_width``, a Gaussian emission is
    also scored on quantization bins (``seqvi.likelihoods``: TIMIT's 16-bit samples)."""
    z = reparameterize(q_z)
    p_x = model.emission(z, state)
    recon = -log_likelihood(p_x, x)
    binned = None
    if bin_width is not None and isinstance(p_x, Normal):
        from seqvi.likelihoods import discretized_gaussian_log_prob

        binned = -discretized_gaussian_log_prob(p_x.loc, p_x.scale, x, bin_width).flatten(1).sum(1)
    return StepTerms(recon, gaussian_kl(q_z, p_z), z, binned)
