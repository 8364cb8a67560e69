"""Objectives: the filtering pass as one particle loop, and the bounds as functions of it.

For x (B, T, *X), mask (B, T) (padding at the end of each sequence),
optional per-step inputs u (B, T, U) and rewards r (B, T) (NaN where none
was observed; scored by a model's reward head with x), K particles are stacked with the batch
(row k * B + b), so every model step runs once on (K*B) rows. Per step::

    h            <- observe(condition(h, u_t), x_t)
    p_z = prior(h);   q = posterior(x_t, h, p_z);   z_t ~ q          (reparameterized)
    h            <- transit(h, z_t)                                  (once; the emission reads it)
    recon_t, kl_t, log alpha_t = seqvi.free_energy.score(...)         F_t = recon_t + kl_t
    log w_t      = log w_{t-1} + log alpha_t                          (K, B)
    increment_t  = logsumexp_k log w_t - logsumexp_k log w_{t-1}      log p_hat = sum_t increment_t
    FIVO only:   resample when ESS = exp(2 lse(log w) - lse(2 log w)) < K * threshold
    h            <- advance(h, x_t, z_t)

ELBO = IWAE(K = 1) = FIVO that never resamples: the same loop with other
K and resampling settings (``BOUNDS``). The free energy F (analytic KL, the
training objective) is the K = 1 pass's recon + kl. On resampling, ancestors
are drawn from softmax(log w) per sequence and every weight is set to
logsumexp(log w) - log K, which leaves the running sum unchanged, so the
increments telescope to log p_hat = logsumexp(log w_T) - log K. The
resampling step is not differentiated through (as in FIVO).

Without resampling the weights never steer the particles, so where the
kernels apply (``seqvi.nn.enabled``) and the model is row-wise, the loop
keeps only q, the sample and ``advance``, and the terms are computed after it
on stacked rows (``seqvi.stacked``): the same numbers. Per-step refinement
(the amortization gap) needs the per-step loop.

Training loss (nats per time step, KL-annealed with weight beta; ``aux`` is
q's own loss, e.g. AVF's earlier iterates, which trains only q)::

    L = sum_{b,t} mask * (recon + beta * kl + aux) / sum_{b,t} mask

Reported figures: total free energy over a split divided by its number of
time steps (nats/step) and by its number of sequences (nats/sequence).
Nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from seqvi import stacked
from seqvi.free_energy import StepTerms, map_state, repeat_rows, reparameterize, score
from seqvi.nn import enabled
from seqvi.overshooting import filter_with_overshooting


class Bound(NamedTuple):
    """A lower bound on log p(x) from the particle loop."""
    name: str
    resample: bool                 # FIVO: resample when the effective sample size is low
    particles: Optional[int]       # fixed K (the ELBO: 1), or None: the caller's K

    def num_particles(self, requested: int) -> int:
        return self.particles or requested

    def label(self, requested: int) -> str:
        """The negated bound's column name: -ELBO, -IWAE(16), -FIVO(16)."""
        return "-ELBO" if self.particles == 1 else f"-{self.name.upper()}({self.num_particles(requested)})"


BOUNDS = {"elbo": Bound("elbo", False, 1), "iwae": Bound("iwae", False, None), "fivo": Bound("fivo", True, None)}


@dataclass
class SequenceTerms:
    """One filtering pass with one sample per step; every field (B, T), zero on padding."""
    recon: Tensor
    kl: Tensor
    mask: Tensor
    aux: Optional[Tensor] = None            # q-only loss (AVF's earlier iterates), if any
    gap: Optional[Tensor] = None            # F_t drop under per-step refinement, if measured
    recon_binned: Optional[Tensor] = None   # -log P(bin of x_t), with a bin width
    log_alpha: Optional[Tensor] = None      # log p(x_t | z_t) + log p(z_t) - log q(z_t): -ELBO's per-step terms
    reward_nll: Optional[Tensor] = None     # -log p(r_t | z_t, h) (part of recon), with rewards
    kl_groups: Optional[Tensor] = None      # (B, T, G) the KL within G groups of z, when asked (free bits)

    @property
    def free_energy(self) -> Tensor:
        return self.recon + self.kl


