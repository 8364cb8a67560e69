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

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Normal

from seqvi.free_energy import gaussian_kl, log_likelihood, reparameterize, step_free_energy


@dataclass
class SequenceTerms:
    recon: Tensor   # (B, T)
    kl: Tensor      # (B, T)
    mask: Tensor    # (B, T)
    aux: Tensor | None = None   # (B, T) q-only loss (AVF's earlier iterations), if any
    gap: Tensor | None = None   # (B, T) F_t drop under per-step refinement, if measured
    recon_binned: Tensor | None = None   # (B, T) -log P(bin of x_t), with a bin width
    deferred: Any = None   # q's deferred update: ``deferred.backward(aux_weight)`` right after the loss's backward

    @property
    def free_energy(self) -> Tensor:
        return self.recon + self.kl  # (B, T)


def filter_sequence(model: Any, inference: Any, x: Tensor, mask: Tensor,
                    refine: Callable | None = None, bin_width: float | None = None,
                    fast: bool | None = None, defer: bool = False) -> SequenceTerms:
    """One filtering pass with one reparameterized sample per step.

    ``refine(model, q_z, p_z, x_t, state) -> (F_before, F_after)`` (see
    ``seqvi.inference.refine``), when given, measures the amortization gap at
    every step without changing the filter's own trajectory. ``bin_width``
    also scores each frame on quantization bins (discretized likelihood).

    ``fast`` (default: whenever the model allows it and nothing needs the
    per-step terms, i.e. no ``refine``) keeps inside the time loop only what
    the next step depends on: the posterior, the sample and ``advance`` (and
    the prior when the inference reads it). The emission, the
    log-likelihood, the prior and the KL are then evaluated once for all real
    steps on stacked states, (B*T) rows, which is the same mathematics with
    large matrix products instead of T small ones. It needs a model whose
    ``prior`` and ``emission`` are row-wise functions of (z, state)
    (``SequentialModel.stack_steps``). The noise is drawn in the same order
    and shapes as the eager loop, so both give the same numbers up to the
    order of float additions (tests/test_fast_path.py).

    ``defer`` (the training engine's choice; fast loop only) lets an inference
    with ``deferred_update`` (AVF in training) run its network without a
    graph inside the loop. Then ``terms.deferred`` is set, ``terms.aux`` is
    None, and the caller must run ``loss.backward(retain_graph=
    terms.deferred.retain_graph)`` and then ``terms.deferred.backward(w)``
    with w the loss's weight per unit of aux, which puts q's gradient in
    place (``seqvi.inference.iterative``).
    """
    if fast is None:
        fast = refine is None and getattr(model, "stack_steps", False)
    if not fast:
        return _filter_eager(model, inference, x, mask, refine, bin_width)
    batch, steps = mask.shape
    state = model.initial_state(batch)
    q_state = inference.initial_state(batch, x, mask)
    deferrable = defer and hasattr(inference, "deferred_update")
    with inference.deferred_update() if deferrable else contextlib.nullcontext() as deferred:
        states, locs, scales, zs, aux = _sample_path(model, inference, x, state, q_state)
    # Everything below sees the real steps only, as rows b * T + t.
    keep = _real_rows(mask)
    rows = lambda seq: _take(_stack_steps(seq), keep)  # noqa: E731
    flat_state, z = rows(states), rows(zs)
    q_z = Normal(rows(locs), rows(scales), validate_args=False)
    p_z = model.prior(flat_state)
    p_x = model.emission(z, flat_state)
    x_real = _take(x.flatten(0, 1), keep)
    recon = -log_likelihood(p_x, x_real)
    kl = gaussian_kl(q_z, p_z)
    if deferred is not None:
        deferred.attach(model, rows, flat_state, p_z, x_real)
    binned = None
    if bin_width is not None and isinstance(p_x, Normal):
        from seqvi.likelihoods import discretized_gaussian_log_prob

        binned = -discretized_gaussian_log_prob(p_x.loc, p_x.scale, x_real, bin_width).flatten(1).sum(1)
    put = lambda v: _put(v, keep, mask) * mask  # noqa: E731
    return SequenceTerms(put(recon), put(kl), mask,
                         torch.stack(aux, 1) * mask if aux else None, None,
                         put(binned) if binned is not None else None, deferred)


def _filter_eager(model: Any, inference: Any, x: Tensor, mask: Tensor,
                  refine: Callable | None = None, bin_width: float | None = None) -> SequenceTerms:
    """The reference loop: every term of F_t computed at step t (see ``filter_sequence``)."""
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


def _in_loop_prior(model: Any, state: Any, graph: bool) -> Normal:
    """The prior for q inside the fast loop; its graph only if q differentiates through it
    (the KL's prior is recomputed after the loop)."""
    if graph:
        return model.prior(state)
    with torch.no_grad():
        return model.prior(state)


