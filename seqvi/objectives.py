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
from typing import Any, Callable

import torch
from torch import Tensor

from seqvi.free_energy import log_likelihood, reparameterize, step_free_energy


@dataclass
class SequenceTerms:
    recon: Tensor   # (B, T)
    kl: Tensor      # (B, T)
    mask: Tensor    # (B, T)
    aux: Tensor | None = None   # (B, T) q-only loss (AVF's earlier iterations), if any
    gap: Tensor | None = None   # (B, T) F_t drop under per-step refinement, if measured
    recon_binned: Tensor | None = None   # (B, T) -log P(bin of x_t), with a bin width

    @property
    def free_energy(self) -> Tensor:
        return self.recon + self.kl  # (B, T)


def filter_sequence(model: Any, inference: Any, x: Tensor, mask: Tensor,
                    refine: Callable | None = None, bin_width: float | None = None) -> SequenceTerms:
    """One filtering pass with one reparameterized sample per step.

    ``refine(model, q_z, p_z, x_t, state) -> (F_before, F_after)`` (see
    ``seqvi.inference.refine``), when given, measures the amortization gap at
    every step without changing the filter's own trajectory. ``bin_width``
    also scores each frame on quantization bins (discretized likelihood).
    """
    batch, steps = mask.shape
    state = model.initial_state(batch)
    q_state = inference.initial_state(batch, x, mask)
    recon, kl, aux, gap, binned = [], [], [], [], []
    for t in range(steps):
        x_t = x[:, t]
        p_z = model.prior(state)
        q = inference.posterior(model, x_t, state, p_z, q_state)
        terms = step_free_energy(model, q.q_z, p_z, x_t, state, bin_width)
        recon.append(terms.recon)
        if terms.recon_binned is not None:
            binned.append(terms.recon_binned)
        kl.append(terms.kl)
        if q.aux is not None:
            aux.append(q.aux)
        if refine is not None:
            before, after = refine(model, q.q_z, p_z, x_t, state)
            gap.append(before - after)
        state, q_state = model.advance(state, x_t, terms.z), q.q_state
    return SequenceTerms(torch.stack(recon, 1) * mask, torch.stack(kl, 1) * mask, mask,
                         torch.stack(aux, 1) * mask if aux else None,
                         torch.stack(gap, 1) * mask if gap else None,
                         torch.stack(binned, 1) * mask if binned else None)


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


# --------------------------------------------------------------------------- particle bounds


@dataclass
class BoundTerms:
    """A stochastic lower bound on log p(x) from the particle loop."""
    increments: Tensor   # (B, T) log p_hat(x_t | x_<t); sums to log_p_hat, 0 on padding
    resampled: Tensor    # (B, T) 1 where the particles were resampled after step t
    mask: Tensor         # (B, T)

    @property
    def log_p_hat(self) -> Tensor:
        return self.increments.sum(1)  # (B,)


BOUNDS = {"elbo": (False, 1), "iwae": (False, None), "fivo": (True, None)}   # name -> (resample, fixed K)


def particle_bound(model: Any, inference: Any, x: Tensor, mask: Tensor, num_particles: int = 1,
                   resample: bool = False, ess_threshold: float = 0.5) -> BoundTerms:
    """ELBO (K=1), IWAE (K particles, no resampling) or FIVO (resample when ESS < K * threshold).

    Particles are stacked with the batch, index ``k * B + b``, so every model
    step runs once on (K*B, ...). Per particle and step, with z ~ q::

        log alpha_t = log p(x_t | z_t, h) + log p(z_t | h) - log q(z_t | .)
        log w_t     = log w_{t-1} + log alpha_t                       (K, B)
        increment_t = logsumexp_k log w_t - logsumexp_k log w_{t-1}

    On resampling, ancestors are drawn from softmax(log w) per sequence and
    every weight is set to logsumexp(log w) - log K, which leaves the running
    sum unchanged: the increments telescope to log p_hat = logsumexp(log w_T) - log K.
    The resampling step is not differentiated through (as in FIVO).
    """
    batch, steps = mask.shape
    K = num_particles
    xk = x.unsqueeze(0).expand(K, *x.shape).reshape(K * batch, *x.shape[1:])
    state = model.initial_state(K * batch)
    q_state = inference.initial_state(K * batch, xk, mask.repeat(K, 1))
    log_w = x.new_zeros(K, batch)
    log_k = torch.log(torch.tensor(float(K), device=x.device))
    lse_prev = log_w.logsumexp(0)
    increments, resampled = [], []
    for t in range(steps):
        x_t = xk[:, t]
        p_z = model.prior(state)
        q = inference.posterior(model, x_t, state, p_z, q_state)
        z = reparameterize(q.q_z)
        log_alpha = (log_likelihood(model.emission(z, state), x_t)
                     + p_z.log_prob(z).flatten(1).sum(1) - q.q_z.log_prob(z).flatten(1).sum(1))
        log_w = log_w + log_alpha.view(K, batch) * mask[:, t]
        lse = log_w.logsumexp(0)
        increments.append(lse - lse_prev)
        state, q_state = model.advance(state, x_t, z), q.q_state
        did = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if resample and K > 1:
            ess = torch.exp(2 * lse - (2 * log_w).logsumexp(0))          # (B,)
            did = (ess < K * ess_threshold) & (mask[:, t] > 0)
            if bool(did.any()):
                probs = torch.softmax(log_w.detach(), 0).T                # (B, K)
                ancestors = torch.multinomial(probs, K, replacement=True).T   # (K, B)
                keep = torch.arange(K, device=x.device).unsqueeze(1).expand(K, batch)
                ancestors = torch.where(did.unsqueeze(0), ancestors, keep)
                index = (ancestors * batch + torch.arange(batch, device=x.device)).reshape(-1)
                state, q_state = reindex(state, index), reindex(q_state, index)
                log_w = torch.where(did.unsqueeze(0), (lse - log_k).unsqueeze(0).expand(K, batch), log_w)
        resampled.append(did.to(x.dtype))
        lse_prev = log_w.logsumexp(0)
    # lse_prev starts at log K, so the increments sum to logsumexp(log w_T) - log K.
    return BoundTerms(torch.stack(increments, 1), torch.stack(resampled, 1), mask)


def reindex(state: Any, index: Tensor) -> Any:
    """Select particles along the batch dimension of every tensor in a (named) tuple state."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state[index]
    items = [reindex(s, index) for s in state]
    return type(state)(*items) if hasattr(state, "_fields") else type(state)(items)


def bound_loss(terms: BoundTerms) -> Tensor:
    """-log p_hat summed over the batch, per real step (nats per step)."""
    return -terms.log_p_hat.sum() / terms.mask.sum().clamp_min(1.0)