@dataclass
class BoundTerms:
    """A stochastic lower bound on log p(x) from the particle loop."""
    increments: Tensor   # (B, T) log p_hat(x_t | x_<t); sums to log_p_hat, 0 on padding
    resampled: Tensor    # (B, T) 1 where the particles were resampled after step t
    mask: Tensor         # (B, T)

    @property
    def log_p_hat(self) -> Tensor:
        return self.increments.sum(1)  # (B,)


class _Weights:
    """Running particle log-weights log w (K, B) and the increments of log p_hat."""

    def __init__(self, particles: int, batch: int, like: Tensor):
        self.log_w = like.new_zeros(particles, batch)
        self.log_k = math.log(particles)
        self.lse = self.log_w.logsumexp(0)

    def add(self, log_alpha: Tensor, mask_t: Tensor) -> Tensor:
        """log w += log alpha (K*B,) on real steps; returns this step's increment (B,)."""
        self.log_w = self.log_w + log_alpha.view(self.log_w.shape) * mask_t
        lse, previous = self.log_w.logsumexp(0), self.lse
        self.lse = lse
        return lse - previous

    def resample(self, mask_t: Tensor, threshold: float) -> tuple[Optional[Tensor], Tensor]:
        """Where ESS < K * threshold on a real step: (row index k * B + b of the ancestors, done (B,))."""
        K, B = self.log_w.shape
        ess = torch.exp(2 * self.lse - (2 * self.log_w).logsumexp(0))                  # (B,)
        done = (ess < K * threshold) & (mask_t > 0)
        if not bool(done.any()):
            return None, done
        probs = torch.softmax(self.log_w.detach(), 0).T                                  # (B, K)
        ancestors = torch.multinomial(probs, K, replacement=True).T                      # (K, B)
        keep = torch.arange(K, device=done.device).unsqueeze(1).expand(K, B)
        ancestors = torch.where(done.unsqueeze(0), ancestors, keep)
        self.log_w = torch.where(done.unsqueeze(0), (self.lse - self.log_k).unsqueeze(0).expand(K, B), self.log_w)
        self.lse = self.log_w.logsumexp(0)
        return (ancestors * B + torch.arange(B, device=done.device)).reshape(-1), done


class _Pass(NamedTuple):
    terms: StepTerms              # each (K*B, T) (or (K*B, T, G)), zero on padding
    aux: Optional[Tensor]         # (K*B, T) q's own loss, if any
    gap: Optional[Tensor]         # (K*B, T) F_t drop under refinement, if measured
    increments: Optional[Tensor]  # (B, T) log p_hat increments, with log-weights
    resampled: Tensor             # (B, T)


def _particle_pass(model: Any, inference: Any, x: Tensor, mask: Tensor, particles: int = 1,
                   resample: bool = False, ess_threshold: float = 0.5, *, inputs: Optional[Tensor] = None,
                   rewards: Optional[Tensor] = None, refine: Optional[Callable] = None,
                   bin_width: float | None = None, log_weights: bool = True, kl_weight: float = 1.0,
                   kl_groups: int = 0) -> _Pass:
    """THE particle loop (module docstring). Without ``log_weights`` (one particle, no resampling:
    the free energy alone) the weights are not computed and ``log_alpha``, ``increments`` are None."""
    log_weights = log_weights or _needs_weights(particles, resample)
    K, (B, T) = particles, mask.shape
    xk, maskk = repeat_rows(x, K), mask.repeat(K, 1)                                      # rows k * B + b
    uk, rk = (None if v is None else repeat_rows(v, K) for v in (inputs, rewards))
    state = model.initial_state(K * B)
    # q's initial state is a deterministic function of each row's x: computed once, repeated K times
    q_state = repeat_rows(inference.initial_state(B, x, mask, kl_weight=kl_weight), K)
    options = dict(log_weights=log_weights, bin_width=bin_width, kl_groups=kl_groups)
    weights = _Weights(K, B, x)
    if _stacks(model, x, log_weights, resample and K > 1, refine):
        path = stacked.sample_path(model, inference, xk, state, q_state, uk)
        terms = stacked.score_path(model, path, xk, maskk, rewards=rk, **options)
        increments = [weights.add(terms.log_alpha[:, t], mask[:, t]) for t in range(T)] if log_weights else []
        aux = torch.stack(path.aux, 1) * maskk if path.aux else None
        return _Pass(terms, aux, None, torch.stack(increments, 1) if increments else None, torch.zeros_like(mask))
    steps, aux, gap, increments, resampled = [], [], [], [], []
    for t in range(T):
        x_t = xk[:, t]
        state = model.observe(model.condition(state, None if uk is None else uk[:, t]), x_t)
        p_z = model.prior(state)
        q = inference.posterior(model, x_t, state, p_z, q_state)
        z = reparameterize(q.q_z)
        emitting = model.transit(state, z)
        steps.append(score(model, emitting, z, q.q_z, p_z, x_t, rewards=None if rk is None else rk[:, t],
                           **options))
        if q.aux is not None:
            aux.append(q.aux)
        if refine is not None:
            before, after = refine(model, q.q_z, p_z, x_t, state)
            gap.append(before - after)
        if log_weights:
            increments.append(weights.add(steps[-1].log_alpha, mask[:, t]))
        state, q_state = model.advance(emitting, x_t, z), q.q_state
        done = torch.zeros(B, dtype=torch.bool, device=x.device)
        if resample and K > 1:
            index, done = weights.resample(mask[:, t], ess_threshold)
            if index is not None:
                state, q_state = (map_state(lambda s: s[index], s) for s in (state, q_state))
        resampled.append(done.to(x.dtype))
    stack = lambda values: stacked.put(torch.stack(values, 1).flatten(0, 1), None, maskk) if values else None  # noqa: E731
    terms = StepTerms(*(stack([getattr(s, name) for s in steps]) if getattr(steps[0], name) is not None else None
                        for name in StepTerms._fields))
    return _Pass(terms, stack(aux), stack(gap), torch.stack(increments, 1) if increments else None,
                 torch.stack(resampled, 1))


