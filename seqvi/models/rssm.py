"""RSSM: PlaNet's recurrent state-space model (Hafner et al., ICML 2019, "Learning Latent Dynamics for
Planning from Pixels", arXiv 1811.04551, sec. 3).

The state is ``(h, z)``: a deterministic GRU state h (B, H) and the latest
stochastic state z (B, Z). With per-step inputs u_t = a_{t-1} (B, A), the
actions, stored row-aligned with the observations (``seqvi.data.episodes``)::

    h_t              = GRU(h_{t-1}, elu(W [z_{t-1}, a_{t-1}]))      condition(state, u)   -> (h_t, z_{t-1})
    p(z_t | h_t)     = N(mu(h_t), sigma(h_t))                       prior(state)          (B, Z)
    p(o_t | h_t, z_t) = N(dec([h_t, z_t]), .)  or Bernoulli          emission(z, state)    (B, *X)
    p(r_t | h_t, z_t) = N(mlp([h_t, z_t]), 1)                       reward(z, state)      (B,)
    advance(state, x, z) = (h_t, z_t)                               stores z; x is not read
    features(x, state)   = [enc(o_t), h_t]                          (B, E + H) for the filtering
                                                                    posterior q(z_t | h_t, o_t)

so ``advance_needs_x`` is False: imagination rolls the model forward
without decoding observations. ``condition`` must run once per step, before
``prior``, also for data without actions (``u = None`` is a zero action of
``input_dim`` columns; ``input_dim = 0``: no action at all): it is the
model's only deterministic transition. sigma = softplus(.) + ``min_scale``
(PlaNet: 0.1, which keeps the KL and the planner's samples well-behaved).

Observations:

* state vectors (``frame_shape`` (D,)): enc = MLP(o_t) of ``hidden_size``
  units; the emission is an MLP of [h_t, z_t] to a diagonal Normal with a
  learned scale (``EmissionHead``), or with the fixed scale ``obs_scale``
  (PlaNet's emissions have a fixed unit variance), or Bernoulli logits for
  binary data. A fixed scale keeps the state in z: with a learned one, the
  emission can explain a hard feature (Pendulum's sin and angular speed) as
  noise by raising its scale, and q then stops encoding it (measured: a
  learned scale reconstructed cos but predicted sin and speed as 0 after
  1,200 updates; README, World models).
* 64x64 frames (``frame_shape`` (C, 64, 64)): the DCGAN-64 encoder and
  decoder of ``seqvi.models.conv64`` with width ``channels`` (PlaNet: 32) and
  a code of ``embed_size`` units (PlaNet: 1,024); the decoder reads
  Linear([h_t, z_t]) as its code. The emission is N(link(logits),
  ``pixel_scale``) (PlaNet: a unit-variance Gaussian) or Bernoulli(logits).
  ``pixel_link`` (``PIXEL_LINKS``): ``sigmoid`` keeps the mean in (0, 1);
  ``shifted`` is PlaNet's linear mean, 0.5 + logits (PlaNet decodes
  frames - 0.5). Measured on Pendulum frames (README, World models): with
  ``sigmoid`` the decoder fit the white background by saturating, whose
  gradient then vanished on the rod's pixels too, and the model never drew
  the rod (KL 0.08 nats per step: q unused); the linear mean has no such
  plateau.

Sizes default to PlaNet's: GRU 200, z 30, hidden layers 200, the input
embedding of [z, a] 200, ELU activations.

Departures: conv64's decoder is U-Net shaped (SVG's); the RSSM's emission
must see only (h_t, z_t), so it gets zero skips (its skip weights read
zeros: exact, at the cost of the idle channels). PlaNet's reward head has
two hidden layers as here; the filtering posterior q(z_t | h_t, o_t) is not
part of this file: the direct encoder (``seqvi.inference.direct``) sees
``features``, and AVF needs nothing more.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Normal

from seqvi.models.base import LIKELIHOODS, EmissionHead, SequentialModel, mlp
from seqvi.models.conv64 import BACKBONES, NORMS


def _shifted(logits: Tensor) -> Tensor:
    return logits + 0.5


PIXEL_LINKS = {"sigmoid": torch.sigmoid, "shifted": _shifted}   # the mean of N(., pixel_scale) from the decoder


class RSSMState(NamedTuple):
    h: Tensor   # (B, H) deterministic state
    z: Tensor   # (B, Z) latest stochastic state


class ScaledGaussian(nn.Module):
    """Features -> N(loc, softplus(.) + min_scale): PlaNet's Gaussian heads."""

    def __init__(self, in_size: int, out_size: int, min_scale: float):
        super().__init__()
        self.loc, self.scale, self.min_scale = nn.Linear(in_size, out_size), nn.Linear(in_size, out_size), min_scale

    def forward(self, features: Tensor) -> Normal:
        scale = nn.functional.softplus(self.scale(features)) + self.min_scale
        return Normal(self.loc(features), scale, validate_args=False)


