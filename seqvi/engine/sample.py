"""Sampling sequences from a trained model, optionally primed by real data.

Unprimed: z_t ~ p(z_t | h_{t-1}), x_t ~ p(x_t | z_t, h_{t-1}), h_t = advance.
Primed by x_{1:P}: the first P steps are filtered (z_t ~ q(z_t | x_t, h_{t-1})
with the run's inference), their frames kept as given, then generation
continues from the prior. Per-step inputs u (N, length, U) (actions), when
given, condition every step (``model.condition``). Output x is
(N, length, *X); ``primed`` steps are the real ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def sample_sequences(model: Any, inference: Any, num: int, length: int, *,
                     prime: Tensor | None = None, seed: int = 0, use_mean: bool = False,
                 inputs: Tensor | None = None) -> Tensor:
    model.eval()
    inference.eval()
    device = model.device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        state = model.initial_state(num)
        q_state = inference.initial_state(num, prime)
        frames = []
        primed = 0 if prime is None else prime.shape[1]
        for t in range(length):
            state = model.condition(state, None if inputs is None else inputs[:, t].to(device))
            p_z = model.prior(state)
            if t < primed:
                x_t = prime[:, t].to(device)
                q = inference.posterior(model, x_t, state, p_z, q_state)
                z, q_state = q.q_z.sample(), q.q_state
            else:
                z = p_z.sample()
                p_x = model.emission(z, state)
                x_t = p_x.mean if use_mean else p_x.sample()
            frames.append(x_t)
            state = model.advance(state, x_t, z)
    return torch.stack(frames, 1)
