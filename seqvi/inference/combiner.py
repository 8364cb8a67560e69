"""Krishnan's combiner over a forward RNN: the DMM's filtering encoder (ST-L).

Krishnan, Shalit & Sontag, AAAI 2017 (arXiv 1609.09869), sec. 4: q(z_t | .)
combines an RNN summary of the observations with the previous latent::

    h_t   = RNN(h_{t-1}, x_t)                      h_0 learned; FORWARD over x_{<=t}
    h_c   = 0.5 * (tanh(W z_{t-1} + b) + h_t)      "combiner"
    q(z_t | z_{t-1}, x_{<=t}) = N(W_loc h_c + b_loc, softplus(W_s h_c + b_s))

This is a filtering procedure: ``q_state[0] = h_{t-1}`` (B, R) is the RNN's
state. The RNN reads x only, causally, so ``initial_state(batch, x)`` runs it
over the whole sequence in one call (one large input product, the recurrence
in C++) and keeps the outputs in ``q_state.ahead``, a tuple of T tensors
(B, R) that each ``posterior`` consumes one at a time (a tuple, not slices of
one (B, T, R) tensor, whose backward would cost O(T^2)); without x (unprimed
sampling) or past its end, ``posterior`` steps the cell itself. Both give
the same h_t.

Krishnan's best-performing q (ST-LR, and Pyro's example) runs the RNN
backward over the future instead; the forward version is the paper's ST-L variant, the one that
fits variational filtering. z_{t-1} is read with ``model.previous_z(state)``
(DMM, SRNN and LGSSM provide it; at t = 1 it is the model's z_0, where Pyro's
guide keeps a separate learned z_q_0). A model without ``previous_z`` is
refused when this is built.

For a model whose state is z_{t-1} alone (the DMM), ``sample_path`` runs
the whole sampling path in one autograd node with a hand-written backward
(the kernel ``seqvi.nn.combiner_path``), which the stacked filtering pass
uses; its reference path is stepping ``posterior``.

``cell`` picks the RNN: "relu" (Pyro's ``nn.RNN(nonlinearity="relu")``, the
default), "tanh" or "gru" (steadier: Pyro's ReLU RNN is known to blow up).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.errors import RecipeError
from seqvi.free_energy import standard_normal
from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import MIN_SCALE, positive_scale
from seqvi.nn import enabled
from seqvi.nn.combiner_path import combiner_path
from seqvi.nn.elman import elman_rnn, rnn_reference
from seqvi.nn.linear import Linear

class Ahead(tuple):
    """h_t, h_{t+1}, ... (B, R) each; the whole precomputed sequence also as one time-major tensor
    ``sequence`` (T, B, R), which ``sample_path`` reads (a slice or a re-indexed copy is a plain tuple)."""

    sequence: Optional[Tensor] = None


class CombinerState(NamedTuple):
    h: Tensor                  # (B, R) h_{t-1}
    ahead: tuple[Tensor, ...]  # h_t, h_{t+1}, ... (B, R) each, precomputed from x (empty: step the cell)


CELLS = {
    "relu": lambda d, r: nn.RNNCell(d, r, nonlinearity="relu"),
    "tanh": lambda d, r: nn.RNNCell(d, r, nonlinearity="tanh"),
    "gru": nn.GRUCell,
}


class Combiner(Inference):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(rnn_size=6)
    TEST_MODEL = "dmm"   # the registered model seqvi.testing checks it on

    reads_prior = False

    def __init__(self, model: Any, rnn_size: int = 600, cell: str = "relu"):
        super().__init__()
        if not model.has("previous_z"):
            raise RecipeError(f"inference 'combiner' needs a model with previous_z(state) (DMM, SRNN, LGSSM); "
                              f"{type(model).__name__} has none: use 'direct' or 'avf'")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        self.cell = cell
        self.rnn = CELLS[cell](model.x_dim, rnn_size)              # h_t = RNN(h_{t-1}, x_t)
        self.h_0 = nn.Parameter(torch.zeros(rnn_size))             # h_0
        self.z_to_hidden = Linear(model.z_dim, rnn_size)        # combiner: tanh(W z_{t-1} + b)
        self.loc = Linear(rnn_size, model.z_dim)                # q(z_t | z_{t-1}, x_{<=t}): mean
        self.scale = Linear(rnn_size, model.z_dim)              # q(z_t | z_{t-1}, x_{<=t}): scale

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                      kl_weight: float = 1.0) -> CombinerState:
        h_0 = self.h_0.expand(batch_size, -1)
        if x is None:
            return CombinerState(h_0, ())
        h = self._forward_rnn(x.flatten(2), h_0)                                # causal: h_t reads x_{<=t}
        ahead = Ahead(h.unbind(1))
        ahead.sequence = h.transpose(0, 1)                                     # (T, B, R)
        return CombinerState(h_0, ahead)

    def _forward_rnn(self, x: Tensor, h_0: Tensor) -> Tensor:
        """h_{1:T} for x (B, T, D) in one call with the cell's own weights -> (B, T, R): ReLU and tanh
        cells through the kernel ``seqvi.nn.elman`` (reference: torch's RNN), GRU cells torch's RNN."""
        weights = (self.rnn.weight_ih, self.rnn.weight_hh, self.rnn.bias_ih, self.rnn.bias_hh)
        if self.cell != "gru":
            return elman_rnn(x, h_0, *weights, nonlinearity=self.cell)
        return rnn_reference(x, h_0, weights, self.cell, self.training)

    def sample_path(self, model: Any, x: Tensor, state: Any, q_state: Any) -> Optional[tuple]:
        """The whole sampling path at once (the kernel ``seqvi.nn.combiner_path``) for a model whose
        state is z_{t-1} alone and takes no inputs, with the RNN over x precomputed; else None (the
        reference: step ``posterior``). Per-step lists (states, q locs, q scales, samples, aux)."""
        steps = x.shape[1]
        if (not model.markov_in_z or model.has("condition") or self.cell == "gru" or not enabled(x)
                or q_state is None or len(q_state.ahead) != steps or steps == 0):
            return None
        h = getattr(q_state.ahead, "sequence", None)
        h = torch.stack(q_state.ahead) if h is None else h                     # (T, B, R)
        zs, locs, scales = combiner_path(h, model.previous_z(state), self.z_to_hidden, self.loc, self.scale,
                                         standard_normal, MIN_SCALE)
        zs, locs, scales = zs.unbind(0), locs.unbind(0), scales.unbind(0)
        states = [state] + [model.z_state(z) for z in zs[:-1]]
        return states, list(locs), list(scales), list(zs), []

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Optional[Normal] = None,
                  q_state: Any = None) -> Posterior:
        if q_state is None:
            q_state = self.initial_state(x.shape[0])
        h_prev, ahead = q_state
        if ahead:
            h, ahead = ahead[0], ahead[1:]
        else:
            h = self.rnn(x.flatten(1), h_prev)                     # (B, R)
        h_c = (torch.tanh(self.z_to_hidden(model.previous_z(state))) + h).mul_(0.5)   # combiner
        q_z = Normal(self.loc(h_c), positive_scale(self.scale(h_c)), validate_args=False)
        return Posterior(q_z, CombinerState(h, ahead))
