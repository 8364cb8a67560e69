"""Direct filtering: each model's own encoder q(z_t | x_t, h_{t-1}).

    q(z_t | x_{<=t}, z_{<t}) = N(loc, scale),   [loc, scale] = MLP(model.features(x_t, h_{t-1}))

``features`` is where a model says what its encoder sees (VRNN: [phi_x(x_t),
h_{t-1}], as in Chung et al. 2015), so one class builds the encoder for every
model in the registry. This is the "custom-designed" baseline that AVF
(``iterative.py``) is compared against.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import GaussianHead, mlp


class DirectFilter(Inference):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(hidden_sizes=[6])

    reads_prior = False

    def __init__(self, model: Any, hidden_sizes: Optional[list[int]] = None):
        super().__init__()
        sizes = list(hidden_sizes) if hidden_sizes is not None else [model.feature_size // 2 or 1]
        self.net = nn.Sequential(mlp([model.feature_size] + sizes), GaussianHead(sizes[-1] if sizes else model.feature_size, model.z_dim))

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        """q(z_t | x_t, h_{t-1}) for a batch: x (B, *X) -> Normal over (B, Z)."""
        return Posterior(self.net(model.features(x, state)))
