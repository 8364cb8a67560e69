"""The model contract: one filtering step of a sequential latent variable model.

A model defines only p, through a deterministic state ``h`` summarizing the past::

    p(z_t | h_{t-1})          prior(state)            -> Distribution over (B, Z)
    p(x_t | z_t, h_{t-1})     emission(z, state)      -> Distribution over (B, *X)
    h_t = f(h_{t-1}, x_t, z_t)  advance(state, x, z)  -> State
    features(x, state)        what a direct filtering encoder may see, (B, feature_size)

Every distribution factorizes over its non-batch dimensions; callers sum
log-densities over them. ``State`` is a tuple of batch-first tensors (a
NamedTuple), so particle methods can index and repeat it generically.
A model that fits this contract gets direct filtering (when ``features`` is
meaningful), AVF, every bound, evaluation and sampling with no further code.

``emission_recon_grad(z, state, x)`` (optional) returns -log p(x_t | z, h)
and its gradient in z computed by hand, which AVF's gradient input uses
instead of autograd (``seqvi.models.vjp``).

``markov_in_z`` (class attribute, default False) says the state is z_{t-1}
alone (the DMM): ``z_state(z)`` is then the state after sampling z, which
lets an inference run the whole sampling path at once
(``Combiner.sample_path``).

``stack_steps`` (class attribute, default False) is a promise that ``prior``
and ``emission`` are row-wise functions of (z, state): no batch statistics
(BatchNorm), no caches. The fast filtering loop (``seqvi.objectives``) then
evaluates them once for every step on states stacked along time, (B*T) rows,
instead of once per step. Models that cannot promise it run the eager loop.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Normal

from seqvi.models.linear import Linear

LIKELIHOODS = ("bernoulli", "gaussian")
MIN_SCALE = 1e-4


class SequentialModel(nn.Module):
    """Base class; subclasses set ``x_dim``, ``z_dim``, ``feature_size``."""

    #: prior / emission are row-wise in (z, state): the fast loop may batch them over time
    stack_steps = False
    #: the state is a function of z_{t-1} alone, ``z_state(z)``: advance(state, x, z) == z_state(z)
    markov_in_z = False
    x_dim: int
    z_dim: int
    feature_size: int

    def initial_state(self, batch_size: int) -> Any:
        raise NotImplementedError

    def prior(self, state: Any) -> Distribution:
        raise NotImplementedError

    def emission(self, z: Tensor, state: Any) -> Distribution:
        raise NotImplementedError

    def advance(self, state: Any, x: Tensor, z: Tensor) -> Any:
        raise NotImplementedError

    def features(self, x: Tensor, state: Any) -> Tensor:
        raise NotImplementedError

    def z_state(self, z: Tensor) -> Any:
        """For ``markov_in_z`` models: the state after a step that sampled z (B, Z)."""
        raise NotImplementedError

    def emission_recon_grad(self, z: Tensor, state: Any, x: Tensor, value: bool = True) -> tuple | None:
        """Optional: (-log p(x | z, state) (B,), its gradient in z (B, Z)), both without a graph,
        computed by hand (``seqvi.models.vjp``); the first is None unless ``value``. None (the
        default): AVF uses autograd."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, last_activation: bool = True) -> nn.Sequential:
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Maps features to a diagonal Normal: loc, scale = softplus(.) + MIN_SCALE."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.loc = Linear(in_size, out_size)
        self.scale = Linear(in_size, out_size)

    def forward(self, h: Tensor) -> Normal:
        return Normal(self.loc(h), nn.functional.softplus(self.scale(h)) + MIN_SCALE, validate_args=False)


class EmissionHead(nn.Module):
    """Features -> p(x_t | .): Bernoulli logits for binary frames, diagonal Normal for real ones."""

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
