"""The per-step free energy F_t and its parts, shared by objectives, inference and the engine.

For one filtering step with approximate posterior q(z_t | .) = N(loc, scale),
the model's prior p(z_t | h) and emission p(x_t | z_t, h)::

    recon_t     = -log p(x_t | z_t, h),   z_t ~ q  (reparameterized)                 (B,)
    kl_t        = KL(q(z_t | .) || p(z_t | h))   (analytic, Gaussian)                  (B,)
    F_t         = recon_t + kl_t                                                     (B,)
    log alpha_t = log p(x_t | z_t, h) + log p(z_t | h) - log q(z_t | .)   (the particle weight)

Log-densities and KLs are summed over every non-batch dimension. ``score``
takes the state the emission reads (after the model's ``transit``, which the
loops call once per step with the sample); ``free_energy_at`` and
``free_energy_gradient`` take the state before it and evaluate a candidate
z's emission as ``emit(model, z, state) = emission(z, transit(state, z))``
(``seqvi.models.base``, the step order). ``score``
computes these terms for any number of rows (one step of a batch, or every
step at once on stacked states); it is the only place they are computed.
``free_energy_at`` and ``free_energy_gradient`` evaluate F_t and its
gradient in q's parameters lambda = (loc, log variance) at a given noise,
for iterative inference, refinement and the per-iteration curve.

``map_state`` applies a function to every tensor of a state (a tuple or
NamedTuple of batch-first tensors), so that repeating, indexing and
stacking states is written once. Lives below both ``objectives`` and
``inference`` so that neither imports the other.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

from seqvi.likelihoods import discretized_gaussian_log_prob

# (rows of the global batch this process holds, global batch size), set by the engine
# under data parallelism so that every process draws the noise of the whole batch.
_NOISE_SHARD: ContextVar[tuple[Tensor, int] | None] = ContextVar("noise_shard", default=None)


# --------------------------------------------------------------------------- states


def map_state(fn: Callable[..., Tensor], *states: Any) -> Any:
    """``fn`` applied to corresponding tensors of one or more states of the same structure
    (tensors, (named) tuples or lists of them; None and non-tensor leaves pass through from the first)."""
    first = states[0]
    if isinstance(first, Tensor):
        return fn(*states)
    if first is None or not isinstance(first, (tuple, list)):
        return first
    items = [map_state(fn, *parts) for parts in zip(*states)]
    return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)


def repeat_rows(state: Any, times: int) -> Any:
    """Each row of a state repeated ``times`` times as blocks, rows k * B + b (particles, samples);
    ``times`` 1 returns the state itself."""
    if times == 1:
        return state
    return map_state(lambda s: s.unsqueeze(0).expand(times, *s.shape).reshape(times * s.shape[0], *s.shape[1:]),
                     state)


# --------------------------------------------------------------------------- noise


@contextlib.contextmanager
def noise_shard(rows: Tensor, global_batch: int) -> Iterator[None]:
    """Within this block, ``standard_normal`` draws global-batch noise and keeps ``rows``."""
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


# --------------------------------------------------------------------------- terms


def gaussian_kl(q: Normal, p: Normal, groups: int = 0) -> Tensor:
    """KL(N(q.loc, q.scale) || N(p.loc, p.scale)) summed over non-batch dims -> (B,); with ``groups`` G,
    summed within G equal groups of the flattened dimensions instead -> (B, G)."""
    var_ratio = (q.scale / p.scale).pow(2)
    t1 = ((q.loc - p.loc) / p.scale).pow(2)
    kl = 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    if groups:
        return kl.flatten(1).view(len(kl), groups, -1).sum(2)
    return kl.flatten(1).sum(1)


def log_likelihood(p_x: Distribution, x: Tensor) -> Tensor:
    """log p(x) summed over non-batch dims -> (B,)."""
    return p_x.log_prob(x).flatten(1).sum(1)


class StepTerms(NamedTuple):
    recon: Tensor                        # (N,) -log p(x_t | z_t, h) (and -log p(r_t | z_t, h), with rewards)
    kl: Tensor                           # (N,) KL(q || p), analytic
    log_alpha: Optional[Tensor] = None   # (N,) log p(x | z) + log p(z) - log q(z), when asked
    recon_binned: Optional[Tensor] = None   # (N,) -log P(bin of x_t), with a bin width
    reward_nll: Optional[Tensor] = None     # (N,) -log p(r_t | z_t, h), where a reward was observed
    kl_groups: Optional[Tensor] = None      # (N, G) the KL within G groups of z's dimensions, when asked


def emit(model: Any, z: Tensor, state: Any) -> Distribution:
    """p(x_t | z_t, h) for candidate samples z (N, Z) at the state before the step's ``transit`` (N rows)."""
    return model.emission(z, model.transit(state, z))


