"""The Kalman filter: exact filtering and log-likelihood of a linear-Gaussian state-space model.

For the system (all matrices given, full covariances allowed)::

    z_1 = mu0 + N(0, P0),   z_t = A z_{t-1} + N(0, Q),   x_t = C z_t + N(0, R)
    A (Z, Z), C (X, Z), Q (Z, Z), R (X, X), mu0 (Z,), P0 (Z, Z)

``kalman_filter(x, mask, ...)`` runs the textbook recursion (e.g. Sarkka,
"Bayesian Filtering and Smoothing", 2013, ch. 4) batched over x (B, T, X)::

    predict:  m^- = A m,  P^- = A P A^T + Q          (m^- = mu0, P^- = P0 at t = 1)
    score:    S = C P^- C^T + R,  log p(x_t | x_{<t}) = log N(x_t; C m^-, S)
    update:   K = P^- C^T S^{-1},  m = m^- + K (x_t - C m^-),
              P = (I - K C) P^- (I - K C)^T + K R K^T  (Joseph form: stays symmetric PSD)

A step with ``mask == 0`` is a missing observation: the filter predicts and
does not update, and its log-likelihood term is 0, so the terms of the real
steps sum to log p(x_observed) exactly, wherever the gaps are (trailing
padding being the usual case). Computed in float64 whatever the inputs'
dtype; results are float64. Pure functions of tensors: no parameters, no
state, usable from models and tests alike.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor


class KalmanResult(NamedTuple):
    log_lik: Tensor     # (B, T) log p(x_t | x_{<t}), 0 where mask == 0
    mean: Tensor        # (B, T, Z) E[z_t | x_{<=t}]
    cov: Tensor         # (B, T, Z, Z) Cov[z_t | x_{<=t}]


def kalman_filter(x: Tensor, A: Tensor, C: Tensor, Q: Tensor, R: Tensor, mu0: Tensor, P0: Tensor,
                  mask: Optional[Tensor] = None) -> KalmanResult:
    """Filter x (B, T, X) through the system; ``mask`` (B, T) marks observed steps (default: all)."""
    f64 = dict(dtype=torch.float64, device=x.device)
    x = x.to(**f64)
    A, C, Q, R, mu0, P0 = (t.to(**f64) for t in (A, C, Q, R, mu0, P0))
    batch, steps, x_dim = x.shape
    z_dim = A.shape[0]
    observed = torch.ones(batch, steps, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    eye = torch.eye(z_dim, **f64)
    m = mu0.expand(batch, z_dim)                         # (B, Z)
    P = P0.expand(batch, z_dim, z_dim)                   # (B, Z, Z)
    log_norm = 0.5 * x_dim * math.log(2 * math.pi)
    log_liks, means, covs = [], [], []
    for t in range(steps):
        if t > 0:
            m = m @ A.T
            P = A @ P @ A.T + Q
        S = C @ P @ C.T + R                              # (B, X, X)
        L = torch.linalg.cholesky(0.5 * (S + S.mT))
        v = x[:, t] - m @ C.T                            # (B, X) innovation
        white = torch.linalg.solve_triangular(L, v.unsqueeze(-1), upper=False).squeeze(-1)
        log_lik = -0.5 * white.pow(2).sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1) - log_norm
        K = torch.cholesky_solve(C @ P, L).mT            # (B, Z, X) = P C^T S^{-1} (P, S symmetric)
        I_KC = eye - K @ C
        m_new = m + (K @ v.unsqueeze(-1)).squeeze(-1)
        P_new = I_KC @ P @ I_KC.mT + K @ R @ K.mT
        obs = observed[:, t]
        m = torch.where(obs[:, None], m_new, m)
        P = torch.where(obs[:, None, None], P_new, P)
        log_liks.append(torch.where(obs, log_lik, torch.zeros_like(log_lik)))
        means.append(m)
        covs.append(P)
    return KalmanResult(torch.stack(log_liks, 1), torch.stack(means, 1), torch.stack(covs, 1))
