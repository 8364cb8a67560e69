"""The Kalman filter against brute-force Gaussian algebra; the LGSSM's bounds; the synthetic corpus.

The brute force builds the joint Gaussian of (z_{1:T}, x_{1:T}) from the
system's definition (no recursion shared with the filter) and uses
torch.distributions.MultivariateNormal and plain Gaussian conditioning.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.data.store import Store
from seqvi.inference import INFERENCE
from seqvi.inference.base import Inference, Posterior
from seqvi.models import MODELS
from seqvi.models.kalman import kalman_filter
from seqvi.objectives import filter_sequence
from seqvi.systems import LGSSM_SYSTEM

from conftest import REPO

F64 = torch.float64


def random_system(seed: int, z_dim: int = 2, x_dim: int = 3):
    """A stable A, any C, full SPD covariances: exercises what diagonal models never would."""
    g = torch.Generator().manual_seed(seed)

    def spd(n):
        m = torch.randn(n, n, generator=g, dtype=F64)
        return m @ m.T / n + 0.2 * torch.eye(n, dtype=F64)

    A = torch.randn(z_dim, z_dim, generator=g, dtype=F64)
    A = 0.9 * A / torch.linalg.matrix_norm(A, ord=2)
    C = torch.randn(x_dim, z_dim, generator=g, dtype=F64)
    return dict(A=A, C=C, Q=spd(z_dim), R=spd(x_dim), mu0=torch.randn(z_dim, generator=g, dtype=F64), P0=spd(z_dim))


def known_system():
    s = {k: torch.tensor(v, dtype=F64) for k, v in LGSSM_SYSTEM.items()}
    return dict(A=s["A"], C=s["C"], Q=torch.diag(s["q"]), R=torch.diag(s["r"]), mu0=s["mu0"], P0=torch.diag(s["s0"]))


def joint(steps: int, A, C, Q, R, mu0, P0):
    """Means and covariances of z_{1:T} (T*Z) and x_{1:T} (T*X), and Cov(z, x), from the definition."""
    z_dim = A.shape[0]
    means, marg = [mu0], [P0]
    for _ in range(steps - 1):
        means.append(A @ means[-1])
        marg.append(A @ marg[-1] @ A.T + Q)
    Szz = torch.zeros(steps * z_dim, steps * z_dim, dtype=F64)
    for t in range(steps):
        for s in range(t + 1):
            block = torch.linalg.matrix_power(A, t - s) @ marg[s]          # Cov(z_t, z_s), t >= s
            Szz[t * z_dim:(t + 1) * z_dim, s * z_dim:(s + 1) * z_dim] = block
            Szz[s * z_dim:(s + 1) * z_dim, t * z_dim:(t + 1) * z_dim] = block.T
    Cb = torch.block_diag(*[C] * steps)
    mz = torch.cat(means)
    return mz, Szz, Cb @ mz, Cb @ Szz @ Cb.T + torch.block_diag(*[R] * steps), Szz @ Cb.T


def sample_x(system, batch: int, steps: int, seed: int) -> torch.Tensor:
    mz, Szz, mx, Sxx, _ = joint(steps, **system)
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(batch, len(mx), generator=g, dtype=F64)
    return (mx + white @ torch.linalg.cholesky(Sxx).T).reshape(batch, steps, -1)


def observed_index(mask_row: torch.Tensor, x_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(t * x_dim, (t + 1) * x_dim) for t in range(len(mask_row)) if mask_row[t] > 0]
                     or [torch.zeros(0, dtype=torch.long)])


@pytest.mark.parametrize("steps", [1, 2, 5, 8])
def test_log_likelihood_equals_joint_gaussian(steps):
    system = random_system(steps)
    x = sample_x(system, 4, steps, seed=10 + steps)
    result = kalman_filter(x, **system)
    _, _, mx, Sxx, _ = joint(steps, **system)
    exact = MultivariateNormal(mx, Sxx).log_prob(x.reshape(4, -1))
    torch.testing.assert_close(result.log_lik.sum(1), exact)
    # Chain rule: the per-step terms accumulate to the log density of every prefix.
    for t in range(1, steps + 1):
        _, _, mx_t, Sxx_t, _ = joint(t, **system)
        prefix = MultivariateNormal(mx_t, Sxx_t).log_prob(x[:, :t].reshape(4, -1))
        torch.testing.assert_close(result.log_lik[:, :t].sum(1), prefix)


def test_masked_steps_are_missing_observations():
    steps, x_dim = 6, 3
    system = random_system(3)
    x = sample_x(system, 4, steps, seed=4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], dtype=F64)
    result = kalman_filter(x, mask=mask, **system)
    assert torch.all(result.log_lik[mask == 0] == 0)
    _, _, mx, Sxx, _ = joint(steps, **system)
    flat = x.reshape(4, -1)
    for b in range(4):
        idx = observed_index(mask[b], x_dim)
        exact = MultivariateNormal(mx[idx], Sxx[idx][:, idx]).log_prob(flat[b, idx])
        torch.testing.assert_close(result.log_lik[b].sum(), exact)
    # Trailing padding leaves the real steps' terms unchanged.
    torch.testing.assert_close(result.log_lik[1, :3], kalman_filter(x[1:2, :3], **system).log_lik[0])


def test_filtering_posterior_is_the_gaussian_conditional():
    steps, z_dim, x_dim = 5, 2, 3
    system = random_system(7)
    x = sample_x(system, 3, steps, seed=8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=F64)
    result = kalman_filter(x, mask=mask, **system)
    mz, Szz, mx, Sxx, Szx = joint(steps, **system)
    flat = x.reshape(3, -1)
    for b in range(3):
        for t in range(steps):
            zi = torch.arange(t * z_dim, (t + 1) * z_dim)
            xi = observed_index(mask[b, :t + 1], x_dim)
            gain = Szx[zi][:, xi] @ torch.linalg.inv(Sxx[xi][:, xi])
            mean = mz[zi] + gain @ (flat[b, xi] - mx[xi])
            cov = Szz[zi][:, zi] - gain @ Szx[zi][:, xi].T
            torch.testing.assert_close(result.mean[b, t], mean)
            torch.testing.assert_close(result.cov[b, t], cov)


def test_lgssm_known_system_is_lgssm_system():
    """The model's exact log-likelihood is the brute-force density of the system in seqvi.systems."""
    model = MODELS["lgssm"](x_dim=3, z_size=2, system="known")
    assert not any(p.requires_grad for p in model.parameters())
    x = sample_x(known_system(), 3, 6, seed=1)
    _, _, mx, Sxx, _ = joint(6, **known_system())
    exact = MultivariateNormal(mx, Sxx).log_prob(x.reshape(3, -1))
    torch.testing.assert_close(model.exact_log_likelihood(x).sum(1), exact, rtol=1e-5, atol=1e-4)  # float32 params
    mean, cov = model.exact_posterior(x)
    assert mean.shape == (3, 6, 2) and cov.shape == (3, 6, 2, 2)
    with pytest.raises(ValueError, match="x_dim 3"):
        MODELS["lgssm"](x_dim=4, z_size=2, system="known")
    with pytest.raises(ValueError, match="linear-Gaussian"):
        MODELS["lgssm"](x_dim=3, likelihood="bernoulli")