def _stacks(model: Any, x: Tensor, log_weights: bool, resample: bool, refine: Optional[Callable]) -> bool:
    """Whether the pass samples the path and scores stacked rows (``seqvi.stacked``): the kernels are
    on, the model is row-wise, nothing needs the per-step terms (resampling, refinement), and a bound's
    pass records a graph: without one, its K * B rows per step already make large products, and
    stacking K * B * T rows only adds memory traffic (README, Performance)."""
    return (enabled(x) and getattr(model, "rowwise", False) and refine is None and not resample
            and (not log_weights or torch.is_grad_enabled()))


def _needs_weights(particles: int, resample: bool) -> bool:
    """Particle weights matter for more than one particle (IWAE, FIVO)."""
    return particles > 1 or resample


def filter_sequence(model: Any, inference: Any, x: Tensor, mask: Tensor, *, inputs: Optional[Tensor] = None,
                    rewards: Optional[Tensor] = None, refine: Optional[Callable] = None,
                    bin_width: float | None = None, log_weights: bool = False, kl_weight: float = 1.0,
                    kl_groups: int = 0) -> SequenceTerms:
    """One filtering pass, one reparameterized sample per step (the particle loop with K = 1).

    ``refine(model, q_z, p_z, x_t, state) -> (F_before, F_after)`` (``seqvi.inference.refine``), when
    given, measures the amortization gap at every step without changing the filter's own trajectory.
    ``bin_width`` also scores each frame on quantization bins (discretized likelihood);
    ``log_weights`` also returns the particle log-weights (the ELBO's per-step terms, same samples).
    ``kl_weight``: the objective's KL weight, which an inference may read (AVF with ``anneal``);
    ``kl_groups`` G: also the KL within G groups of z's dimensions (free bits).
    """
    run = _particle_pass(model, inference, x, mask, inputs=inputs, rewards=rewards, refine=refine,
                         bin_width=bin_width, log_weights=log_weights, kl_weight=kl_weight, kl_groups=kl_groups)
    terms = run.terms
    return SequenceTerms(terms.recon, terms.kl, mask, run.aux, run.gap, terms.recon_binned, terms.log_alpha,
                         terms.reward_nll, terms.kl_groups)


def particle_bound(model: Any, inference: Any, x: Tensor, mask: Tensor, num_particles: int = 1,
                   resample: bool = False, ess_threshold: float = 0.5, *, inputs: Optional[Tensor] = None,
                   rewards: Optional[Tensor] = None) -> BoundTerms:
    """ELBO (K = 1), IWAE (K particles, no resampling) or FIVO (resample when ESS < K * threshold)."""
    run = _particle_pass(model, inference, x, mask, num_particles, resample, ess_threshold, inputs=inputs,
                         rewards=rewards)
    return BoundTerms(run.increments, run.resampled, mask)


