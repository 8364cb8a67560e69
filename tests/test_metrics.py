"""PSNR and SSIM: identities, a hand-computable case, and scikit-image when it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqvi.metrics import K1, K2, gaussian_window, psnr, ssim


def images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_psnr_of_a_known_mse():
    x = images(2, 1, 16, 16) * 0.8
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0, dtype=torch.float64))  # MSE 0.01
    y = x.clone()
    y[0, 0, 0, :4] += 0.5                                                  # MSE 4 * 0.25 / 256 on image 0
    assert psnr(x, y)[0].item() == pytest.approx(10 * math.log10(256 / 1.0))
    assert psnr(x, x)[0].item() == pytest.approx(100.0)                  # floored, not infinite


def test_ssim_identity_symmetry_and_shape():
    x, y = images(2, 3, 1, 20, 24, seed=1), images(2, 3, 1, 20, 24, seed=2)
    assert ssim(x, y).shape == (2, 3)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    torch.testing.assert_close(ssim(x.float(), y.float()), ssim(x, y).float(), atol=1e-6, rtol=0)
    noisy = [ssim(x, (x + s * images(*x.shape, seed=3)).clamp(0, 1)).mean() for s in (0.05, 0.2, 0.5)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.3, 0.7
    c1 = K1 ** 2
    for dtype in (torch.float32, torch.float64):
        x, y = torch.full((1, 16, 16), a, dtype=dtype), torch.full((1, 16, 16), b, dtype=dtype)
        # no variance anywhere: contrast-structure = C2 / C2, luminance = (2ab + C1) / (a^2 + b^2 + C1)
        assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    assert K2 == 0.03


def test_gaussian_window():
    w = gaussian_window()
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0)
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0)) and w.argmax().item() == 60
    assert (w[5, 5] / w[5, 6]).item() == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)))


def test_ssim_refuses_small_or_mismatched_frames():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(torch.zeros(1, 16, 16), torch.zeros(1, 16, 17))


def test_agrees_with_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((40, 48))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0)
    assert ssim(torch.tensor(a)[None], torch.tensor(b)[None]).item() == pytest.approx(ref, abs=1e-10)
    assert psnr(torch.tensor(a)[None], torch.tensor(b)[None]).item() == pytest.approx(
        metrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