class OneStepPosterior(Inference):
    """q(z_t | z_{t-1}, x_t) = p(z_t | z_{t-1}, x_t), exact for a Markov LGSSM (diagonal here)."""

    def posterior(self, model, x, state, p_z, q_state=None):
        C, r = model.C.detach().double(), model.log_r.detach().double().exp()
        prec = 1 / p_z.variance.double() + (C.pow(2) / r[:, None]).sum(0)             # C's columns orthogonal
        loc = (p_z.loc.double() / p_z.variance.double() + (x.double() / r) @ C) / prec
        return Posterior(Normal(loc.float(), prec.rsqrt().float()))


def diagonal_lgssm():
    """An LGSSM whose one-step posteriors are diagonal: C has orthogonal columns."""
    model = MODELS["lgssm"](x_dim=3, z_size=2)
    with torch.no_grad():
        model.A.copy_(torch.tensor([[0.8, -0.3], [0.4, 0.7]]))
        model.C.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
        model.log_q.copy_(torch.tensor([0.1, 0.3]).log())
        model.log_r.copy_(torch.tensor([0.5, 0.2, 0.4]).log())
        model.mu0.copy_(torch.tensor([0.5, -1.0]))
        model.log_s0.copy_(torch.tensor([1.5, 0.7]).log())
    return model


