"""Per-step gradient refinement of q: measures the amortization gap.

At step t, start from the amortized answer lambda = (mu, log sigma^2) of any
inference procedure and run plain gradient descent on F_t(lambda), each step
no longer than 1 in parameter space (plain descent diverges on steep F_t)::

    lambda <- lambda - lr * min(1, 1 / (lr |g|)) * g,    g = grad_lambda F_t(lambda)   (``steps`` times)

(``seqvi.inference.iterative.iterate``, the loop AVF's iterations run too).
Each gradient averages ``samples`` fresh reparameterized samples; F_t before
and after is measured on one fixed set of ``samples`` draws (common random
numbers), so the drop F_t(amortized) - F_t(refined) >= 0 up to the
optimizer's own progress is what amortization leaves on the table at that
step (Cremer et al. 2018's amortization gap, per step). An example whose
refined F_t is not lower (divergence, NaN) keeps the amortized q. The
history (h_{t-1}) is the one the amortized filter produced: refinement is a
measurement, not another filter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import Normal

from seqvi.free_energy import free_energy_at, free_energy_gradient, map_state
from seqvi.inference.iterative import iterate

LOGVAR_RANGE = (-15.0, 5.0)


@torch.no_grad()
def refine(model: Any, q_z: Normal, p_z: Normal, x: torch.Tensor, state: Any, *, steps: int = 50,
           lr: float = 0.05, samples: int = 8, return_q: bool = False,
           generator: torch.Generator | None = None):
    """(F_t at the amortized q, F_t after refinement), each (B,), no gradients kept;
    with ``return_q`` also the refined q. Noise from ``generator`` (default: the global one), so that
    refining leaves the caller's own noise stream as it was."""
    state = map_state(lambda s: s.detach(), state)
    p_z = Normal(p_z.loc.detach(), p_z.scale.detach(), validate_args=False)
    loc, logvar = q_z.loc.detach(), (2 * q_z.scale.log()).detach()
    draw = lambda: torch.randn(samples, *loc.shape, device=loc.device, generator=generator)  # noqa: E731
    eps = draw()

    def gradient(k, loc, logvar):
        return free_energy_gradient(model, loc, logvar, p_z, x, state, draw())

    def descend(k, loc, logvar, g_loc, g_logvar):
        norm = torch.cat([g_loc, g_logvar], -1).norm(dim=-1, keepdim=True)
        step = lr * (1.0 / (lr * norm)).clamp(max=1.0)
        return loc - step * g_loc, (logvar - step * g_logvar).clamp(*LOGVAR_RANGE)

    before = free_energy_at(model, loc, logvar, p_z, x, state, eps)
    *_, last = iterate(loc, logvar, gradient, descend, steps)
    after = free_energy_at(model, last.loc, last.logvar, p_z, x, state, eps)
    worse = ~(after <= before)                # diverged (or NaN): that example keeps the amortized q
    after = torch.where(worse, before, after)
    if not return_q:
        return before, after
    loc = torch.where(worse.unsqueeze(-1), loc, last.loc)
    logvar = torch.where(worse.unsqueeze(-1), logvar, last.logvar)
    return before, after, Normal(loc, (0.5 * logvar).exp(), validate_args=False)
