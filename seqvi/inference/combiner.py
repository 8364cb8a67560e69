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
(``seqvi.inference.combiner_path``), which the fast filtering loop uses.

``cell`` picks the RNN: "relu" (Pyro's ``nn.RNN(nonlinearity="relu")``, the
default), "tanh" or "gru" (steadier: Pyro's ReLU RNN is known to blow up).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.errors import RecipeError
from seqvi.inference.base import Inference, Posterior
from seqvi.inference.combiner_path import combiner_path
from seqvi.inference.elman import elman_rnn
from seqvi.models.base import MIN_SCALE
from seqvi.models.linear import Linear

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
    reads_prior = False

    def __init__(self, model: Any, rnn_size: int = 600, cell: str = "relu"):
        super().__init__()
        if not callable(getattr(model, "previous_z", None)):
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

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None,
                      mask: Optional[Tensor] = None) -> CombinerState:
        h_0 = self.h_0.expand(batch_size, -1)
        if x is None:
            return CombinerState(h_0, ())
        h = self._forward_rnn(x.flatten(2), h_0)                                # causal: h_t reads x_{<=t}
        ahead = Ahead(h.unbind(1))
        ahead.sequence = h.transpose(0, 1)                                     # (T, B, R)
        return CombinerState(h_0, ahead)

    def _forward_rnn(self, x: Tensor, h_0: Tensor) -> Tensor:
        """h_{1:T} for x (B, T, D) in one call with the cell's own weights -> (B, T, R).
        ReLU and tanh cells on CPU use ``seqvi.inference.elman`` (its backward batches the weight
        gradients over all steps); GRU cells, and every cell on other devices, torch's own RNN."""
        weights = [self.rnn.weight_ih, self.rnn.weight_hh, self.rnn.bias_ih, self.rnn.bias_hh]
        if self.cell != "gru" and x.device.type == "cpu":
            return elman_rnn(x, h_0, *weights, nonlinearity=self.cell)
        run = {"relu": torch.rnn_relu, "tanh": torch.rnn_tanh, "gru": torch.gru}[self.cell]
        h, _ = run(x, h_0.unsqueeze(0).contiguous(), weights, True, 1, 0.0, self.training, False, True)
        return h

    def sample_path(self, model: Any, x: Tensor, state: Any, q_state: Any) -> Optional[tuple]:
        """The fast loop's whole sampling path at once (``seqvi.inference.combiner_path``) for a model
        whose state is z_{t-1} alone, on CPU, with the RNN over x precomputed; else None (step by step).
        Returns per-step lists (states h_{t-1}, q locs, q scales, z samples, aux) like the loop."""
        steps = x.shape[1]
        if (not getattr(model, "markov_in_z", False) or self.cell == "gru" or x.device.type != "cpu"
                or q_state is None or len(q_state.ahead) != steps or steps == 0):
            return None
        h = getattr(q_state.ahead, "sequence", None)
        h = torch.stack(q_state.ahead) if h is None else h                     # (T, B, R)
        zs, locs, scales = combiner_path(h, model.previous_z(state), self.z_to_hidden, self.loc, self.scale)
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
        q_z = Normal(self.loc(h_c), nn.functional.softplus(self.scale(h_c)) + MIN_SCALE, validate_args=False)
        return Posterior(q_z, CombinerState(h, ahead))