def score(model: Any, state: Any, z: Tensor, q_z: Normal, p_z: Normal, x: Tensor, *,
          log_weights: bool = False, bin_width: float | None = None, rewards: Optional[Tensor] = None,
          kl_groups: int = 0) -> StepTerms:
    """F_t's terms (and optionally the particle log-weight) for rows of (state, z, q, p, x): one step's
    batch, or every step's rows stacked; ``state`` is what ``transit`` returned for this z. With ``bin_width`` a Gaussian emission is also scored on
    quantization bins (``seqvi.likelihoods``: TIMIT's 16-bit samples). With ``rewards`` (N,) (NaN where
    none was observed) and a model with a reward head, the reward's likelihood joins the emission's:
    F_t then bounds -log p(x_t, r_t). ``kl_groups`` G also gives the KL within G groups of z (free bits)."""
    p_x = model.emission(z, state)
    log_px = log_likelihood(p_x, x)
    reward_nll = None
    if rewards is not None and model.has("reward"):
        observed = torch.isfinite(rewards)
        clean = torch.where(observed, rewards, torch.zeros_like(rewards))   # no NaN reaches a gradient
        reward_nll = -model.reward(z, state).log_prob(clean).reshape(len(clean), -1).sum(1) * observed
        log_px = log_px - reward_nll
    log_alpha = None
    if log_weights:
        log_alpha = log_px + p_z.log_prob(z).flatten(1).sum(1) - q_z.log_prob(z).flatten(1).sum(1)
    binned = None
    if bin_width is not None and isinstance(p_x, Normal):
        binned = -discretized_gaussian_log_prob(p_x.loc, p_x.scale, x, bin_width).flatten(1).sum(1)
    by_group = gaussian_kl(q_z, p_z, kl_groups) if kl_groups else None
    kl = by_group.sum(1) if by_group is not None else gaussian_kl(q_z, p_z)
    return StepTerms(-log_px, kl, log_alpha, binned, reward_nll, by_group)


def step_free_energy(model: Any, q_z: Normal, p_z: Normal, x: Tensor, state: Any) -> StepTerms:
    """F_t's terms for one reparameterized sample z ~ q (``score`` at that sample), ``state`` before ``transit``."""
    z = reparameterize(q_z)
    return score(model, model.transit(state, z), z, q_z, p_z, x)


# --------------------------------------------------------------------------- F_t as a function of lambda


def _samples(loc: Tensor, logvar: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, int]:
    """z = loc + sigma * eps for eps (S, B, Z) or (B, Z) -> (z (S*B, Z), sigma * eps (S, B, Z), S)."""
    eps = eps if eps.dim() == loc.dim() + 1 else eps.unsqueeze(0)
    noise = (0.5 * logvar).exp().unsqueeze(0) * eps
    return (loc.unsqueeze(0) + noise).reshape(-1, loc.shape[-1]), noise, eps.shape[0]


def free_energy_at(model: Any, loc: Tensor, logvar: Tensor, p_z: Normal, x: Tensor, state: Any,
                   eps: Tensor) -> Tensor:
    """F_t at q = N(loc, exp(logvar / 2)), the reconstruction averaged over the noise ``eps``
    (S, B, Z) (or (B, Z): one draw), the KL analytic -> (B,). Differentiable in (loc, logvar)."""
    z, _, samples = _samples(loc, logvar, eps)
    recon = -log_likelihood(emit(model, z, repeat_rows(state, samples)), repeat_rows(x, samples))
    q_z = Normal(loc, (0.5 * logvar).exp(), validate_args=False)
    return recon.view(samples, -1).mean(0) + gaussian_kl(q_z, p_z)


def free_energy_gradient(model: Any, loc: Tensor, logvar: Tensor, p_z: Normal, x: Tensor, state: Any,
                         eps: Tensor, *, at_prior: bool = False, value: bool = False, kl_weight: float = 1.0
                         ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(dF_t/dloc, dF_t/dlogvar, F_t or None) at q = N(loc, exp(logvar / 2)) for the noise ``eps``
    ((S, B, Z) or (B, Z)), without a graph; F_t only with ``value``.

    Only the emission is differentiated (to z only, never to its weights): by the model's own
    ``emission_grad`` where it has one, else by autograd. The sampling and the Gaussian KL are
    differentiated by hand, with z = loc + sigma * eps and R = -log p(x | z, h)::

        dF/dloc    = E[dR/dz] + (loc - mu_p) / sigma_p^2
        dF/dlogvar = E[dR/dz * sigma * eps] / 2 + (sigma^2 / sigma_p^2 - 1) / 2

    ``at_prior``: q is the prior itself, where the KL's gradient is zero (AVF's first iterate).
    ``kl_weight`` beta: of recon + beta * KL (an annealed objective), value and gradient.
    """
    with torch.no_grad():
        z, noise, samples = _samples(loc.detach(), logvar.detach(), eps)
        state_s, x_s = repeat_rows(state, samples), repeat_rows(x, samples)
        by_hand = model.emission_grad(z, state_s, x_s, value=value)
    if by_hand is not None:
        recon, grad_z = by_hand
    else:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            recon = -log_likelihood(emit(model, z, state_s), x_s)
            (grad_z,) = torch.autograd.grad(recon.sum(), z)
    with torch.no_grad():
        grad_z = grad_z.view(samples, *loc.shape)
        grad_loc, grad_logvar = grad_z.mean(0), 0.5 * (grad_z * noise).mean(0)
        f = None
        if value:
            f = recon.detach().view(samples, -1).mean(0)
            f = f + kl_weight * gaussian_kl(Normal(loc, (0.5 * logvar).exp(), validate_args=False), p_z)
        if not at_prior:
            prior_var = p_z.scale.pow(2)
            grad_loc = grad_loc + kl_weight * (loc - p_z.loc) / prior_var
            grad_logvar = grad_logvar + kl_weight * 0.5 * (logvar.exp() / prior_var - 1)
    return grad_loc.detach(), grad_logvar.detach(), f
