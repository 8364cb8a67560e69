"""SVG-LP: stochastic video generation with a learned prior (Denton & Fergus, ICML 2018, arXiv 1802.07687).

For frames x_t (B, C, 64, 64), encoder codes e_t = enc(x_t) (B, G) with skip
features s_t, latent z_t (B, Z) and LSTMs of size R::

    p(z_t | x_{<t})           = N(mu, sigma),  [mu, sigma] = head(LSTM_prior(e_{t-1}))
    p(x_t | z_t, x_{<t})      = discretized N(sigmoid(dec(g_t, s)), sigma_x)  (or Bernoulli(logits=dec(.)))
    g_t                       = tanh(W LSTM_pred([e_{t-1}, z_t]))             (B, G)

with ``s`` the skips of the last conditioning frame: the decoder of frame t
uses the skips of x_{t-1} while t <= ``skip_frames``, and those of frame
``skip_frames`` after that (0: always those of x_{t-1}, Denton's
``--last_frame_skip``). The state holds e_{t-1}, the skips, both LSTM states
and the count of frames seen; ``prior`` and ``emission`` run one LSTM step
from it, ``advance`` runs the same steps and encodes x_t.

The posterior of SVG, q(z_t | x_{<=t}) = N(head(LSTM_post(e_t))), is an
inference procedure (``seqvi.inference.svg_posterior``); ``features(x, state)``
is e_t = enc(x_t), shared with it as in the paper. The generic ``direct``
encoder on these features is the per-frame posterior q(z_t | x_t).

Departures: frame 1 is modelled too (from a learned e_0 and zero skips;
SVG only predicts frames after the first); the emission is a Gaussian with
a learned per-pixel, input-independent log-variance, discretized to the
8-bit grid (the AVF paper's choice, reported in nats per frame), instead of
SVG's MSE with a fixed weight beta; prior and posterior scales are
softplus + 1e-4 rather than exp(logvar / 2). Denton's code takes the skips
from frame n_past - 1 (it updates them while i < n_past); ``skip_frames``
counts frames from 1, so ``skip_frames = 9`` reproduces that for n_past = 10.
The encoder result for the latest x is reused when ``features`` and
``advance`` see the same tensor, so each frame is encoded once.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Normal

from seqvi.models.base import LIKELIHOODS, GaussianHead, SequentialModel
from seqvi.models.conv64 import BACKBONES, NORMS
from seqvi.models.discretized import DiscretizedNormal

LOG_VAR_RANGE = (-15.0, 5.0)


class SVGState(NamedTuple):
    enc: Tensor       # (B, G)       e_{t-1}
    skip1: Tensor     # (B, nf, ., .) skips of the last conditioning frame, finest first
    skip2: Tensor
    skip3: Tensor
    skip4: Tensor
    pred_h: Tensor    # (B, Lp, R)   frame predictor LSTM
    pred_c: Tensor
    prior_h: Tensor   # (B, Lq, R)   prior LSTM
    prior_c: Tensor
    seen: Tensor      # (B,)          frames observed so far


class LSTMStack(nn.Module):
    """Denton's ``lstm``: a linear embedding into stacked LSTM cells; states batch first (B, L, R)."""

    def __init__(self, in_size: int, hidden_size: int, layers: int):
        super().__init__()
        self.hidden_size, self.layers = hidden_size, layers
        self.embed = nn.Linear(in_size, hidden_size)
        self.cells = nn.ModuleList(nn.LSTMCell(hidden_size, hidden_size) for _ in range(layers))

    def zeros(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch_size, self.layers, self.hidden_size, device=device)
        return zeros, zeros

    def step(self, inp: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step: (top output (B, R), new h, new c)."""
        out, hs, cs = self.embed(inp), [], []
        for i, cell in enumerate(self.cells):
            hi, ci = cell(out, (h[:, i], c[:, i]))
            hs.append(hi)
            cs.append(ci)
            out = hi
        return out, torch.stack(hs, 1), torch.stack(cs, 1)


class SVG(SequentialModel):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(x_dim=64 * 64, likelihood="gaussian", frame_shape=(1, 64, 64), g_dim=8, z_size=3,
                       rnn_size=8, backbone="dcgan", channels=4, norm="none", skip_frames=1)

    def __init__(self, x_dim: int, likelihood: str = "gaussian", frame_shape: tuple = (1, 64, 64),
                 g_dim: int = 128, z_size: int = 24, rnn_size: int = 256, predictor_layers: int = 2,
                 prior_layers: int = 1, backbone: str = "vgg", channels: int = 64, norm: str = "batch",
                 skip_frames: int = 10, emission: Optional[str] = None, learned_scale: bool = True,
                 pixel_scale: float = 0.1, bins: int = 256):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        frame_shape = tuple(frame_shape)
        if len(frame_shape) != 3 or frame_shape[1:] != (64, 64):
            raise ValueError(f"SVG needs frames of shape (C, 64, 64), the data has {frame_shape}")
        emission = emission or ("bernoulli" if likelihood == "bernoulli" else "discretized")
        for key, value, known in (("backbone", backbone, BACKBONES), ("norm", norm, NORMS),
                                  ("emission", emission, EMISSIONS)):
            if value not in known:
                raise ValueError(f"model.{key} must be one of {', '.join(known)}, got {value!r}")
        self.x_dim, self.z_dim, self.feature_size = x_dim, z_size, g_dim
        self.frame_shape, self.skip_frames, self.emission_name, self.bins = frame_shape, skip_frames, emission, bins
        enc_cls, dec_cls = BACKBONES[backbone]
        self.encoder = enc_cls(frame_shape[0], g_dim, channels, norm)         # e_t, skips = enc(x_t)
        self.decoder = dec_cls(frame_shape[0], g_dim, channels, norm)         # logits of p(x_t | .)
        self.predictor = LSTMStack(g_dim + z_size, rnn_size, predictor_layers)
        self.predictor_out = nn.Sequential(nn.Linear(rnn_size, g_dim), nn.Tanh())
        self.prior_rnn = LSTMStack(g_dim, rnn_size, prior_layers)            # parameterizes p(z_t | x_{<t})
        self.prior_head = GaussianHead(rnn_size, z_size)
        self.enc0 = nn.Parameter(torch.zeros(g_dim))                         # e_0, before the first frame
        log_var = torch.full(frame_shape, 2.0 * math.log(pixel_scale))
        if learned_scale:
            self.log_var = nn.Parameter(log_var)                             # per-pixel log sigma_x^2
        else:
            self.register_buffer("log_var", log_var)
        self._cache: tuple | None = None

    def initial_state(self, batch_size: int) -> SVGState:
        self._cache = None
        device = self.device
        skips = [torch.zeros(batch_size, *shape, device=device) for shape in self.encoder.skip_shapes]
        pred = self.predictor.zeros(batch_size, device)
        prior = self.prior_rnn.zeros(batch_size, device)
        return SVGState(self.enc0.expand(batch_size, -1), *skips, *pred, *prior,
                        torch.zeros(batch_size, device=device))

    def prior(self, state: SVGState) -> Normal:
        top, _, _ = self.prior_rnn.step(state.enc, state.prior_h, state.prior_c)
        return self.prior_head(top)

    def emission(self, z: Tensor, state: SVGState) -> Distribution:
        top, _, _ = self.predictor.step(torch.cat([state.enc, z], -1), state.pred_h, state.pred_c)
        logits = self.decoder(self.predictor_out(top), list(state[1:5]))     # (B, C, 64, 64)
        log_var = self.log_var.clamp(*LOG_VAR_RANGE)
        return EMISSIONS[self.emission_name](logits, (0.5 * log_var).exp(), self.bins)

    def advance(self, state: SVGState, x: Tensor, z: Tensor) -> SVGState:
        _, pred_h, pred_c = self.predictor.step(torch.cat([state.enc, z], -1), state.pred_h, state.pred_c)
        _, prior_h, prior_c = self.prior_rnn.step(state.enc, state.prior_h, state.prior_c)
        enc, skips = self._encode(x)
        if self.skip_frames > 0:
            keep = (state.seen >= self.skip_frames).view(-1, 1, 1, 1)        # past the conditioning frames
            skips = [torch.where(keep, old, new) for old, new in zip(state[1:5], skips)]
        return SVGState(enc, *skips, pred_h, pred_c, prior_h, prior_c, state.seen + 1)

    def features(self, x: Tensor, state: SVGState) -> Tensor:
        return self._encode(x)[0]                                            # (B, G) e_t

    def _encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        key = (torch.is_grad_enabled(), self.training)
        if self._cache is not None and self._cache[0] is x and self._cache[1] == key:
            return self._cache[2]
        out = self.encoder(x.reshape(-1, *self.frame_shape))
        self._cache = (x, key, out)
        return out


def _discretized(logits: Tensor, scale: Tensor, bins: int) -> DiscretizedNormal:
    return DiscretizedNormal(torch.sigmoid(logits), scale, bins)


def _gaussian(logits: Tensor, scale: Tensor, bins: int) -> Normal:
    return Normal(torch.sigmoid(logits), scale.expand_as(logits), validate_args=False)


def _bernoulli(logits: Tensor, scale: Tensor, bins: int) -> Bernoulli:
    return Bernoulli(logits=logits, validate_args=False)


EMISSIONS = {"discretized": _discretized, "gaussian": _gaussian, "bernoulli": _bernoulli}
