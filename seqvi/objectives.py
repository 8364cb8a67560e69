"""Objectives over whole sequences: the filtering pass and the masked free energy.

For x of shape (B, T, *X) with mask (B, T), the filtering pass runs the model's
step contract left to right::

    p_z = prior(h_{t-1});  q_z = inference.posterior(model, x_t, h_{t-1}, p_z)
    recon_t, kl_t, z_t = F_t terms (seqvi.free_energy);  h_t = advance(h_{t-1}, x_t, z_t)

and returns the per-step terms (B, T). Padding is at the end of each
sequence, so padded steps only need masking out of the sums.

Training loss (nats per time step, optionally KL-annealed with weight beta)::

    L = sum_{b,t} mask * (recon + beta * kl) / sum_{b,t} mask

Reported figures follow the literature: total free energy over a split
divided by its number of time steps (nats/step) and by its number of
sequences (nats/sequence). Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from seqvi.free_energy import step_free_energy


@dataclass
class SequenceTerms:
    recon: Tensor   # (B, T)
    kl: Tensor      # (B, T)
    mask: Tensor    # (B, T)
    aux: Tensor | None = None   # (B, T) q-only loss (AVF's earlier iterations), if any

    @property
    def free_energy(self) -> Tensor:
        return self.recon + self.kl  # (B, T)


def filter_sequence(model: Any, inference: Any, x: Tensor, mask: Tensor) -> SequenceTerms:
    """One filtering pass with one reparameterized sample per step."""
    batch, steps = mask.shape
    state = model.initial_state(batch)
    q_state = inference.initial_state(batch, x)
    recon, kl, aux = [], [], []
    for t in range(steps):
        x_t = x[:, t]
        p_z = model.prior(state)
        q = inference.posterior(model, x_t, state, p_z, q_state)
        terms = step_free_energy(model, q.q_z, p_z, x_t, state)
        recon.append(terms.recon)
        kl.append(terms.kl)
        if q.aux is not None:
            aux.append(q.aux)
        state, q_state = model.advance(state, x_t, terms.z), q.q_state
    return SequenceTerms(torch.stack(recon, 1) * mask, torch.stack(kl, 1) * mask, mask,
                         torch.stack(aux, 1) * mask if aux else None)


def training_loss(terms: SequenceTerms, kl_weight: float = 1.0) -> Tensor:
    """Masked mean over real steps of recon + beta * kl (nats per step)."""
    total = (terms.recon + kl_weight * terms.kl).sum()
    return total / terms.mask.sum().clamp_min(1.0)


def kl_weight(epoch: int, step_in_epoch: int, steps_per_epoch: int, anneal_epochs: int,
              start: float = 0.0) -> float:
    """Linear KL annealing from ``start`` to 1 over ``anneal_epochs`` epochs (0 = off)."""
    if anneal_epochs <= 0:
        return 1.0
    progress = (epoch + step_in_epoch / max(steps_per_epoch, 1)) / anneal_epochs
    return float(min(1.0, start + (1.0 - start) * progress))
