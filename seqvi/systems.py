"""Fixed dynamical systems shared by the synthetic data and the models that know them.

``LGSSM_SYSTEM`` is the linear-Gaussian state-space model behind the
``lgssm`` corpus (``seqvi.data.synthetic`` samples from it) and behind
``LGSSM(system="true")`` (``seqvi.models.lgssm``), the oracle whose exact
log-likelihood (Kalman filter) bounds every variational figure from above::

    z_1 = mu0 + N(0, diag(s0))                 z in R^2
    z_t = A z_{t-1} + N(0, diag(q))            A: rotation by 0.32 rad, scaled by 0.949 (stable, oscillating)
    x_t = C z_t + N(0, diag(r))                x in R^3

Variances, not standard deviations. This module is neutral ground: data must
not import models, and models should not import data, so both import this.
No torch or numpy here: plain nested lists.
"""

from __future__ import annotations

LGSSM_SYSTEM: dict[str, list] = {
    "A": [[0.90, -0.30],
          [0.30, 0.90]],
    "C": [[1.0, 0.0],
          [0.0, 1.0],
          [0.5, -0.5]],
    "q": [0.10, 0.10],
    "r": [0.20, 0.20, 0.30],
    "mu0": [0.0, 0.0],
    "s0": [1.0, 1.0],
}
