"""SVG-LP: the model contract on 64x64 frames, gradients, skips, the discretized Gaussian, prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions import Normal

from seqvi.data.store import Store, StoreWriter
from seqvi.engine.predict import predict
from seqvi.errors import SeqviError
from seqvi.free_energy import log_likelihood
from seqvi.inference import INFERENCE
from seqvi.models import MODELS
from seqvi.models.discretized import DiscretizedNormal
from seqvi.objectives import filter_sequence, training_loss

B, T = 3, 4
TINY = dict(g_dim=8, z_size=3, rnn_size=8, channels=4, predictor_layers=2, prior_layers=1)


def tiny_svg(**kwargs):
    torch.manual_seed(0)
    return MODELS["svg"](x_dim=64 * 64, likelihood="gaussian", frame_shape=(1, 64, 64), **{**TINY, **kwargs})


def frames(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, 1, 64, 64), generator=g).float() / 255


@pytest.mark.parametrize("backbone", ["dcgan", "vgg"])
@pytest.mark.parametrize("emission", ["discretized", "gaussian", "bernoulli"])
def test_contract_shapes(backbone, emission):
    model = tiny_svg(backbone=backbone, emission=emission)
    state = model.initial_state(B)
    p_z = model.prior(state)
    assert isinstance(p_z, Normal) and p_z.loc.shape == (B, 3)
    z = p_z.rsample()
    p_x = model.emission(z, state)
    x = frames(B)
    assert p_x.mean.shape == (B, 1, 64, 64)
    assert log_likelihood(p_x, x).shape == (B,) and torch.isfinite(log_likelihood(p_x, x)).all()
    assert model.features(x, state).shape == (B, model.feature_size)
    new = model.advance(state, x, z)
    assert type(new) is type(state)
    assert all(a.shape == b.shape for a, b in zip(new, state))
    assert torch.equal(new.seen, torch.ones(B))


@pytest.mark.parametrize("inference", ["svg_posterior", "direct"])
@pytest.mark.parametrize("backbone", ["dcgan", "vgg"])
def test_gradient_reaches_every_parameter(inference, backbone):
    model = tiny_svg(backbone=backbone, skip_frames=2)
    q = INFERENCE[inference](model)
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    x, mask = frames(B, T), torch.ones(B, T)
    mask[0, 2:] = 0
    terms = filter_sequence(model, q, x, mask)
    assert len(calls) == T                              # features and advance share one encoding per frame
    assert torch.all(terms.recon[0, 2:] == 0) and torch.all(terms.kl >= 0)
    training_loss(terms).backward()
    for name, p in list(model.named_parameters()) + list(q.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_skips_come_from_the_last_conditioning_frame():
    model = tiny_svg(skip_frames=2).eval()
    z = torch.zeros(1, 3)
    with torch.no_grad():
        state = model.initial_state(1)
        assert all(s.abs().sum() == 0 for s in state[1:5])          # no frame yet: zero skips
        for t in range(4):
            prev = state
            state = model.advance(state, frames(1, seed=t), z)
            changed = any(not torch.equal(a, b) for a, b in zip(prev[1:5], state[1:5]))
            assert changed == (t < 2), t                                  # frozen after frame 2
            assert not torch.equal(prev.enc, state.enc)                   # e_t always follows the frames
        always = tiny_svg(skip_frames=0).eval()
        s = always.advance(always.advance(always.initial_state(1), frames(1, seed=0), z), frames(1, seed=1), z)
        assert torch.equal(s.skip1, always.encoder(frames(1, seed=1))[1][0])


def test_model_refuses_frames_of_another_size():
    with pytest.raises(ValueError, match=r"\(C, 64, 64\)"):
        MODELS["svg"](x_dim=88, likelihood="bernoulli", frame_shape=(88,))
    with pytest.raises(ValueError, match="model.backbone"):
        tiny_svg(backbone="resnet")


@pytest.mark.parametrize("loc,scale", [(0.5, 0.1), (0.02, 0.003), (1.7, 0.05), (-0.4, 0.2), (0.3, 40.0)])
def test_discretized_normal_is_a_distribution_over_the_grid(loc, scale):
    grid = torch.arange(256, dtype=torch.float64) / 255
    dist = DiscretizedNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    log_p = dist.log_prob(grid)
    assert torch.isfinite(log_p).all() and torch.all(log_p <= 0)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)
    # an interior bin is a difference of CDFs (checked with scipy where it does not underflow);
    # the end bins take the tails, in log space
    h, k = 0.5 / 255, 100
    expected = norm.cdf(k / 255 + h, loc, scale) - norm.cdf(k / 255 - h, loc, scale)
    if expected > 1e-12:
        assert log_p[k].exp().item() == pytest.approx(expected, rel=1e-6)
    assert log_p[0].item() == pytest.approx(norm.logcdf(h, loc, scale), rel=1e-9)
    assert log_p[255].item() == pytest.approx(norm.logsf(1 - h, loc, scale), rel=1e-9)


def test_discretized_normal_far_tail_has_finite_gradients():
    loc = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    scale = torch.tensor([1e-3, 1e-3, 1e-4], requires_grad=True)
    log_p = DiscretizedNormal(loc, scale).log_prob(torch.tensor([1.0, 0.0, 0.9]))
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and log_p.max() < -1000
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    sample = DiscretizedNormal(torch.full((1000,), 0.5), torch.full((1000,), 0.2)).sample()
    assert sample.min() >= 0 and sample.max() <= 1 and torch.equal(sample * 255, (sample * 255).round())


def test_best_of_n_prediction_scores(tmp_path):
    writer = StoreWriter(tmp_path / "v.h5", (1, 64, 64), "uint8")
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for i, length in enumerate((9, 5, 12)):
            writer.add(split, f"{split}{i}", rng.integers(0, 256, (length, 1, 64, 64), dtype=np.uint8))
    path = writer.close({"value_scale": 1 / 255, "likelihood": "gaussian"})
    model = tiny_svg(skip_frames=3)
    q = INFERENCE["svg_posterior"](model)
    with Store(path) as store:
        split = store.split("test")
        one = predict(model, q, split, "test", context=3, horizons=(2, 5), samples=1, seed=1)
        many = predict(model, q, split, "test", context=3, horizons=(2, 5), samples=4, seed=1, batch_size=4)
        with pytest.raises(SeqviError, match=r"v\.h5: split 'test': no sequence has .* = 20 frames \(longest: 12\)"):
            predict(model, q, split, "test", context=10, horizons=(10,), samples=1)
    assert one.num_sequences == many.num_sequences == 2                   # the 5-frame sequence is too short
    assert one.best_ssim[5].shape == (5,) and one.best_psnr[2].shape == (2,)
    np.testing.assert_allclose(one.best_ssim[5], one.mean_ssim)           # best of one is that one
    np.testing.assert_allclose(one.best_psnr[5], one.mean_psnr)
    for h in (2, 5):                                                      # best of 4 beats their mean
        assert many.best_ssim[h].mean() >= many.mean_ssim[:h].mean() - 1e-12
        assert many.best_psnr[h].mean() >= many.mean_psnr[:h].mean() - 1e-12