def bound(model: Any, inference: Any, x: Tensor, mask: Tensor, which: Bound, particles: int = 1, *,
          inputs: Optional[Tensor] = None, rewards: Optional[Tensor] = None) -> BoundTerms:
    """The bound ``which`` (an entry of ``BOUNDS``) with ``particles`` where it takes a K."""
    return particle_bound(model, inference, x, mask, which.num_particles(particles), which.resample,
                          inputs=inputs, rewards=rewards)


# --------------------------------------------------------------------------- training


class Objective(NamedTuple):
    """What one training step minimizes: the free energy (``bound`` elbo, analytic KL, KL weight
    ``kl_weight``, optionally free bits) or -log p_hat of IWAE / FIVO with ``particles``.

    Free bits (Kingma et al. 2016; PlaNet's "free nats"): z's dimensions split into ``free_bits_groups``
    equal groups, and each group's KL per step and sequence counts as max(``free_bits``, KL_group) in the
    loss, so that below lambda nats the KL exerts no pull towards the prior. Clamped per example, as
    PlaNet does (Kingma et al. clamp the minibatch mean); the reported free energy is the true one.
    """
    bound: Bound
    particles: int = 1
    kl_weight: float = 1.0
    free_bits: float = 0.0
    free_bits_groups: int = 1
    overshooting: int = 0              # latent overshooting distance D (seqvi.overshooting); 0 = off
    overshooting_weight: float = 1.0


class TrainTerms(NamedTuple):
    loss_sum: Tensor   # () differentiable sum over this batch's real steps (with q's aux); divide by the global count
    value: float       # the objective's sum without q's aux: sum of recon + beta * kl, or -log p_hat
    recon: float       # sums over the real steps, for reporting (free energy objective only; else NaN)
    kl: float


def training_terms(model: Any, inference: Any, x: Tensor, mask: Tensor, objective: Objective, *,
                   inputs: Optional[Tensor] = None, rewards: Optional[Tensor] = None) -> TrainTerms:
    """The summed training loss of one batch (module docstring) and its parts."""
    if objective.bound.name == "elbo":
        groups = objective.free_bits_groups if objective.free_bits > 0 else 0
        if objective.overshooting:   # the same pass, plus the multi-step KL (seqvi.overshooting)
            terms = filter_with_overshooting(model, inference, x, mask, objective.overshooting, inputs=inputs,
                                             rewards=rewards, kl_weight=objective.kl_weight, kl_groups=groups)
        else:
            terms = filter_sequence(model, inference, x, mask, inputs=inputs, rewards=rewards,
                                    kl_weight=objective.kl_weight, kl_groups=groups)
        kl = terms.kl
        if groups:   # padding: clamp real steps only
            kl = (terms.kl_groups.clamp_min(objective.free_bits) * mask.unsqueeze(-1)).sum(-1)
        value = (terms.recon + objective.kl_weight * kl).sum()
        if objective.overshooting:
            value = value + objective.overshooting_weight * objective.kl_weight * terms.overshoot.sum()
        total = value if terms.aux is None else value + terms.aux.sum()
        return TrainTerms(total, float(value.detach()), float(terms.recon.detach().sum()),
                          float(terms.kl.detach().sum()))
    run = bound(model, inference, x, mask, objective.bound, objective.particles, inputs=inputs, rewards=rewards)
    total = -run.log_p_hat.sum()                                  # KL annealing does not apply
    return TrainTerms(total, float(total.detach()), math.nan, math.nan)


def training_loss(terms: SequenceTerms, kl_weight: float = 1.0) -> Tensor:
    """Masked mean over real steps of recon + beta * kl (+ q's aux loss) (nats per step)."""
    total = (terms.recon + kl_weight * terms.kl).sum()
    if terms.aux is not None:
        total = total + terms.aux.sum()
    return total / terms.mask.sum().clamp_min(1.0)


def kl_weight(epoch: int, step_in_epoch: int, steps_per_epoch: int, anneal_epochs: int,
              start: float = 0.0) -> float:
    """Linear KL annealing from ``start`` to 1 over ``anneal_epochs`` epochs (0 = off)."""
    if anneal_epochs <= 0:
        return 1.0
    progress = (epoch + step_in_epoch / max(steps_per_epoch, 1)) / anneal_epochs
    return float(min(1.0, start + (1.0 - start) * progress))
