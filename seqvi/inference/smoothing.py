"""SRNN's smoothing posterior (Fraccaro et al., NeurIPS 2016): NOT a filtering procedure.

This q reads the FUTURE. A backward RNN runs over the whole sequence::

    a_t = GRU(a_{t+1}, [d_t, x_t])                  (a_{T+1} = 0; d_{1:T} = model.deterministic_path(x))
    q(z_t | z_{t-1}, a_t) = N(mu_q, sigma_q),   [mu_q', sigma_q] = MLP([a_t, z_{t-1}])
    mu_q = mu_p + mu_q'   (Fraccaro's "Resq", ``residual=True``)  or  mu_q = mu_q'

so q(z_t | .) depends on x_{t:T}: its free energy is the bound of Fraccaro's
paper (a smoothing ELBO), not the filtering one that ``direct`` and ``avf``
give, and the two should not be compared as equals.

It fits the step contract by precomputing: ``initial_state(batch, x, mask)``
runs the model's deterministic recurrence and the backward RNN over x
(B, T, D) and returns ``q_state = (a,)`` with a (B, T, A); each ``posterior``
call consumes one step and returns ``(a[:, 1:],)``. With ``mask`` (padding
at the end of each sequence) the backward pass starts at each sequence's own
last real step, so padding never leaks into a real step's q. It needs a model
with ``deterministic_path(x) -> (B, T, H)``, ``hidden_size`` (H) and
``previous_z(state)`` (SRNN); any other model is refused when this is built.
``hidden_size`` here is the size of a_t (default: the model's H).

Departures: the paper does not fix the RNN type of a_t (a GRU here); the
q MLP has ``layers`` hidden layers of ``dense_size`` (AVF's MIDI encoder size,
1 x 500, by default).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.errors import RecipeError, SeqviError
from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import GaussianHead, mlp


class Smoothing(Inference):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(hidden_size=8, dense_size=6)
    TEST_MODEL = "srnn"   # the registered model seqvi.testing checks it on

    def __init__(self, model: Any, hidden_size: Optional[int] = None, dense_size: int = 500, layers: int = 1,
                 residual: bool = True):
        super().__init__()
        missing = [m for m in ("deterministic_path", "previous_z") if not model.has(m)]
        if missing:
            raise RecipeError(f"inference 'smoothing' needs a model with {' and '.join(m + '()' for m in missing)} "
                              f"(SRNN); {type(model).__name__} has none: use 'direct' or 'avf'")
        if layers < 1:
            raise ValueError("layers must be at least 1")
        A = hidden_size or model.hidden_size
        self.residual = residual
        # initial_state() has no model argument but needs d_{1:T}: keep a plain reference to the
        # model, outside the module tree, so that its parameters are not counted as q's.
        object.__setattr__(self, "_model", model)
        self.backward_rnn = nn.GRU(model.hidden_size + model.x_dim, A, batch_first=True)  # a_t = f(a_{t+1}, [d_t, x_t])
        self.net = nn.Sequential(mlp([A + model.z_dim] + [dense_size] * layers),
                                 GaussianHead(dense_size, model.z_dim))                    # q(z_t | z_{t-1}, a_t)

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                      kl_weight: float = 1.0) -> Optional[tuple[Tensor]]:
        """q_state = (a_{1:T},) (B, T, A), from the whole x (B, T, D); None without x (nothing to smooth)."""
        if x is None:
            return None
        x = x.flatten(2)                                                     # (B, T, D)
        d = self._model.deterministic_path(x)                                # (B, T, H)
        inputs = torch.cat([d, x], -1)                                       # (B, T, H + D)
        steps = x.shape[1]
        lengths = (torch.full((x.shape[0],), steps, device=x.device) if mask is None
                   else mask.sum(1).round().long())
        flip = _reverse_index(lengths, steps)                                # (B, T) an involution
        a, _ = self.backward_rnn(_gather(inputs, flip))
        return (_gather(a, flip),)

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        if q_state is None or q_state[0].shape[1] == 0:
            raise SeqviError("inference 'smoothing' reads the whole sequence: it cannot run on steps "
                              "it was not given (e.g. unprimed sampling); use a filtering inference")
        a = q_state[0]
        q_z = self.net(torch.cat([a[:, 0], model.previous_z(state)], -1))
        if self.residual:
            q_z = Normal(p_z.loc + q_z.loc, q_z.scale, validate_args=False)
        return Posterior(q_z, (a[:, 1:],))


def _reverse_index(lengths: Tensor, steps: int) -> Tensor:
    """Index (B, T) that reverses each sequence's first ``length`` steps and leaves its padding in place."""
    t = torch.arange(steps, device=lengths.device).expand(len(lengths), steps)
    last = (lengths - 1).unsqueeze(1)
    return torch.where(t <= last, last - t, t)


def _gather(seq: Tensor, index: Tensor) -> Tensor:
    return seq.gather(1, index.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