def _stack_steps(seq: list) -> Any:
    """T per-step values (tensors (B, ...) or tuples of them) -> the same with rows b * T + t."""
    first = seq[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(seq, 1).flatten(0, 1)
    items = [_stack_steps([s[i] for s in seq]) for i in range(len(first))]
    return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)


def _real_rows(mask: Tensor) -> Tensor | None:
    """Indices of the real steps among the rows b * T + t, or None when every step is real."""
    flat = mask.reshape(-1) > 0
    return None if bool(flat.all()) else flat.nonzero().squeeze(1)


def _take(value: Any, index: Tensor | None) -> Any:
    if index is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index)
    items = [_take(v, index) for v in value]
    return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)


def _put(values: Tensor, index: Tensor | None, mask: Tensor) -> Tensor:
    """(real rows,) -> (B, T), zero on padding."""
    if index is None:
        return values.view(mask.shape)
    return values.new_zeros(mask.numel()).index_put((index,), values).view(mask.shape)


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
                   resample: bool = False, ess_threshold: float = 0.5, fast: bool | None = None) -> BoundTerms:
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

    Without resampling (ELBO, IWAE) the weights never steer the particles, and
    ``fast`` (default: when gradients are recorded and the model allows it,
    see ``filter_sequence``) computes log alpha after the loop on stacked
    states. Under ``no_grad`` the per-step loop is the faster one: with K*B
    rows per step its products are already large, and stacking K*B*T rows
    only adds memory traffic (measured: IWAE(16) 8% slower stacked).
    """
    batch, steps = mask.shape
    K = num_particles
    xk = x.unsqueeze(0).expand(K, *x.shape).reshape(K * batch, *x.shape[1:])
    state = model.initial_state(K * batch)
    # q's initial state is a deterministic function of each row's x: compute it once, repeat it K times
    q_state = reindex(inference.initial_state(batch, x, mask), torch.arange(K * batch, device=x.device) % batch)
    if fast is None:
        fast = torch.is_grad_enabled() and getattr(model, "stack_steps", False)
    if fast and not (resample and K > 1):
        return _iwae_stacked(model, inference, xk, mask, K, state, q_state)
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


def _sample_path(model: Any, inference: Any, x: Tensor, state: Any, q_state: Any):
    """The part of filtering that must run step by step: q, the sample, ``advance``.

    Returns per-step lists (states h_{t-1}, q locs, q scales, z samples, aux losses);
    everything else is evaluated after the loop on stacked steps.
    """
    whole = getattr(inference, "sample_path", None)
    path = whole(model, x, state, q_state) if whole is not None else None
    if path is not None:   # the inference runs the whole path at once (the combiner on a DMM)
        return path
    reads_prior = getattr(inference, "reads_prior", True)
    prior_graph = getattr(inference, "prior_graph", True)
    states, locs, scales, zs, aux = [], [], [], [], []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        p_z = _in_loop_prior(model, state, prior_graph) if reads_prior else None
        q = inference.posterior(model, x_t, state, p_z, q_state)
        z = reparameterize(q.q_z)
        states.append(state)
        locs.append(q.q_z.loc)
        scales.append(q.q_z.scale)
        zs.append(z)
        if q.aux is not None:
            aux.append(q.aux)
        state, q_state = model.advance(state, x_t, z), q.q_state
    return states, locs, scales, zs, aux


def _iwae_stacked(model: Any, inference: Any, xk: Tensor, mask: Tensor, K: int, state: Any,
                  q_state: Any) -> BoundTerms:
    """IWAE (and ELBO, K = 1) when nothing is resampled: the weights never steer the particles,
    so the loop keeps only q, the sample and ``advance``; log alpha is computed after it for all
    real steps at once on stacked states (as in ``filter_sequence``), then
    log w_t = cumsum_t log alpha_t and increment_t = lse_k log w_t - lse_k log w_{t-1}."""
    batch, steps = mask.shape
    states, locs, scales, zs, _ = _sample_path(model, inference, xk, state, q_state)
    maskk = mask.repeat(K, 1)                                                   # (K*B, T)
    keep = _real_rows(maskk)
    rows = lambda seq: _take(_stack_steps(seq), keep)  # noqa: E731
    flat_state, z = rows(states), rows(zs)
    q_z = Normal(rows(locs), rows(scales), validate_args=False)
    log_alpha = (log_likelihood(model.emission(z, flat_state), _take(xk.flatten(0, 1), keep))
                 + model.prior(flat_state).log_prob(z).flatten(1).sum(1) - q_z.log_prob(z).flatten(1).sum(1))
    log_w = (_put(log_alpha, keep, maskk) * maskk).view(K, batch, steps).cumsum(2)
    log_k = torch.log(torch.tensor(float(K), device=xk.device))
    lse = torch.cat([log_k.expand(batch, 1), log_w.logsumexp(0)], 1)              # (B, T + 1)
    return BoundTerms(lse[:, 1:] - lse[:, :-1], torch.zeros_like(mask), mask)


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
