"""Latent overshooting (Hafner et al., PlaNet, ICML 2019, sec. 4): a multi-step KL for a world model.

The free energy trains the prior one step ahead only: KL(q(z_t | o_{<=t}) ||
p(z_t | h_t)), h_t folded from the POSTERIOR sample z_{t-1}. A planner rolls
the prior open loop for H steps, feeding back its own samples, which the
one-step KL never trains. Overshooting adds, for every step t, the KL to the
d-step open-loop prior for d = 1..D::

    p_d(z_t | s_{t-d}):  from the filter's belief after step t-d (the initial state for t-d = -1),
                         condition on the recorded u_{t-d+1..t}, each step z ~ p (reparameterized)
    KL_d(t)       = KL( q(z_t | o_{<=t}) || p_d(z_t | s_{t-d}) )                         (B, T)
    overshoot(t)  = mean over the available d = 1..min(D, t+1) of KL_d(t)
    loss          = F + weight * beta * sum_{b,t} mask * overshoot(t)

As in PlaNet, q is held fixed (detached) for d > 1, so the multi-step
priors are trained towards the informed posteriors and not the reverse. The
prior from the filter's own state is the one in F: for D = 1 the overshooting
term equals F's one-step KL, step for step (tests/test_overshooting.py).
Departures: PlaNet sums over d with weights beta_d / D; here each step
averages over the distances that exist for it, and one ``weight`` scales the
whole term (F keeps its own KL, so d = 1 counts 1 + weight / D times).

``filter_with_overshooting`` is the filtering pass (``seqvi.stacked``: the
sampling path, then every step scored at once) that also returns this term;
it needs a row-wise model (``SequentialModel.rowwise``: the RSSM). All
starts (B * T rows) roll forward together: D batched steps, not T * D.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torch.distributions import Normal

from seqvi import stacked
from seqvi.free_energy import gaussian_kl, map_state, reparameterize


class OvershootingPass(NamedTuple):
    """One filtering pass: F's terms (B, T) as ``seqvi.objectives.filter_sequence`` gives them, and the
    overshooting term (B, T); all zero on padding."""
    recon: Tensor
    kl: Tensor
    aux: Optional[Tensor]
    reward_nll: Optional[Tensor]
    overshoot: Tensor
    kl_groups: Optional[Tensor] = None   # (B, T, G) F's KL within G groups of z, when asked (free bits)


def overshooting_kl(model: Any, path: stacked.Path, x: Tensor, mask: Tensor, distance: int,
                    inputs: Optional[Tensor] = None) -> Tensor:
    """overshoot(t) (B, T), 0 on padding, from a sampling ``path`` over x (B, T, *X) (module docstring)."""
    B, T = mask.shape
    if distance < 1:
        raise ValueError(f"overshooting distance must be at least 1, got {distance}")
    # start k = 0 is the initial belief; start k >= 1 the belief after step k-1: rows b * T + k
    emitting = path.after_transit()
    after = [model.advance(emitting[t], x[:, t], path.zs[t]) for t in range(T - 1)]
    starts = [model.initial_state(B)] + after
    state = map_state(lambda *s: torch.stack(s, 1).flatten(0, 1), *starts)                # (B*T, ...)
    loc, scale = torch.stack(path.locs, 1), torch.stack(path.scales, 1)                     # (B, T, Z)
    total, count = mask.new_zeros(B, T), mask.new_zeros(B, T)
    for d in range(1, min(distance, T) + 1):
        shift = lambda v: torch.cat([v[:, d - 1:], v[:, :d - 1]], 1) if d > 1 else v      # noqa: E731  row k -> step k+d-1
        u = None if inputs is None else shift(inputs).flatten(0, 1)
        state = model.condition(state, u)
        p_z = model.prior(state)                                                            # p_d(z_{k+d-1} | start k)
        q_loc, q_scale = shift(loc).flatten(0, 1), shift(scale).flatten(0, 1)
        if d > 1:
            q_loc, q_scale = q_loc.detach(), q_scale.detach()
        kl = gaussian_kl(Normal(q_loc, q_scale, validate_args=False), p_z).view(B, T)      # indexed by start k
        valid = torch.zeros_like(mask)
        valid[:, :T - d + 1] = mask[:, d - 1:]                                              # target k+d-1 < T, real
        target = lambda v: torch.cat([v.new_zeros(B, d - 1), v[:, :T - d + 1]], 1)         # noqa: E731  start k -> step t
        total, count = total + target(kl * valid), count + target(valid)
        z = reparameterize(p_z)
        state = model.advance_imagined(model.transit(state, z), z)
    return total / count.clamp_min(1.0) * mask


def filter_with_overshooting(model: Any, inference: Any, x: Tensor, mask: Tensor, distance: int, *,
                             inputs: Optional[Tensor] = None, rewards: Optional[Tensor] = None,
                             kl_weight: float = 1.0, kl_groups: int = 0) -> OvershootingPass:
    """F's terms and the overshooting term of one filtering pass over x (B, T, *X)."""
    if not getattr(model, "rowwise", False):
        raise ValueError(f"latent overshooting needs a row-wise model (the RSSM); {type(model).__name__} is not")
    state = model.initial_state(x.shape[0])
    q_state = inference.initial_state(x.shape[0], x, mask, kl_weight=kl_weight)
    path = stacked.sample_path(model, inference, x, state, q_state, inputs)
    terms = stacked.score_path(model, path, x, mask, rewards=rewards, kl_groups=kl_groups)
    aux = torch.stack(path.aux, 1) * mask if path.aux else None
    overshoot = overshooting_kl(model, path, x, mask, distance, inputs)
    return OvershootingPass(terms.recon, terms.kl, aux, terms.reward_nll, overshoot, terms.kl_groups)
