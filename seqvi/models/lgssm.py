"""LGSSM: the linear-Gaussian state-space model, the one model whose likelihood is exact.

Generative model, latent size Z, observation size X (Kalman 1960; e.g.
Bishop, "Pattern Recognition and Machine Learning", 2006, sec. 13.3)::

    p(z_1)             = N(mu0, diag(s0))
    p(z_t | z_{t-1})   = N(A z_{t-1}, diag(q))          A (Z, Z)
    p(x_t | z_t)       = N(C z_t, diag(r))              C (X, Z)

In the step contract the state is ``(z_{t-1}, started)``: ``prior`` returns
p(z_1) while ``started`` is 0 and the transition afterwards; ``advance``
stores z_t; ``emission`` ignores the state (x_t depends on z_t only).
``features(x_t, state) = [x_t, z_{t-1}, started]`` (X + Z + 1): the flag lets
a direct encoder tell the first step (prior N(mu0, s0)) from a later step
with z_{t-1} = 0 (prior N(0, q)). ``previous_z(state)`` is z_{t-1} (read by
the ``combiner`` inference).

``system="learned"`` fits A, C, mu0 and the log-variances (A starts at 0.9 I,
C at N(0, 1/Z) entries, variances at 1); ``system="known"`` fixes them to
``seqvi.systems.LGSSM_SYSTEM``, the system that generated the ``lgssm``
corpus, so that only q trains and every variational figure can be compared
with the exact log-likelihood. (Not named "true": YAML would read that as a
boolean.) ``exact_log_likelihood`` and ``exact_posterior`` run the Kalman
filter (``seqvi.models.kalman``) on the model's current parameters.

Departures: diagonal Q, R and initial covariance (the Kalman filter itself
takes full matrices); only the Gaussian likelihood makes sense here.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.models.base import SequentialModel
from seqvi.models.kalman import KalmanResult, kalman_filter
from seqvi.systems import LGSSM_SYSTEM

SYSTEMS = ("learned", "known")


class LGSSMState(NamedTuple):
    z: Tensor         # (B, Z) z_{t-1} (zeros before the first step)
    started: Tensor   # (B, 1) 0 before the first step, 1 after


class LGSSM(SequentialModel):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(x_dim=3, likelihood="gaussian", z_size=2)

    def __init__(self, x_dim: int, likelihood: str = "gaussian", z_size: int = 2, system: str = "learned"):
        super().__init__()
        if likelihood != "gaussian":
            raise ValueError(f"the LGSSM's emission is linear-Gaussian; it cannot model data with "
                             f"likelihood {likelihood!r}")
        if system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
        self.x_dim, self.z_dim, self.system = x_dim, z_size, system
        self.feature_size = x_dim + z_size + 1
        if system == "known":
            known = {k: torch.tensor(v, dtype=torch.float32) for k, v in LGSSM_SYSTEM.items()}
            if known["C"].shape != (x_dim, z_size):
                raise ValueError(f"system 'known' has x_dim {known['C'].shape[0]} and z_size "
                                 f"{known['C'].shape[1]}; got x_dim {x_dim} and z_size {z_size}")
            A, C, mu0 = known["A"], known["C"], known["mu0"]
            log_q, log_r, log_s0 = known["q"].log(), known["r"].log(), known["s0"].log()
        else:
            A = 0.9 * torch.eye(z_size)
            C = torch.randn(x_dim, z_size) / z_size ** 0.5
            mu0 = torch.zeros(z_size)
            log_q, log_r, log_s0 = torch.zeros(z_size), torch.zeros(x_dim), torch.zeros(z_size)
        learn = system == "learned"
        self.A = nn.Parameter(A, requires_grad=learn)            # p(z_t | z_{t-1}): mean A z_{t-1}
        self.log_q = nn.Parameter(log_q, requires_grad=learn)    # p(z_t | z_{t-1}): log diag(Q)
        self.mu0 = nn.Parameter(mu0, requires_grad=learn)        # p(z_1): mean
        self.log_s0 = nn.Parameter(log_s0, requires_grad=learn)  # p(z_1): log variances
        self.C = nn.Parameter(C, requires_grad=learn)            # p(x_t | z_t): mean C z_t
        self.log_r = nn.Parameter(log_r, requires_grad=learn)    # p(x_t | z_t): log diag(R)

    def initial_state(self, batch_size: int) -> LGSSMState:
        return LGSSMState(torch.zeros(batch_size, self.z_dim, device=self.device),
                          torch.zeros(batch_size, 1, device=self.device))

    def prior(self, state: LGSSMState) -> Normal:
        started = state.started
        loc = started * (state.z @ self.A.T) + (1 - started) * self.mu0
        var = started * self.log_q.exp() + (1 - started) * self.log_s0.exp()
        return Normal(loc, var.sqrt(), validate_args=False)

    def emission(self, z: Tensor, state: LGSSMState) -> Normal:
        loc = z @ self.C.T                                          # (B, X)
        return Normal(loc, (0.5 * self.log_r).exp().expand_as(loc), validate_args=False)

    def advance(self, state: LGSSMState, x: Tensor, z: Tensor) -> LGSSMState:
        return LGSSMState(z, torch.ones_like(state.started))

    def features(self, x: Tensor, state: LGSSMState) -> Tensor:
        return torch.cat([x, state.z, state.started], -1)         # (B, X + Z + 1)

    def previous_z(self, state: LGSSMState) -> Tensor:
        return state.z

    # ------------------------------------------------------------------ exact inference

    def system_matrices(self) -> dict[str, Tensor]:
        """A, C, Q, R, mu0, P0 as full matrices (diagonal covariances), detached."""
        return {"A": self.A.detach(), "C": self.C.detach(), "Q": torch.diag(self.log_q.detach().exp()),
                "R": torch.diag(self.log_r.detach().exp()), "mu0": self.mu0.detach(),
                "P0": torch.diag(self.log_s0.detach().exp())}

    def _filter(self, x: Tensor, mask: Optional[Tensor]) -> KalmanResult:
        return kalman_filter(x.flatten(2), mask=mask, **self.system_matrices())

    def exact_log_likelihood(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """log p(x_t | x_{<t}) per step, (B, T) float64; 0 on masked steps (treated as missing)."""
        return self._filter(x, mask).log_lik

    def exact_posterior(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Filtering posteriors p(z_t | x_{<=t}): means (B, T, Z) and covariances (B, T, Z, Z), float64."""
        result = self._filter(x, mask)
        return result.mean, result.cov
