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

from seqvi.models import vjp
from seqvi.models.linear import Linear, fused_linear
from seqvi.models.base import LIKELIHOODS, MIN_SCALE, EmissionHead, SequentialModel, mlp


class DMMState(NamedTuple):
    z: Tensor   # (B, Z) z_{t-1}


class GatedTransition(nn.Module):
    """Parameterizes p(z_t | z_{t-1}): a gated mix of a linear map and a nonlinear proposal."""

    def __init__(self, z_size: int, transition_size: int):
        super().__init__()
        self.gate = mlp([z_size, transition_size, z_size], last_activation=False)
        self.proposed_mean = mlp([z_size, transition_size, z_size], last_activation=False)
        self.z_to_loc = Linear(z_size, z_size)
        self.z_to_scale = Linear(z_size, z_size)
        with torch.no_grad():
            self.z_to_loc.weight.copy_(torch.eye(z_size))
            self.z_to_loc.bias.zero_()

    def forward(self, z_prev: Tensor) -> Normal:
        if not torch.is_grad_enabled() and z_prev.device.type == "cpu" and z_prev.dim() == 2:
            return self._forward_no_graph(z_prev)
        gate = torch.sigmoid(self.gate(z_prev))
        proposed = self.proposed_mean(z_prev)
        loc = (1 - gate) * self.z_to_loc(z_prev) + gate * proposed
        scale = nn.functional.softplus(self.z_to_scale(torch.relu(proposed))) + MIN_SCALE
        return Normal(loc, scale, validate_args=False)

    def _forward_no_graph(self, z_prev: Tensor) -> Normal:
        """``forward`` where nothing records a graph (AVF's in-loop prior, evaluation): the three
        layers that read z_{t-1} as one product (``fused_linear``), the mix as one ``lerp``."""
        first_g, first_m = self.gate[0], self.proposed_mean[0]
        hidden, linear = fused_linear(self, "_first", (first_g, first_m, self.z_to_loc), z_prev).split(
            [first_g.out_features + first_m.out_features, self.z_to_loc.out_features], 1)
        h_g, h_m = hidden.relu_().split([first_g.out_features, first_m.out_features], 1)
        gate = torch.sigmoid(self.gate[2](h_g))
        proposed = self.proposed_mean[2](h_m)
        loc = torch.lerp(linear, proposed, gate)                               # (1 - g) * linear + g * proposed
        scale = nn.functional.softplus(self.z_to_scale(torch.relu(proposed))).add_(MIN_SCALE)
        return Normal(loc, scale, validate_args=False)


class DMM(SequentialModel):
    stack_steps = True
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
        self.emitter = nn.Sequential(mlp([z_size, emission_size, emission_size]),
                                     EmissionHead(emission_size, x_dim, likelihood))    # p(x_t | z_t)

    def initial_state(self, batch_size: int) -> DMMState:
        return DMMState(self.z_0.expand(batch_size, -1))

    def prior(self, state: DMMState) -> Normal:
        return self.transition(state.z)

    def emission(self, z: Tensor, state: DMMState) -> Distribution:
        return self.emitter(z)

    @torch.no_grad()
    def emission_recon_grad(self, z: Tensor, state: DMMState, x: Tensor, value: bool = True) -> tuple | None:
        return vjp.mlp_emission_grad(self.emitter[0], self.emitter[1], z, x, value=value)

    def advance(self, state: DMMState, x: Tensor, z: Tensor) -> DMMState:
        return DMMState(z)

    def z_state(self, z: Tensor) -> DMMState:
        return DMMState(z)

    def features(self, x: Tensor, state: DMMState) -> Tensor:
        return torch.cat([x, state.z], -1)                   # (B, D + Z)

    def previous_z(self, state: DMMState) -> Tensor:
        return state.z
