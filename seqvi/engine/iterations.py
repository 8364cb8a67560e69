"""AVF's per-iteration curve: the free energy at each inference iterate (Marino et al. 2018, Fig. 4).

For every step of every sequence of a split, AVF's iterates lambda^0 (the
prior) .. lambda^K are computed exactly as in filtering (``AVF.iterates``),
and F_t(lambda^k) is measured for each k on the same ``samples`` noise draws
(common random numbers, ``seqvi.free_energy.free_energy_at``), so the
curve's differences are the iterations' and not the noise's. The filter
advances with a sample from the final iterate, as AVF's own filtering does
(through ``transit`` and ``advance``, the step order of ``seqvi.models.base``).

Returns the mean F_t per real step at each iteration (nats/step). At the
trained iteration count it differs slightly from the evaluation's F column:
F draws one sample per step and its filter advances with the sample of the
iterate it scores, while the curve averages its own ``samples`` draws and its
filter advances with the last iterate's (K may exceed the trained count).
``seqvi eval`` says so in the curve's caption (``seqvi.report.iteration_table``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.distributions import Normal

from seqvi.data.batches import whole_batches
from seqvi.data.store import SplitData
from seqvi.free_energy import free_energy_at, reparameterize

CURVE_SAMPLES = 4   # noise draws per step, shared by every iterate (common random numbers)


@torch.no_grad()
def iteration_curve(model: Any, avf: Any, split: SplitData, *, iterations: int, batch_size: int,
                    device: torch.device, seed: int = 0, samples: int = CURVE_SAMPLES,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Mean F_t per real step at iterates 0..K, shape (K + 1,)."""
    model.eval()
    avf.eval()
    sums = np.zeros(iterations + 1)
    steps, done = 0.0, 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in whole_batches(split, batch_size):
            x, mask = batch.x.to(device), batch.mask.to(device)
            inputs = None if batch.inputs is None else batch.inputs.to(device)
            state = model.initial_state(x.shape[0])
            for t in range(x.shape[1]):
                x_t, m_t = x[:, t], mask[:, t]
                state = model.observe(model.condition(state, None if inputs is None else inputs[:, t]), x_t)
                p_z = model.prior(state)
                eps = torch.randn(samples, *p_z.loc.shape, device=device)
                lambdas = avf.iterates(model, x_t, state, p_z, iterations)
                for k, (loc, logvar) in enumerate(lambdas):
                    sums[k] += float((free_energy_at(model, loc, logvar, p_z, x_t, state, eps) * m_t).sum())
                steps += float(m_t.sum())
                loc, logvar = lambdas[-1]
                z = reparameterize(Normal(loc, (0.5 * logvar).exp(), validate_args=False))
                state = model.advance(model.transit(state, z), x_t, z)
            done += x.shape[0]
            if progress:
                progress(done, len(split))
    return sums / max(steps, 1.0)
