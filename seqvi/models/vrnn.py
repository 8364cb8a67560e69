"""VRNN: variational recurrent neural network (Chung et al., NeurIPS 2015, arXiv 1506.02216).

Generative model, with an LSTM state ``h = (h, c)`` of size H, latent size Z,
feature extractors phi_x: (B, D) -> (B, F) and phi_z: (B, Z) -> (B, F)::

    p(z_t | h_{t-1})        = N(mu_0, sigma_0),   [mu_0, sigma_0] = prior_net(h_{t-1})
    p(x_t | z_t, h_{t-1})   = Bernoulli / N(.),   params = dec_net([phi_z(z_t), h_{t-1}])
    h_t                     = LSTM([phi_x(x_t), phi_z(z_t)], h_{t-1})

Direct filtering encoder (in ``seqvi.inference.direct``) sees
``features(x_t, h) = [phi_x(x_t), h_{t-1}]`` of size F + H, as in the paper's
``q(z_t | x_t, h_{t-1}) = N(mu_z, sigma_z)``.

Departures: an LSTM cell (as in the paper's experiments and the AVF code) and
softplus scales with a floor of 1e-4 (the paper does not specify the floor).

phi_x(x_t) is computed once per step: ``features`` and ``advance`` receive the
same x_t tensor within a step, so the second call reuses the first's result.
The LSTM steps through ``seqvi.nn.lstm`` (weight gradients once per sequence);
the emission's z-gradient (AVF's gradient input) is by hand through phi_z and
``MLPEmission``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from seqvi.models.base import LIKELIHOODS, GaussianHead, MLPEmission, SequentialModel, mlp
from seqvi.nn import mlp_grad
from seqvi.nn.lstm import LSTMStep


class VRNNState(NamedTuple):
    h: Tensor  # (B, H)
    c: Tensor  # (B, H)


class VRNN(SequentialModel):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(x_dim=6, likelihood="bernoulli", hidden_size=8, z_size=3, feature_size=8)

    rowwise = True

    def __init__(self, x_dim: int, likelihood: str = "bernoulli", hidden_size: int = 256,
                 z_size: int = 32, feature_size: int = 128, layers: int = 1):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        self.x_dim, self.z_dim, self.hidden_size = x_dim, z_size, hidden_size
        self.feature_size = feature_size + hidden_size
        F, H = feature_size, hidden_size
        self.phi_x = mlp([x_dim] + [F] * layers)                      # parameterizes phi_x(x_t)
        self.phi_z = mlp([z_size] + [F] * layers)                     # parameterizes phi_z(z_t)
        self.prior_net = nn.Sequential(mlp([H] + [F] * layers), GaussianHead(F, z_size))     # p(z_t | h_{t-1})
        self.dec_net = MLPEmission(F, H, [F] * layers, x_dim, likelihood)          # p(x_t | z_t, h_{t-1}) on [phi_z, h]
        self.rnn = nn.LSTMCell(2 * F, H)                              # h_t = f(h_{t-1}, x_t, z_t)
        self._lstm = LSTMStep(self.rnn)
        self._phi_x_last: tuple | None = None                        # (x_t, grad mode, phi_x(x_t))

    def initial_state(self, batch_size: int) -> VRNNState:
        zeros = torch.zeros(batch_size, self.hidden_size, device=self.device)
        return VRNNState(zeros, zeros)

    def prior(self, state: VRNNState) -> Normal:
        return self.prior_net(state.h)

    def emission(self, z: Tensor, state: VRNNState) -> Distribution:
        return self.dec_net(self.phi_z(z), state.h)

    @torch.no_grad()
    def emission_grad(self, z: Tensor, state: VRNNState, x: Tensor, value: bool = True) -> tuple | None:
        phi = mlp_grad.forward(self.phi_z, z)                                  # phi_z(z) and its tape
        out = None if phi is None else self.dec_net.recon_grad(phi[0], state.h, x, value)
        return None if out is None else (out[0], phi[1].backward(out[1]))

    def advance(self, state: VRNNState, x: Tensor, z: Tensor) -> VRNNState:
        h, c = self._lstm(torch.cat([self._embed(x), self.phi_z(z)], -1), state.h, state.c)
        return VRNNState(h, c)

    def features(self, x: Tensor, state: VRNNState) -> Tensor:
        return torch.cat([self._embed(x), state.h], -1)  # (B, F + H)

    def __getstate__(self) -> dict:   # copies and pickles leave the per-step cache behind
        return {**self.__dict__, "_phi_x_last": None}

    def _embed(self, x: Tensor) -> Tensor:
        """phi_x(x), reused when called again with the same tensor (features, then advance)."""
        last, grad = self._phi_x_last, torch.is_grad_enabled()
        if last is not None and last[0] is x and last[1] == grad:
            return last[2]
        out = self.phi_x(x)
        self._phi_x_last = (x, grad, out)
        return out
