"""SVG's recurrent posterior (Denton & Fergus 2018): the direct filtering baseline for SVG.

    q(z_t | x_{<=t}) = N(loc, scale),  [loc, scale] = head(LSTM_phi(e_t)),  e_t = model.features(x_t, h) (B, G)

The LSTM state (B, L, R) is q's own recurrence (``q_state``), carried by the
filtering loop next to the model's state. The frame encoder is the model's
(``features``), shared with the generative model as in the paper, so its
gradients come from both the reconstruction and the KL. Works with any model
whose ``features`` summarize one frame; for SVG it is the paper's posterior.
Departure: softplus scale + 1e-4 instead of exp(logvar / 2).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from torch import Tensor
from torch.distributions import Normal

from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import GaussianHead
from seqvi.models.svg import LSTMStack


class PosteriorState(NamedTuple):
    h: Tensor  # (B, L, R)
    c: Tensor  # (B, L, R)


class SVGPosterior(Inference):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(rnn_size=8)
    TEST_MODEL = "svg"   # the registered model seqvi.testing checks it on

    def __init__(self, model: Any, rnn_size: int = 256, layers: int = 1):
        super().__init__()
        self.rnn = LSTMStack(model.feature_size, rnn_size, layers)
        self.head = GaussianHead(rnn_size, model.z_dim)

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                      kl_weight: float = 1.0) -> PosteriorState:
        """Zero LSTM state; a filtering posterior never reads ``x`` ahead."""
        return PosteriorState(*self.rnn.zeros(batch_size, self.head.loc.weight.device))

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        """q(z_t | x_{<=t}) for a batch: x (B, *X) -> Normal over (B, Z), and the next LSTM state."""
        top, h, c = self.rnn.step(model.features(x, state), q_state.h, q_state.c)
        return Posterior(self.head(top), PosteriorState(h, c))
