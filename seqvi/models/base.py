"""The model contract: one filtering step of a sequential latent variable model (p only).

A model defines p through a deterministic state ``h`` summarizing the past::

    h' = condition(h, u_t)     fold the step's input u_t (B, U) into the state (default: none; h' = h)
    p(z_t | h')                prior(state)            -> Normal over (B, Z)
    p(x_t | z_t, h')           emission(z, state)      -> Distribution over (B, *X)
    h_t = f(h', x_t, z_t)      advance(state, x, z)    -> State
    features(x, state)         what a direct filtering encoder may see, (B, feature_size)

Every distribution factorizes over its non-batch dimensions; callers sum
log-densities over them. ``State`` is a tuple of batch-first tensors (a
NamedTuple), so particle methods and the stacked scoring can index, repeat
and stack it generically (``seqvi.free_energy.map_state``). A model that
fits this contract gets direct filtering (when ``features`` is meaningful),
AVF, every bound, evaluation and sampling with no further code.

Optional hooks (declared below with what each buys; ``model.has(name)`` says
whether a model provides one): ``rowwise``, ``markov_in_z`` / ``z_state``,
``previous_z``, ``deterministic_path``, ``exact_log_likelihood``,
``emission_grad``, ``condition``, ``reward``, ``advance_needs_x``. A model that provides none of them is
still correct, only slower (or without the q that needs them).

The building blocks below parameterize the conditionals: ``GaussianHead``
(a diagonal Normal with a softplus scale), ``EmissionHead`` (Bernoulli
logits or a diagonal Normal) and ``MLPEmission`` (an MLP emission that
knows which of its input columns are z, and differentiates itself in z by
hand for AVF's gradient input).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Normal

from seqvi.nn import graph_free, mlp_grad
from seqvi.nn.linear import Linear

LIKELIHOODS = ("bernoulli", "gaussian")
MIN_SCALE = 1e-4


class SequentialModel(nn.Module):
    """Base class; subclasses set ``x_dim``, ``z_dim``, ``feature_size`` and the five contract methods."""

    x_dim: int
    z_dim: int
    feature_size: int

    #: Promise that ``prior`` and ``emission`` are row-wise functions of (z, state): no batch
    #: statistics (BatchNorm), no caches. The filtering pass may then evaluate them once for all
    #: steps on states stacked along time, (B*T) rows, instead of once per step (``seqvi.stacked``).
    rowwise: bool = False
    #: The state after a step is a function of that step's z alone: advance(state, x, z) == z_state(z)
    #: (the DMM). Lets an inference run its whole sampling path at once (the combiner's kernel).
    markov_in_z: bool = False
    #: ``advance`` reads x_t. False (the RSSM) lets imagination (planning) roll the model forward with
    #: x = None instead of decoding an observation at every step.
    advance_needs_x: bool = True
    #: A tiny configuration for the conformance check (``seqvi.testing.check_model``): constructor
    #: keywords, the data's too (``x_dim``, ``likelihood``, ``frame_shape``). {}: x_dim=6 and the defaults.
    TEST_CONFIG: dict = {}

    # ------------------------------------------------------------------ the contract

    def initial_state(self, batch_size: int) -> Any:
        raise NotImplementedError

    def prior(self, state: Any) -> Normal:
        """p(z_t | h) over (B, Z)."""
        raise NotImplementedError

    def emission(self, z: Tensor, state: Any) -> Distribution:
        """p(x_t | z_t, h) over (B, *X)."""
        raise NotImplementedError

    def advance(self, state: Any, x: Tensor, z: Tensor) -> Any:
        """h_t = f(h, x_t, z_t)."""
        raise NotImplementedError

    def features(self, x: Tensor, state: Any) -> Tensor:
        """What a direct filtering encoder sees at this step, (B, feature_size)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ optional hooks

    def condition(self, state: Any, u: Optional[Tensor]) -> Any:
        """Fold the step's input u_t (B, U) -- an action a_{t-1}, a control -- into the state before
        ``prior`` and ``emission``: p(z_t | h_{t-1}, u_t). Called at the start of every step, with
        ``u`` None for data without inputs. Provide it if the model takes per-step inputs (or does
        its deterministic transition here); the default leaves the state as it is."""
        return state

    def reward(self, z: Tensor, state: Any) -> Distribution:
        """p(r_t | h, z_t) over (B,): a reward head, for interaction data (stored rewards r_t arrive
        with o_t). Provide it to model rewards: the free energy then bounds -log p(x_t, r_t), eval
        reports the reward's NLL, and the planner (``seqvi plan``) sums its mean."""
        raise NotImplementedError

    def advance_imagined(self, state: Any, z: Tensor, x_mean: Optional[Tensor] = None) -> Any:
        """``advance`` without an observation (imagination: planning, open-loop prediction, latent
        overshooting): the emission's mean (``x_mean`` if the caller has it) stands in for x_t when
        ``advance`` reads it, and x is None otherwise (``advance_needs_x``)."""
        if not self.advance_needs_x:
            return self.advance(state, None, z)
        return self.advance(state, self.emission(z, state).mean if x_mean is None else x_mean, z)

    def z_state(self, z: Tensor) -> Any:
        """For ``markov_in_z`` models: the state after a step that sampled z (B, Z)."""
        raise NotImplementedError

    def previous_z(self, state: Any) -> Tensor:
        """z_{t-1} (B, Z) held in the state. Needed by Krishnan's combiner and SRNN's smoothing q."""
        raise NotImplementedError

    def deterministic_path(self, x: Tensor) -> Tensor:
        """The x-only part of the state for a whole sequence x (B, T, D) -> (B, T, H) (SRNN's d_{1:T}).
        Needed by a smoothing q that runs backward over it."""
        raise NotImplementedError

    def exact_log_likelihood(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """log p(x_t | x_{<t}) per step (B, T), when it is tractable (the Kalman filter): evaluation
        then reports it beside the bounds."""
        raise NotImplementedError

    def emission_grad(self, z: Tensor, state: Any, x: Tensor, value: bool = True) -> Optional[tuple]:
        """(R, dR/dz) with R = -log p(x | z, state) (B,) and its gradient in z (B, Z), both without a
        graph, computed by hand (``MLPEmission.recon_grad``); R is None unless ``value``. Used by
        AVF's gradient input where no graph is kept (autograd per step is slower there). Return None
        (the default) to let the caller use autograd."""
        return None

    @classmethod
    def has(cls, hook: str) -> bool:
        """Whether this model provides the optional hook ``hook`` (a method overridden here)."""
        return getattr(cls, hook, None) is not getattr(SequentialModel, hook, None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# --------------------------------------------------------------------------- building blocks


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, last_activation: bool = True) -> nn.Sequential:
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def positive_scale(u: Tensor) -> Tensor:
    """The scale parameterization of every Gaussian here: softplus(u) + MIN_SCALE."""
    return nn.functional.softplus(u) + MIN_SCALE


def positive_scale_grad(u: Tensor) -> Tensor:
    """d positive_scale / du = sigmoid(u): keep it next to ``positive_scale``."""
    return torch.sigmoid(u)


class GaussianHead(nn.Module):
    """Features (B, F) -> a diagonal Normal over (B, out): loc linear, scale = positive_scale(linear)."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.loc = Linear(in_size, out_size)
        self.scale = Linear(in_size, out_size)

    def forward(self, h: Tensor) -> Normal:
        return Normal(self.loc(h), positive_scale(self.scale(h)), validate_args=False)

    @torch.no_grad()
    def recon_grad(self, h: Tensor, x: Tensor, value: bool = True) -> tuple[Optional[Tensor], Tensor]:
        """R = -log N(x; loc, s) summed over features (B,) (None unless ``value``) and dR/dh (B, F)::

            dR/dloc = -(x - loc) / s^2,   dR/du = (1 / s - (x - loc)^2 / s^3) * d s / du
        """
        loc, u = self.loc(h), self.scale(h)
        scale = positive_scale(u)
        diff, inv = x - loc, scale.reciprocal()
        sq = (diff * inv).square()
        recon = (scale.log() + 0.5 * sq + 0.5 * math.log(2 * math.pi)).sum(1) if value else None
        g_loc = -diff * inv * inv
        g_u = (inv - sq * inv) * positive_scale_grad(u)
        return recon, g_loc @ self.loc.weight + g_u @ self.scale.weight


class EmissionHead(nn.Module):
    """Features (B, F) -> p(x_t | .): Bernoulli logits for binary frames, a diagonal Normal for real ones."""

    def __init__(self, in_size: int, x_dim: int, likelihood: str):
        super().__init__()
        self.likelihood = likelihood
        if likelihood == "bernoulli":
            self.logits = Linear(in_size, x_dim)
        else:
            self.gaussian = GaussianHead(in_size, x_dim)

    def forward(self, h: Tensor) -> Distribution:
        if self.likelihood == "bernoulli":
            return Bernoulli(logits=self.logits(h), validate_args=False)
        return self.gaussian(h)

    @torch.no_grad()
    def recon_grad(self, h: Tensor, x: Tensor, value: bool = True) -> tuple[Optional[Tensor], Tensor]:
        """R = -log p(x | h) (B,) (None unless ``value``) and dR/dh (B, F); Bernoulli:
        R = BCE(logits, x), dR/dlogits = sigmoid(logits) - x."""
        if self.likelihood != "bernoulli":
            return self.gaussian.recon_grad(h, x, value)
        logits = self.logits(h)
        recon = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1) if value else None
        return recon, (torch.sigmoid(logits) - x) @ self.logits.weight


class MLPEmission(nn.Sequential):
    """p(x_t | z-part, context) = head(body([z-part, context])) (``z_first``) or head(body([context, z-part])).

    ``body`` is an MLP over (z_size + context_size) inputs, ``head`` an ``EmissionHead``; the module
    joins its inputs itself, so it knows which input columns are z (``z_columns``) and can give the
    z-gradient of its negative log-likelihood by hand (``recon_grad``). Children ``0`` (body) and ``1``
    (head), as an ``nn.Sequential`` of the two.
    """

    def __init__(self, z_size: int, context_size: int, hidden_sizes: Sequence[int], x_dim: int, likelihood: str,
                 activation: type[nn.Module] = nn.ReLU, z_first: bool = True):
        hidden = list(hidden_sizes)
        super().__init__(mlp([z_size + context_size] + hidden, activation), EmissionHead(hidden[-1], x_dim, likelihood))
        self.z_first = z_first
        self.z_columns = slice(0, z_size) if z_first or context_size == 0 else slice(context_size, context_size + z_size)

    def forward(self, z: Tensor, context: Optional[Tensor] = None) -> Distribution:
        return self[1](self[0](self._join(z, context)))

    def _join(self, z: Tensor, context: Optional[Tensor]) -> Tensor:
        if context is None:
            return z
        return torch.cat([z, context] if self.z_first else [context, z], -1)

    @torch.no_grad()
    def recon_grad(self, z: Tensor, context: Optional[Tensor], x: Tensor, value: bool = True) -> Optional[tuple]:
        """(R (B,) or None, dR/dz (B, Z)) by hand (``seqvi.nn.mlp_grad``), or None where the kernel does
        not apply (an activation it cannot differentiate, frames that are not vectors, or the reference
        path is forced): the caller then uses autograd."""
        if x.dim() != 2 or not graph_free(z):
            return None
        forward = mlp_grad.forward(self[0], self._join(z, context))
        if forward is None:
            return None
        h, tape = forward
        recon, g_h = self[1].recon_grad(h, x, value)
        return recon, tape.backward(g_h, self.z_columns)
