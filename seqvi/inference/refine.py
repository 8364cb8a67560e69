"""Per-step gradient refinement of q: measures the amortization gap.

At step t, start from the amortized answer lambda = (mu, log sigma^2) of any
inference procedure and run plain gradient descent on F_t(lambda)::

    lambda <- lambda - lr * grad_lambda F_t(lambda)        (``steps`` times)

F_t is estimated with ``samples`` reparameterized samples per example, the
same noise before and after (common random numbers), so the drop
F_t(amortized) - F_t(refined) >= 0 up to the optimizer's own progress is
what amortization leaves on the table at that step (Cremer et al. 2018's
amortization gap, per step). The history (h_{t-1}) is the one the amortized
filter produced: refinement is a measurement, not another filter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Normal

from seqvi.free_energy import gaussian_kl, log_likelihood


def _free_energy(model: Any, loc: Tensor, logvar: Tensor, p_z: Normal, x: Tensor, state: Any,
                 eps: Tensor) -> Tensor:
    """F_t averaged over the fixed noise eps (S, B, Z) -> (B,)."""
    scale = (0.5 * logvar).exp()
    z = loc.unsqueeze(0) + scale.unsqueeze(0) * eps                       # (S, B, Z)
    S, B = eps.shape[:2]
    rep = lambda s: s.unsqueeze(0).expand(S, *s.shape).reshape(S * B, *s.shape[1:])  # noqa: E731
    state_s = type(state)(*[rep(s) for s in state]) if hasattr(state, "_fields") else type(state)(rep(s) for s in state)
    recon = -log_likelihood(model.emission(z.reshape(S * B, -1), state_s), rep(x)).view(S, B).mean(0)
    return recon + gaussian_kl(Normal(loc, scale, validate_args=False), p_z)


def refine(model: Any, q_z: Normal, p_z: Normal, x: Tensor, state: Any, *, steps: int = 50,
           lr: float = 0.05, samples: int = 8, return_q: bool = False):
    """(F_t at the amortized q, F_t after refinement), each (B,), no gradients kept;
    with ``return_q`` also the refined q."""
    state = type(state)(*[s.detach() for s in state]) if hasattr(state, "_fields") else state
    p_z = Normal(p_z.loc.detach(), p_z.scale.detach(), validate_args=False)
    loc = q_z.loc.detach().clone().requires_grad_(True)
    logvar = (2 * q_z.scale.log()).detach().clone().requires_grad_(True)
    eps = torch.randn(samples, *loc.shape, device=loc.device)
    with torch.enable_grad():
        before = _free_energy(model, loc, logvar, p_z, x, state, eps).detach()
        start_loc, start_logvar = loc.detach().clone(), logvar.detach().clone()
        for _ in range(steps):
            f = _free_energy(model, loc, logvar, p_z, x, state, torch.randn_like(eps)).sum()
            g_loc, g_logvar = torch.autograd.grad(f, (loc, logvar))  # only lambda; theta untouched
            with torch.no_grad():
                # per-example step no longer than 1 in parameter space: plain GD diverges on steep F_t
                norm = torch.cat([g_loc, g_logvar], -1).norm(dim=-1, keepdim=True)
                scale = (1.0 / (lr * norm)).clamp(max=1.0)
                loc -= lr * scale * g_loc
                logvar -= lr * scale * g_logvar
                logvar.clamp_(-15.0, 5.0)
        with torch.no_grad():
            after = _free_energy(model, loc, logvar, p_z, x, state, eps)
            worse = ~(after <= before)              # diverged (or NaN): that example keeps the amortized q
            after = torch.where(worse, before, after)
            loc = torch.where(worse.unsqueeze(-1), start_loc, loc)
            logvar = torch.where(worse.unsqueeze(-1), start_logvar, logvar)
    if return_q:
        return before, after, Normal(loc.detach(), (0.5 * logvar.detach()).exp(), validate_args=False)
    return before, after
