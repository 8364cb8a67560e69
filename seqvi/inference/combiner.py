"""Krishnan's combiner over a forward RNN: the DMM's filtering encoder (ST-L).

Krishnan, Shalit & Sontag, AAAI 2017 (arXiv 1609.09869), sec. 4: q(z_t | .)
combines an RNN summary of the observations with the previous latent::

    h_t   = RNN(h_{t-1}, x_t)                      h_0 learned; FORWARD over x_{<=t}
    h_c   = 0.5 * (tanh(W z_{t-1} + b) + h_t)      "combiner"
    q(z_t | z_{t-1}, x_{<=t}) = N(W_loc h_c + b_loc, softplus(W_s h_c + b_s))

This is a filtering procedure: ``q_state = (h_{t-1},)`` (B, R) is the RNN's
state, and ``initial_state`` ignores the rest of the sequence. Krishnan's
best-performing q (ST-LR, and Pyro's example) runs the RNN backward over the
future instead; the forward version is the paper's ST-L variant, the one that
fits variational filtering. z_{t-1} is read with ``model.previous_z(state)``
(DMM, SRNN and LGSSM provide it; at t = 1 it is the model's z_0, where Pyro's
guide keeps a separate learned z_q_0). A model without ``previous_z`` is
refused when this is built.

``cell`` picks the RNN: "relu" (Pyro's ``nn.RNN(nonlinearity="relu")``, the
default), "tanh" or "gru" (steadier: Pyro's ReLU RNN is known to blow up).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.errors import RecipeError
from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import MIN_SCALE

CELLS = {
    "relu": lambda d, r: nn.RNNCell(d, r, nonlinearity="relu"),
    "tanh": lambda d, r: nn.RNNCell(d, r, nonlinearity="tanh"),
    "gru": nn.GRUCell,
}


class Combiner(Inference):
    def __init__(self, model: Any, rnn_size: int = 600, cell: str = "relu"):
        super().__init__()
        if not callable(getattr(model, "previous_z", None)):
            raise RecipeError(f"inference 'combiner' needs a model with previous_z(state) (DMM, SRNN, LGSSM); "
                              f"{type(model).__name__} has none: use 'direct' or 'avf'")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        self.rnn = CELLS[cell](model.x_dim, rnn_size)              # h_t = RNN(h_{t-1}, x_t)
        self.h_0 = nn.Parameter(torch.zeros(rnn_size))             # h_0
        self.z_to_hidden = nn.Linear(model.z_dim, rnn_size)        # combiner: tanh(W z_{t-1} + b)
        self.loc = nn.Linear(rnn_size, model.z_dim)                # q(z_t | z_{t-1}, x_{<=t}): mean
        self.scale = nn.Linear(rnn_size, model.z_dim)              # q(z_t | z_{t-1}, x_{<=t}): scale

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None,
                      mask: Optional[Tensor] = None) -> tuple[Tensor]:
        return (self.h_0.expand(batch_size, -1),)                  # filtering: x is not read

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        h_prev = self.initial_state(x.shape[0])[0] if q_state is None else q_state[0]
        h = self.rnn(x.flatten(1), h_prev)                         # (B, R)
        h_c = 0.5 * (torch.tanh(self.z_to_hidden(model.previous_z(state))) + h)
        q_z = Normal(self.loc(h_c), nn.functional.softplus(self.scale(h_c)) + MIN_SCALE, validate_args=False)
        return Posterior(q_z, (h,))
