"""Frame quality metrics for video prediction: PSNR and SSIM, batched in torch.

For frames x, y (..., C, H, W) with values in [0, L] (L = ``data_range`` = 1)::

    PSNR(x, y) = 10 log10(L^2 / MSE(x, y))          MSE over C, H, W; floored at 1e-10 (100 dB)
    SSIM(x, y) = mean over C and valid positions of
                 (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

with local statistics under an 11x11 Gaussian window (sigma 1.5, weights
summing to 1), C1 = (0.01 L)^2, C2 = (0.03 L)^2, population (biased)
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
from torch.nn import functional as F

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
MIN_MSE = 1e-10


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
    xs = x.reshape(-1, 1, h, w).double()                          # (N*C, 1, H, W)
    ys = y.reshape(-1, 1, h, w).double()
    window = gaussian_window().to(xs.device)[None, None]          # (1, 1, 11, 11)
    stats = F.conv2d(torch.cat([xs, ys, xs * xs, ys * ys, xs * ys], 1).view(-1, 1, h, w), window)
    mu_x, mu_y, xx, yy, xy = stats.view(-1, 5, *stats.shape[-2:]).unbind(1)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return smap.flatten(1).mean(1).view(*lead, c).mean(-1).to(x.dtype if x.is_floating_point() else torch.float32)
