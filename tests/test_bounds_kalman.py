"""The particle bounds against the exact Kalman log-likelihood of a linear-Gaussian model."""

import torch

from seqvi.inference import INFERENCE
from seqvi.models import MODELS
from seqvi.objectives import particle_bound
from seqvi.systems import LGSSM_SYSTEM


def sample(model, batch, steps, seed):
    g = torch.Generator().manual_seed(seed)
    sysm = {k: v.double() for k, v in model.system_matrices().items()}
    z = sysm["mu0"] + torch.randn(batch, 2, generator=g, dtype=torch.float64) @ sysm["P0"].sqrt()
    xs = []
    for t in range(steps):
        if t:
            z = z @ sysm["A"].T + torch.randn(batch, 2, generator=g, dtype=torch.float64) @ sysm["Q"].sqrt()
        xs.append(z @ sysm["C"].T + torch.randn(batch, 3, generator=g, dtype=torch.float64) @ sysm["R"].sqrt())
    return torch.stack(xs, 1).float()


def test_bounds_sit_below_exact_and_tighten_with_particles():
    torch.manual_seed(0)
    model = MODELS["lgssm"](x_dim=3, z_size=2, system="known")
    assert model.system_matrices()["A"].shape == (2, 2) and LGSSM_SYSTEM
    inference = INFERENCE["direct"](model, hidden_sizes=[16])
    x = sample(model, 8, 15, seed=1)
    mask = torch.ones(8, 15)
    mask[2, 9:] = 0
    exact = model.exact_log_likelihood(x, mask).sum().item()

    def mean_bound(k, resample, repeats=6):
        torch.manual_seed(1)
        with torch.no_grad():
            return sum(particle_bound(model, inference, x, mask, k, resample).log_p_hat.sum().item()
                       for _ in range(repeats)) / repeats

    elbo = mean_bound(1, False, repeats=40)
    iwae8, iwae128 = mean_bound(8, False), mean_bound(128, False)
    fivo8, fivo128 = mean_bound(8, True), mean_bound(128, True)
    assert elbo < iwae8 < iwae128 < exact
    assert elbo < fivo8 < fivo128 < exact
    # with an untrained proposal FIVO's resampling keeps it much tighter than IWAE on long sequences
    assert exact - fivo128 < exact - elbo
