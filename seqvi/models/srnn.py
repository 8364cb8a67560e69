"""SRNN: stochastic recurrent neural network (Fraccaro, Sønderby, Paquet & Winther, NeurIPS 2016, arXiv 1605.07571).

A deterministic forward RNN over the PAST inputs, with a state-space model
stacked on it. LSTM state d of size H, latent size Z, dense width F::

    d_t                   = LSTM(d_{t-1}, x_{t-1})          (x_0 = 0, d_0 = 0: d_t sees x_{<t} only)
    p(z_t | z_{t-1}, d_t) = N(mu_p, sigma_p),    [mu_p, sigma_p] = prior_net([d_t, z_{t-1}])   (z_0 = 0)
    p(x_t | z_t, d_t)     = Bernoulli / N(.),    params = dec_net([d_t, z_t])

In the step contract the state holds d_t for the CURRENT step (already
computed from x_{t-1}), the LSTM cell c_t, and z_{t-1}; ``advance(state, x_t,
z_t)`` steps the LSTM with x_t to give d_{t+1} and stores z_t.
``deterministic_path(x)`` returns d_{1:T} (B, T, H) for a whole sequence in
one LSTM call: it depends on x only, which is what Fraccaro's smoothing q
(``seqvi.inference.smoothing``) needs before it runs backward over time.
``features(x_t, state) = [x_t, d_t, z_{t-1}]`` (D + H + Z) is what a direct
filtering encoder sees (the AVF paper's encoder sees [x_t, d_t]; z_{t-1} is
Fraccaro's q(z_t | z_{t-1}, .) dependence). ``previous_z(state)`` is z_{t-1}.

Sizes: ``layers`` hidden layers of width F in prior_net, ``decoder_layers``
(default: ``layers``) in dec_net. AVF's MIDI setting (REFERENCES.md): H 300,
Z 100, prior 1 x 500, decoder 2 x 500; TIMIT: H 1,024, Z 256, 2 x 512 with
``activation="clipped_leaky_relu"`` (leaky ReLU of slope 1/3 clipped to
[-3, 3]).

Departures: an LSTM (as in the AVF code; the paper leaves the RNN type open);
one LSTM layer; softplus scales with a floor of 1e-4. Fraccaro's residual
mean ("Resq", mu_q = mu_p + correction) belongs to q and is an option of the
smoothing inference, not of this prior.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from seqvi.models.base import LIKELIHOODS, GaussianHead, MLPEmission, SequentialModel, mlp
from seqvi.nn import mlp_grad
from seqvi.nn.lstm import LSTMStep


class ClippedLeakyReLU(nn.Module):
    """clamp(leaky_relu(x, 1/3), -3, 3): the activation of the AVF code's SRNN-TIMIT networks."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(nn.functional.leaky_relu(x, 1.0 / 3.0), -3.0, 3.0)


def _clipped_leaky_relu_derivative(module: nn.Module, a: Tensor, y: Tensor) -> Tensor:
    leaky = nn.functional.leaky_relu(a, 1.0 / 3.0)
    return torch.where(a > 0, 1.0, 1.0 / 3.0) * ((leaky >= -3.0) & (leaky <= 3.0))


mlp_grad.register_derivative(ClippedLeakyReLU, _clipped_leaky_relu_derivative)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "clipped_leaky_relu": ClippedLeakyReLU,
}


class SRNNState(NamedTuple):
    d: Tensor   # (B, H) d_t, from x_{<t}
    c: Tensor   # (B, H) LSTM cell state
    z: Tensor   # (B, Z) z_{t-1}


class SRNN(SequentialModel):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(x_dim=6, likelihood="bernoulli", hidden_size=8, z_size=3, dense_size=6, decoder_layers=2)

    rowwise = True

    def __init__(self, x_dim: int, likelihood: str = "bernoulli", hidden_size: int = 300, z_size: int = 100,
                 dense_size: int = 500, layers: int = 1, decoder_layers: Optional[int] = None,
                 activation: str = "relu"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        decoder_layers = layers if decoder_layers is None else decoder_layers
        if layers < 1 or decoder_layers < 1:
            raise ValueError("layers and decoder_layers must be at least 1")
        self.x_dim, self.z_dim, self.hidden_size = x_dim, z_size, hidden_size
        self.feature_size = x_dim + hidden_size + z_size
        H, Z, F, act = hidden_size, z_size, dense_size, ACTIVATIONS[activation]
        self.rnn = nn.LSTM(x_dim, H, batch_first=True)                                       # d_t = f(d_{t-1}, x_{t-1})
        self.prior_net = nn.Sequential(mlp([H + Z] + [F] * layers, act), GaussianHead(F, Z))  # p(z_t | z_{t-1}, d_t)
        self.dec_net = MLPEmission(Z, H, [F] * decoder_layers, x_dim, likelihood, act, z_first=False)  # p(x_t | z_t, d_t) on [d, z]
        # One cell step with the LSTM's own weights (nn.LSTM on a length-1 sequence is slow per call;
        # README, Performance).
        self._step = LSTMStep(self.rnn, suffix="_l0")

    def initial_state(self, batch_size: int) -> SRNNState:
        zeros = torch.zeros(batch_size, self.hidden_size, device=self.device)
        d, c = self._step(torch.zeros(batch_size, self.x_dim, device=self.device), zeros, zeros)   # d_1 from x_0 = 0
        return SRNNState(d, c, torch.zeros(batch_size, self.z_dim, device=self.device))

    def prior(self, state: SRNNState) -> Normal:
        return self.prior_net(torch.cat([state.d, state.z], -1))

    def emission(self, z: Tensor, state: SRNNState) -> Distribution:
        return self.dec_net(z, state.d)

    def emission_grad(self, z: Tensor, state: SRNNState, x: Tensor, value: bool = True) -> tuple | None:
        return self.dec_net.recon_grad(z, state.d, x, value)

    def advance(self, state: SRNNState, x: Tensor, z: Tensor) -> SRNNState:
        d, c = self._step(x, state.d, state.c)
        return SRNNState(d, c, z)

    def features(self, x: Tensor, state: SRNNState) -> Tensor:
        return torch.cat([x, state.d, state.z], -1)           # (B, D + H + Z)

    def previous_z(self, state: SRNNState) -> Tensor:
        return state.z

    def deterministic_path(self, x: Tensor) -> Tensor:
        """d_{1:T} for x (B, T, D): the LSTM over [x_0 = 0, x_1, ..., x_{T-1}] -> (B, T, H)."""
        past = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)   # (B, T, D), x shifted right
        d, _ = self.rnn(past)
        return d
