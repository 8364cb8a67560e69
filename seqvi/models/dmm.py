"""DMM: deep Markov model (Krishnan, Shalit & Sontag, AAAI 2017, arXiv 1609.09869).

A nonlinear state-space model with no deterministic recurrence; latent size
Z, transition width T_w, emission width E::

    z_0                   learned vector
    p(z_t | z_{t-1})      = N(loc, scale)          gated transition (below)
    p(x_t | z_t)          = Bernoulli / N(.),      params = emitter(z_t), 2 hidden ReLU layers of E

Gated transition (Krishnan et al., sec. 5 "Gated Transition Function"; as in
Pyro's DMM example)::

    g        = sigmoid(W_g2 relu(W_g1 z_{t-1}))                 gate             (B, Z)
    m        = W_m2 relu(W_m1 z_{t-1})                          proposed mean    (B, Z)
    loc      = (1 - g) * (W_l z_{t-1} + b_l) + g * m            W_l starts at I, b_l at 0
    scale    = softplus(W_s relu(m) + b_s)

The state is z_{t-1} alone (``previous_z(state)``), starting at the learned
z_0. ``features(x_t, state) = [x_t, z_{t-1}]`` (D + Z). The model's q is
Krishnan's combiner over an RNN on x (``seqvi.inference.combiner``, which
owns the RNN and its size); a direct encoder or AVF also work.

Departures: the paper's best q reads the future (a backward or bidirectional
RNN); seqvi's combiner is its filtering variant ST-L (forward RNN), so the
free energy is the filtering one. Softplus scales with a floor of 1e-4.
Defaults are Pyro's example sizes (z 100, emitter 100, transition 200).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from seqvi.models.base import LIKELIHOODS, MLPEmission, SequentialModel, mlp, positive_scale
from seqvi.nn.linear import Fused, Linear


class DMMState(NamedTuple):
    z: Tensor   # (B, Z) z_{t-1}


class GatedTransition(nn.Module):
    """Parameterizes p(z_t | z_{t-1}): a gated mix of a linear map and a nonlinear proposal.

    The three layers that read z_{t-1} (the gate's and the proposal's first layers, and the linear
    map) run as one product where no graph is recorded (``seqvi.nn.linear.Fused``)."""

    def __init__(self, z_size: int, transition_size: int):
        super().__init__()
        self.gate = mlp([z_size, transition_size, z_size], last_activation=False)
        self.proposed_mean = mlp([z_size, transition_size, z_size], last_activation=False)
        self.z_to_loc = Linear(z_size, z_size)
        self.z_to_scale = Linear(z_size, z_size)
        with torch.no_grad():
            self.z_to_loc.weight.copy_(torch.eye(z_size))
            self.z_to_loc.bias.zero_()
        self._first = Fused(self.gate[0], self.proposed_mean[0], self.z_to_loc)

    def forward(self, z_prev: Tensor) -> Normal:
        hidden_g, hidden_m, linear = self._first(z_prev).split(self._first.sizes, -1)
        gate = torch.sigmoid(self.gate[2](torch.relu(hidden_g)))
        proposed = self.proposed_mean[2](torch.relu(hidden_m))
        loc = torch.lerp(linear, proposed, gate)                               # (1 - g) * linear + g * proposed
        return Normal(loc, positive_scale(self.z_to_scale(torch.relu(proposed))), validate_args=False)


class DMM(SequentialModel):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(x_dim=6, likelihood="bernoulli", z_size=3, emission_size=6, transition_size=6)

    rowwise = True
    markov_in_z = True

    def __init__(self, x_dim: int, likelihood: str = "bernoulli", z_size: int = 100, emission_size: int = 100,
                 transition_size: int = 200):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        self.x_dim, self.z_dim = x_dim, z_size
        self.feature_size = x_dim + z_size
        self.z_0 = nn.Parameter(torch.zeros(z_size))                                     # z_0
        self.transition = GatedTransition(z_size, transition_size)                      # p(z_t | z_{t-1})
        self.emitter = MLPEmission(z_size, 0, [emission_size, emission_size], x_dim, likelihood)   # p(x_t | z_t)

    def initial_state(self, batch_size: int) -> DMMState:
        return DMMState(self.z_0.expand(batch_size, -1))

    def prior(self, state: DMMState) -> Normal:
        return self.transition(state.z)

    def emission(self, z: Tensor, state: DMMState) -> Distribution:
        return self.emitter(z)

    def emission_grad(self, z: Tensor, state: DMMState, x: Tensor, value: bool = True) -> tuple | None:
        return self.emitter.recon_grad(z, None, x, value)

    def advance(self, state: DMMState, x: Tensor, z: Tensor) -> DMMState:
        return DMMState(z)

    def z_state(self, z: Tensor) -> DMMState:
        return DMMState(z)

    def features(self, x: Tensor, state: DMMState) -> Tensor:
        return torch.cat([x, state.z], -1)                   # (B, D + Z)

    def previous_z(self, state: DMMState) -> Tensor:
        return state.z
