"""AVF mechanics and the particle bounds' identities."""

import pytest
import torch
from torch.distributions import Normal

from seqvi.free_energy import step_free_energy
from seqvi.inference import INFERENCE
from seqvi.inference.iterative import AVF, layer_norm
from seqvi.models import MODELS
from seqvi.objectives import filter_sequence, particle_bound, training_loss

B, T, D = 4, 6, 5


def vrnn():
    torch.manual_seed(0)
    return MODELS["vrnn"](x_dim=D, hidden_size=8, z_size=3, feature_size=8)


def data():
    g = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((B, T, D), 0.3), generator=g)
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return x, mask


def test_layer_norm_has_zero_mean_unit_variance():
    v = torch.randn(5, 7) * 3 + 2
    out = layer_norm(v)
    torch.testing.assert_close(out.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_sgd_update_with_open_gate_is_one_gradient_step():
    """With W h = 0 and sigmoid gate = 1, the 'sgd' update is lambda - grad F_t(lambda_prior)."""
    model = vrnn()
    avf = AVF(model, iterations=1, hidden_size=16, update="sgd")
    with torch.no_grad():
        for out in (avf.loc_out, avf.logvar_out):
            out.weight.zero_()
            out.bias.zero_()
        for gate in (avf.loc_gate, avf.logvar_gate):
            gate.weight.zero_()
            gate.bias.fill_(50.0)
    x, _ = data()
    state = model.initial_state(B)
    p_z = model.prior(state)
    torch.manual_seed(7)
    q = avf.posterior(model, x[:, 0], state, p_z)
    # the same gradient by hand, with the same noise
    loc = p_z.loc.detach().requires_grad_(True)
    logvar = (2 * p_z.scale.log()).detach().requires_grad_(True)
    torch.manual_seed(7)
    terms = step_free_energy(model, Normal(loc, (0.5 * logvar).exp()), p_z, x[:, 0], state)
    g_loc, g_logvar = torch.autograd.grad((terms.recon + terms.kl).sum(), (loc, logvar))
    torch.testing.assert_close(q.q_z.loc, loc - g_loc)
    torch.testing.assert_close(q.q_z.scale, (0.5 * (logvar - g_logvar).clamp(-15, 5)).exp())


def test_aux_trains_only_inference_parameters():
    """AVF's earlier iterates enter the training loss as q's aux: theta's gradient is the free energy's
    alone, phi's changes."""
    model = vrnn()
    avf = AVF(model, iterations=3, hidden_size=16)
    x, mask = data()
    torch.manual_seed(1)
    terms = filter_sequence(model, avf, x, mask)
    assert terms.aux is not None and terms.aux.shape == (B, T)
    assert torch.all(terms.aux[3, 2:] == 0)
    theta, phi = list(model.parameters()), list(avf.parameters())
    with_aux = torch.autograd.grad(training_loss(terms), theta + phi, retain_graph=True, allow_unused=True)
    without = torch.autograd.grad((terms.recon + terms.kl).sum() / mask.sum(), theta + phi, allow_unused=True)
    zero = lambda g, p: torch.zeros_like(p) if g is None else g   # noqa: E731
    for p, a, b in zip(theta, with_aux, without):
        torch.testing.assert_close(zero(a, p), zero(b, p))
    assert any(not torch.allclose(zero(a, p), zero(b, p)) for p, a, b in
               zip(phi, with_aux[len(theta):], without[len(theta):]))


def test_avf_runs_under_no_grad_and_eval_iterations():
    model = vrnn()
    avf = AVF(model, iterations=1, hidden_size=16)
    avf.eval_iterations = 4
    assert avf.training and avf.steps() == 1
    avf.eval()
    assert avf.steps() == 4
    avf.train()
    assert avf.steps() == 1
    avf.eval()
    x, mask = data()
    with torch.no_grad():
        terms = filter_sequence(model, avf, x, mask)
    assert torch.isfinite(terms.recon).all() and terms.aux is None


@pytest.mark.parametrize("inference", ["direct", "avf"])
def test_elbo_equals_iwae1_equals_fivo_never_resampling(inference):
    model = vrnn()
    q = INFERENCE[inference](model)
    x, mask = data()
    with torch.no_grad():
        runs = []
        for k, resample, threshold in [(1, False, 0.5), (1, True, 0.5), (6, False, 0.5), (6, True, 0.0)]:
            torch.manual_seed(11)
            runs.append(particle_bound(model, q, x, mask, k, resample, threshold))
    torch.testing.assert_close(runs[0].log_p_hat, runs[1].log_p_hat)     # K=1: never resamples
    torch.testing.assert_close(runs[2].log_p_hat, runs[3].log_p_hat)     # threshold 0 = IWAE
    assert torch.all(runs[3].resampled == 0)
    for r in runs:
        assert torch.all(r.increments[mask == 0] == 0)


def test_iwae_and_fivo_tighten_with_particles():
    model = vrnn()
    q = INFERENCE["direct"](model)
    x, mask = data()
    with torch.no_grad():
        def mean_bound(k, resample):
            torch.manual_seed(0)
            return torch.stack([particle_bound(model, q, x, mask, k, resample).log_p_hat.sum()
                                for _ in range(30)]).mean()
        elbo = mean_bound(1, False)
        for resample in (False, True):
            k8, k64 = mean_bound(8, resample), mean_bound(64, resample)
            assert elbo < k8 < k64 + 0.05


def test_fivo_resamples_when_weights_degenerate():
    model = vrnn()
    q = INFERENCE["direct"](model)
    x, mask = data()
    with torch.no_grad():
        torch.manual_seed(0)
        r = particle_bound(model, q, x, mask, 16, True, ess_threshold=1.0)  # always below K
    assert r.resampled[mask > 0].all()
    assert torch.isfinite(r.log_p_hat).all()


def test_iteration_curve_is_flat_when_the_update_is_the_identity(tiny_store):
    """A highway update whose gates are shut keeps lambda at the prior: every iterate costs the same."""
    import numpy as np

    from seqvi.data.manifest import store_path
    from seqvi.data.store import Store
    from seqvi.engine.iterations import iteration_curve

    with Store(store_path("tiny", tiny_store)) as store:
        model = MODELS["vrnn"](x_dim=88, hidden_size=8, z_size=3, feature_size=8)
        avf = AVF(model, iterations=1, hidden_size=16)
        with torch.no_grad():
            for gate in (avf.loc_gate, avf.logvar_gate):
                gate.weight.zero_()
                gate.bias.fill_(60.0)              # sigmoid = 1: keep the previous iterate
        curve = iteration_curve(model, avf, store.split("test"), iterations=3, batch_size=4,
                                device=torch.device("cpu"))
        assert curve.shape == (4,) and np.all(np.isfinite(curve))
        np.testing.assert_allclose(curve, curve[0], rtol=1e-6)
        # an update that moves lambda changes the curve
        with torch.no_grad():
            avf.loc_gate.bias.fill_(-60.0)
        moved = iteration_curve(model, avf, store.split("test"), iterations=3, batch_size=4,
                                device=torch.device("cpu"))
        assert not np.allclose(moved[1:] - moved[0], 0.0, atol=1e-3)


@pytest.mark.parametrize("update", ["highway", "sgd"])
def test_update_without_graph_equals_update_with_graph(update):
    """AVF's graph-free update (fused heads, cached W^T) computes the recorded one's numbers, and
    follows the heads when they change (an optimizer step)."""
    model = vrnn()
    avf = AVF(model, iterations=1, hidden_size=16, layers=2, update=update)
    torch.manual_seed(3)
    loc, logvar, g_loc, g_logvar = (torch.randn(B, model.z_dim) * 3 for _ in range(4))
    for _ in range(2):
        with_graph = avf.update(loc, logvar, g_loc, g_logvar)
        with torch.no_grad():
            without = avf.update(loc, logvar, g_loc, g_logvar)
        for a, b in zip(with_graph, without):
            torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            avf.loc_gate.weight.add_(0.5)
            avf.logvar_out.bias.sub_(0.5)
