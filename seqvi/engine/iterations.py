"""AVF's per-iteration curve: the free energy at each inference iterate (Marino et al. 2018, Fig. 4).

For every step of every sequence of a split, starting from the prior
lambda^0 = (mu_p, log sigma_p^2), the iterative inference model is applied
K times exactly as in filtering (one reparameterized sample for each
gradient input), and F_t(lambda^k) is measured for k = 0..K with the same
``samples`` noise draws for every k (common random numbers), so the curve's
differences are the iterations' and not the noise's. The filter advances
with a sample from the final iterate, as AVF's own filtering does.

Returns the mean F_t per real step at each iteration (nats/step).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.distributions import Normal

from seqvi.data.batches import whole_batches
from seqvi.data.store import SplitData
from seqvi.free_energy import gaussian_kl, log_likelihood, reparameterize


def _free_energy(model: Any, loc, logvar, p_z: Normal, x, state, eps) -> torch.Tensor:
    """F_t averaged over fixed noise eps (S, B, Z) -> (B,)."""
    scale = (0.5 * logvar).exp()
    S, B = eps.shape[:2]
    z = (loc.unsqueeze(0) + scale.unsqueeze(0) * eps).reshape(S * B, -1)
    rep = lambda s: s.unsqueeze(0).expand(S, *s.shape).reshape(S * B, *s.shape[1:])  # noqa: E731
    state_s = type(state)(*[rep(s) for s in state]) if hasattr(state, "_fields") else type(state)(rep(s) for s in state)
    recon = -log_likelihood(model.emission(z, state_s), rep(x)).view(S, B).mean(0)
    return recon + gaussian_kl(Normal(loc, scale, validate_args=False), p_z)


@torch.no_grad()
def iteration_curve(model: Any, avf: Any, split: SplitData, *, iterations: int, batch_size: int,
                    device: torch.device, seed: int = 0, samples: int = 4) -> np.ndarray:
    """Mean F_t per real step at iterates 0..K, shape (K + 1,)."""
    model.eval()
    avf.eval()
    sums = np.zeros(iterations + 1)
    steps = 0.0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _, x, mask in whole_batches(split, batch_size):
            x, mask = x.to(device), mask.to(device)
            state = model.initial_state(x.shape[0])
            for t in range(x.shape[1]):
                x_t, m_t = x[:, t], mask[:, t]
                p_z = model.prior(state)
                loc, logvar = p_z.loc, 2 * p_z.scale.log()
                eps = torch.randn(samples, *loc.shape, device=device)
                for k in range(iterations + 1):
                    sums[k] += float((_free_energy(model, loc, logvar, p_z, x_t, state, eps) * m_t).sum())
                    if k == iterations:
                        break
                    with torch.enable_grad():
                        loc_g, logvar_g = loc.detach().requires_grad_(True), logvar.detach().requires_grad_(True)
                        single = _free_energy(model, loc_g, logvar_g, p_z, x_t, state,
                                              torch.randn(1, *loc.shape, device=device))
                        g_loc, g_logvar = torch.autograd.grad(single.sum(), (loc_g, logvar_g))
                    loc, logvar = avf._update(loc, logvar, g_loc, g_logvar)
                steps += float(m_t.sum())
                z = reparameterize(Normal(loc, (0.5 * logvar).exp(), validate_args=False))
                state = model.advance(state, x_t, z)
    return sums / max(steps, 1.0)
