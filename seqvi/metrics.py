"""Frame quality metrics for video prediction: PSNR and SSIM, batched in torch.

For frames x, y (..., C, H, W) with values in [0, L] (L = ``data_range`` = 1)::

    PSNR(x, y) = 10 log10(L^2 / MSE(x, y))          MSE over C, H, W; floored at 1e-10 (100 dB)
    SSIM(x, y) = mean over C and valid positions of
                 (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

with local statistics under an 11x11 Gaussian window (sigma 1.5, weights
summing to 1; separable, applied as two banded matrix products; in float64
for float64 frames, else float32, good to ~1e-6 after centring each frame), C1 = (0.01 L)^2, C2 = (0.03 L)^2, population (biased)
covariances, and only the positions where the window fits inside the frame
("valid"), as in Wang et al., IEEE TIP 2004, and their reference code, which
is what SVG's evaluation uses. scikit-image's ``structural_similarity``
(``gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1``) filters with reflected borders and then crops 5 pixels, so
it averages the same valid positions and agrees to floating-point error.
"""

from __future__ import annotations

import torch
from torch import Tensor

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
MIN_MSE = 1e-10
CHUNK = 256  # frames filtered at once (memory)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """(..., C, H, W) pairs -> (...,) PSNR in dB."""
    mse = (x.double() - y.double()).pow(2).flatten(-3).mean(-1)
    out = 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(MIN_MSE))
    return out.to(x.dtype if x.is_floating_point() else torch.float32)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """(size, size) Gaussian weights summing to 1 (MATLAB's fspecial('gaussian', size, sigma))."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    w = torch.outer(g, g)
    return w / w.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """(..., C, H, W) pairs -> (...,) mean SSIM; frames must be at least 11x11."""
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.shape[-1] < WINDOW or x.shape[-2] < WINDOW:
        raise ValueError(f"ssim: frames must be at least {WINDOW}x{WINDOW}, got {tuple(x.shape[-2:])}")
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    xs = x.reshape(-1, h, w)                                      # (N*C, H, W)
    ys = y.reshape(-1, h, w)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows, cols = _band(h, xs.device).to(dtype), _band(w, xs.device).to(dtype)   # (H-10, H), (W-10, W)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    means = []
    for i in range(0, len(xs), CHUNK):
        a, b = xs[i:i + CHUNK].to(dtype), ys[i:i + CHUNK].to(dtype)
        # (co)variances of frames minus their global means: the same values, less float cancellation
        mean_a, mean_b = a.mean((1, 2), keepdim=True), b.mean((1, 2), keepdim=True)
        a, b = a - mean_a, b - mean_b
        m_a, m_b, aa, bb, ab = (rows @ v @ cols.T for v in (a, b, a * a, b * b, a * b))  # valid filtering
        var_x, var_y, cov = aa - m_a ** 2, bb - m_b ** 2, ab - m_a * m_b
        mu_x, mu_y = m_a + mean_a, m_b + mean_b
        smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        means.append(smap.flatten(1).mean(1))
    out = torch.cat(means).view(*lead, c).mean(-1)
    return out.to(x.dtype if x.is_floating_point() else torch.float32)


def _band(n: int, device: torch.device) -> Tensor:
    """(n - 10, n) float64: row i holds the 1-D Gaussian at columns i..i+10 ('valid' filtering)."""
    g = gaussian_window()[WINDOW // 2]
    g = g / g.sum()
    band = torch.zeros(n - WINDOW + 1, n, dtype=torch.float64)
    for i in range(n - WINDOW + 1):
        band[i, i:i + WINDOW] = g
    return band.to(device)