def test_exact_one_step_posterior_has_constant_weight():
    """With q = p(z_t | z_{t-1}, x_t), the step weight log p(x_t | z_t) + log p(z_t | .) - log q(z_t)
    equals log p(x_t | z_{t-1}) for every sample z_t (Bayes' rule; no Monte Carlo error).

    At t = 1 that is log p(x_1) from the Kalman filter; later steps are
    checked against the closed form N(x_t; C A z_{t-1}, C Q C^T + R).
    """
    torch.manual_seed(0)
    model = diagonal_lgssm()
    sysm = {k: v.double() for k, v in model.system_matrices().items()}
    x = sample_x(sysm, 4, 5, seed=2).float()
    state = model.initial_state(4)
    inference = OneStepPosterior()
    for t in range(5):
        p_z = model.prior(state)
        q_z = inference.posterior(model, x[:, t], state, p_z).q_z
        z = q_z.rsample()
        log_w = (model.emission(z, state).log_prob(x[:, t]).sum(-1) + p_z.log_prob(z).sum(-1)
                 - q_z.log_prob(z).sum(-1))
        pred_loc = state.z.double() @ sysm["A"].T @ sysm["C"].T if t else sysm["mu0"] @ sysm["C"].T
        pred_cov = sysm["C"] @ (sysm["Q"] if t else sysm["P0"]) @ sysm["C"].T + sysm["R"]
        exact = MultivariateNormal(pred_loc, pred_cov).log_prob(x[:, t].double())
        torch.testing.assert_close(log_w.double(), exact, rtol=1e-4, atol=1e-4)
        if t == 0:
            torch.testing.assert_close(log_w.double(), model.exact_log_likelihood(x)[:, 0], rtol=1e-4, atol=1e-4)
        state = model.advance(state, x[:, t], z)


def test_filtering_free_energy_bounds_exact_log_likelihood():
    """F >= -log p(x) per sequence (on average over samples), for the direct encoder on the known system."""
    torch.manual_seed(0)
    model = MODELS["lgssm"](x_dim=3, z_size=2, system="known")
    inference = INFERENCE["direct"](model, hidden_sizes=[16])
    x = sample_x(known_system(), 6, 20, seed=5).float()
    mask = torch.ones(6, 20)
    mask[1, 12:] = 0
    with torch.no_grad():
        F = torch.stack([filter_sequence(model, inference, x, mask).free_energy.sum(1) for _ in range(8)]).mean(0)
    exact = model.exact_log_likelihood(x, mask).sum(1)
    assert torch.all(F.double() >= -exact), (F, -exact)
    # The one-step exact posterior is much closer, and still a bound.
    model_d = diagonal_lgssm()
    x = sample_x({k: v.double() for k, v in model_d.system_matrices().items()}, 6, 20, seed=6).float()
    with torch.no_grad():   # 400 samples per sequence in one batch: the gap (2-6 nats) is 8+ standard errors
        F = filter_sequence(model_d, OneStepPosterior(), x.repeat(400, 1, 1), mask.repeat(400, 1))
        F = F.free_energy.sum(1).reshape(400, 6).mean(0)
    exact = model_d.exact_log_likelihood(x, mask).sum(1)
    assert torch.all(F.double() >= -exact), (F, -exact)


def test_synthetic_corpus_comes_from_the_system():
    """Gibbs: the generating system scores its own samples higher than a mirrored one."""
    from seqvi.data.synthetic import sample_lgssm

    x, _ = sample_lgssm(LGSSM_SYSTEM, 100, 50, np.random.default_rng(0))
    x = torch.from_numpy(x)
    true = known_system()
    mirrored = dict(true, A=true["A"].T)       # rotation the other way
    assert kalman_filter(x, **true).log_lik.mean() > kalman_filter(x, **mirrored).log_lik.mean()


def test_cli_download_preprocess_train_lgssm(tmp_path, manifests):
    runner = CliRunner()
    root = tmp_path / "data"
    result = runner.invoke(app, ["download", "lgssm", "--root", str(root), "--limit", "12"])
    assert result.exit_code == 0, result.output
    assert "lgssm.npz" in result.output and (root / "raw" / "lgssm" / "lgssm.npz").exists()
    result = runner.invoke(app, ["preprocess", "lgssm", "--root", str(root)])
    assert result.exit_code == 0, result.output
    with Store(root / "processed" / "lgssm.h5") as store:
        assert store.attrs["system"] == LGSSM_SYSTEM
        assert store.likelihood == "gaussian" and store.frame_shape == (3,)
        assert store.attrs["adapter"] == "synthetic" and store.attrs["normalization"] == "none"
        raw = np.load(root / "raw" / "lgssm" / "lgssm.npz")
        train = store.split("train")
        assert len(train) == 12 and len(store.split("test")) == 12
        np.testing.assert_array_equal(train.read(3), raw["x_train"][3].astype(np.float32))   # not normalized
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {REPO / 'recipes' / 'lgssm_true.yaml'}\n"
                      f"data: {{root: '{root}', batch_size: 6}}\n"
                      "inference: {name: direct, hidden_sizes: [8]}\ntrain: {epochs: 1}\n")
    run_dir = tmp_path / "runs" / "lg"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "checkpoints" / "best.pt").exists()
    assert math.isfinite(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["valid_nats_per_step"])
    from seqvi.data.synthetic import write_npz

    (path,) = write_npz(np.ones((2, 5, 3)), tmp_path / "samples", None)
    np.testing.assert_array_equal(np.load(path)["x"], np.ones((2, 5, 3), np.float32))