class RSSM(SequentialModel):
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(x_dim=6, likelihood="gaussian", deter_size=8, z_size=3, hidden_size=8, embed_size=8)

    rowwise = True                # prior and emission are row-wise (no batch norm unless norm="batch")
    advance_needs_x = False

    def __init__(self, x_dim: int, likelihood: str = "gaussian", frame_shape: tuple = (), input_dim: int = 0,
                 deter_size: int = 200, z_size: int = 30, hidden_size: int = 200, embed_size: int = 1024,
                 channels: int = 32, backbone: str = "dcgan", norm: str = "none", min_scale: float = 0.1,
                 pixel_scale: float = 1.0, obs_scale: Optional[float] = None, pixel_link: str = "sigmoid"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        frame_shape = tuple(frame_shape) or (x_dim,)
        self.pixels = len(frame_shape) == 3
        if self.pixels and frame_shape[1:] != (64, 64):
            raise ValueError(f"RSSM frames must be (C, 64, 64), the data has {frame_shape}")
        if not self.pixels and frame_shape != (x_dim,):
            raise ValueError(f"RSSM observations must be vectors (D,) or frames (C, 64, 64), got {frame_shape}")
        if min(deter_size, z_size, hidden_size, embed_size, channels) < 1 or input_dim < 0 or min_scale <= 0:
            raise ValueError("RSSM sizes must be positive (input_dim >= 0) and min_scale > 0")
        if obs_scale is not None and (obs_scale <= 0 or likelihood != "gaussian"):
            raise ValueError("RSSM obs_scale must be positive, and is for a Gaussian emission")
        for key, value, known in (("backbone", backbone, BACKBONES), ("norm", norm, NORMS),
                                  ("pixel_link", pixel_link, PIXEL_LINKS)):
            if value not in known:
                raise ValueError(f"model.{key} must be one of {', '.join(known)}, got {value!r}")
        self.x_dim, self.z_dim, self.input_dim, self.deter_size = x_dim, z_size, input_dim, deter_size
        self.frame_shape, self.likelihood, self.pixel_scale = frame_shape, likelihood, pixel_scale
        self.obs_scale, self.pixel_link = obs_scale, PIXEL_LINKS[pixel_link]
        self.rowwise = norm != "batch"
        H, Z, F = deter_size, z_size, hidden_size
        self.embed = mlp([Z + input_dim, F], nn.ELU)                   # elu(W [z_{t-1}, a_{t-1}])
        self.cell = nn.GRUCell(F, H)                                    # h_t = GRU(h_{t-1}, .)
        self.prior_net = nn.Sequential(mlp([H, F], nn.ELU), ScaledGaussian(F, Z, min_scale))   # p(z_t | h_t)
        self.reward_net = mlp([H + Z, F, F, 1], nn.ELU, last_activation=False)              # mean of p(r_t | h_t, z_t)
        if self.pixels:
            enc_cls, dec_cls = BACKBONES[backbone]
            self.encoder = enc_cls(frame_shape[0], embed_size, channels, norm)               # enc(o_t), code (B, E)
            self.decoder = dec_cls(frame_shape[0], embed_size, channels, norm)               # logits of p(o_t | .)
            self.decode_in = nn.Linear(H + Z, embed_size)
            self.feature_size = embed_size + H
        else:
            self.encoder = mlp([x_dim, F], nn.ELU)                                           # enc(o_t), (B, F)
            head = nn.Linear(F, x_dim) if obs_scale is not None else EmissionHead(F, x_dim, likelihood)
            self.decoder = nn.Sequential(mlp([H + Z, F, F], nn.ELU), head)          # loc, or p(o_t | .)
            self.feature_size = F + H

    def initial_state(self, batch_size: int) -> RSSMState:
        device = self.device
        return RSSMState(torch.zeros(batch_size, self.deter_size, device=device),
                         torch.zeros(batch_size, self.z_dim, device=device))

    def condition(self, state: RSSMState, u: Optional[Tensor] = None) -> RSSMState:
        """Fold u_t = a_{t-1} (B, A) into the state: the GRU step to h_t (u None: a zero action)."""
        if u is None:
            u = state.z.new_zeros(state.z.shape[0], self.input_dim)
        elif u.shape[-1] != self.input_dim:
            raise ValueError(f"RSSM: inputs have {u.shape[-1]} columns, the model was built for {self.input_dim}")
        h = self.cell(self.embed(torch.cat([state.z, u], -1)), state.h)
        return RSSMState(h, state.z)

    def prior(self, state: RSSMState) -> Normal:
        return self.prior_net(state.h)                                                      # (B, Z)

    def emission(self, z: Tensor, state: RSSMState) -> Distribution:
        hz = torch.cat([state.h, z], -1)                                                    # (B, H + Z)
        if not self.pixels:
            if self.obs_scale is not None:                                                  # N(loc, obs_scale)
                loc = self.decoder(hz)
                return Normal(loc, torch.full_like(loc, self.obs_scale), validate_args=False)
            return self.decoder(hz)                                                         # (B, D)
        code = self.decode_in(hz)
        skips = [code.new_zeros(code.shape[0], *shape) for shape in self.encoder.skip_shapes]
        logits = self.decoder(code, skips)                                                  # (B, C, 64, 64)
        if self.likelihood == "bernoulli":
            return Bernoulli(logits=logits, validate_args=False)
        return Normal(self.pixel_link(logits), torch.full_like(logits, self.pixel_scale), validate_args=False)

    def reward(self, z: Tensor, state: RSSMState) -> Normal:
        mean = self.reward_net(torch.cat([state.h, z], -1)).squeeze(-1)                     # (B,)
        return Normal(mean, torch.ones_like(mean), validate_args=False)

    def advance(self, state: RSSMState, x: Optional[Tensor], z: Tensor) -> RSSMState:
        return RSSMState(state.h, z)

    def features(self, x: Tensor, state: RSSMState) -> Tensor:
        if self.pixels:
            code, _ = self.encoder(x.reshape(-1, *self.frame_shape))
        else:
            code = self.encoder(x.reshape(x.shape[0], -1))
        return torch.cat([code, state.h], -1)                                               # (B, E + H)
