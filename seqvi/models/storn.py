"""STORN: stochastic recurrent network (Bayer & Osendorfer 2014, "Learning Stochastic Recurrent Networks",
arXiv 1411.7610).

An RNN whose input at every step is the previous frame and a fresh latent
draw, emitting the frame from the state it has just reached. GRU state h of
size H, latent size Z, frames x_t of size D, an emission MLP of width F::

    p(z_t)                 = N(0, I)                         (independent of the past, as in the paper)
    h_t                    = GRU([x_{t-1}, z_t], h_{t-1})    (x_0 = 0, h_0 = 0)
    p(x_t | z_{<=t}, x_{<t}) = Bernoulli / N(.),  params = dec_net(h_t)

The emission reads h_t, the state AFTER the transition that reads z_t: an
emission-after-transition model, written against the contract's ``transit``
hook (``seqvi.models.base``). The state is (h, x_prev)::

    transit(state, z_t)    = (GRU([x_prev, z_t], h), x_prev)     -> h_t, once per step
    emission(z_t, state~)  = dec_net(state~.h)                   (B, D)
    advance(state~, x_t, z_t) = (state~.h, x_t)                  keeps x_t for the next step

``features(x_t, state) = x_t`` (D): STORN's recognition model is an RNN over
the frames, q(z_t | x_{<=t}) = N(head(RNN(x_{1:t}))), the filtering form of
the paper's q; in seqvi that is the recurrent q ``recurrent`` (an LSTM over
``features``, ``seqvi.inference.svg_posterior``), which the recipes use as
STORN's direct filtering. AVF works as for every model: its gradient input
differentiates the emission through ``transit`` (autograd; no hand-written
emission gradient).

Departures: a GRU (the paper uses a plain RNN, later work LSTMs); a
one-hidden-layer emission MLP on h_t instead of a linear read-out; softplus
scales with a floor of 1e-4 for a Gaussian emission; the recognition RNN
reads x_t (filtering) rather than the whole sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from seqvi.models.base import LIKELIHOODS, EmissionHead, SequentialModel, mlp


class STORNState(NamedTuple):
    h: Tensor        # (B, H) h_{t-1} before ``transit``, h_t after it
    x_prev: Tensor   # (B, D) x_{t-1}


class STORN(SequentialModel):
    rowwise = True
    TEST_CONFIG = dict(x_dim=6, likelihood="bernoulli", hidden_size=8, z_size=3, dense_size=6)

    def __init__(self, x_dim: int, likelihood: str = "bernoulli", hidden_size: int = 256, z_size: int = 32,
                 dense_size: int = 128, layers: int = 1):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        if layers < 1:
            raise ValueError("layers must be at least 1")
        self.x_dim, self.z_dim, self.hidden_size = x_dim, z_size, hidden_size
        self.feature_size = x_dim
        self.rnn = nn.GRUCell(x_dim + z_size, hidden_size)                       # h_t = f(h_{t-1}, x_{t-1}, z_t)
        self.dec_net = nn.Sequential(mlp([hidden_size] + [dense_size] * layers),
                                     EmissionHead(dense_size, x_dim, likelihood))  # p(x_t | h_t)

    def initial_state(self, batch_size: int) -> STORNState:
        device = self.device
        return STORNState(torch.zeros(batch_size, self.hidden_size, device=device),
                          torch.zeros(batch_size, self.x_dim, device=device))

    def prior(self, state: STORNState) -> Normal:
        zeros = state.h.new_zeros(state.h.shape[0], self.z_dim)
        return Normal(zeros, torch.ones_like(zeros), validate_args=False)             # N(0, I) over (B, Z)

    def transit(self, state: STORNState, z: Tensor) -> STORNState:
        return STORNState(self.rnn(torch.cat([state.x_prev, z], -1), state.h), state.x_prev)   # h_t (B, H)

    def emission(self, z: Tensor, state: STORNState) -> Distribution:
        return self.dec_net(state.h)                                                   # reads h_t only

    def advance(self, state: STORNState, x: Tensor, z: Tensor) -> STORNState:
        return STORNState(state.h, x)

    def features(self, x: Tensor, state: STORNState) -> Tensor:
        return x                                                                       # (B, D)
