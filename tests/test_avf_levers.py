"""AVF's options and the objective's levers against posterior collapse, each with a test that could fail:

* new inputs (observation, errors) and annealing: the kernel path's values and gradients equal the
  reference path's (autograd through a per-step graph);
* every registered model trains with every option;
* ``init: encoder`` with K = 0 is direct filtering exactly (values and every gradient);
* free bits change the loss, never the reported free energy;
* q's gradient clipped on its own.
"""


import pytest
import torch

from seqvi.errors import RecipeError
from seqvi.free_energy import free_energy_at, free_energy_gradient
from seqvi.inference import INFERENCE
from seqvi.nn import reference
from seqvi.objectives import BOUNDS, Objective, filter_sequence, training_loss, training_terms
from seqvi.testing import build_model, registered_models, tiny_data

B, T, D = 4, 7, 6
MODELS = registered_models()   # seqvi's and any installed plugin's
# Every model with a fast hook (stacked rows or the emission's gradient by hand) whose frames are vectors,
# each built from its own TEST_CONFIG on this file's D-dimensional data.
FAST = sorted(n for n, c in MODELS.items()
              if (c.rowwise or c.has("emission_grad")) and len(c.TEST_CONFIG.get("frame_shape", (D,))) == 1)


def data(seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((B, T, D), 0.3), generator=g)
    mask = torch.ones(B, T)
    mask[1, 5:] = 0
    return x, mask


def build(name, **avf):
    torch.manual_seed(0)
    model = build_model(MODELS[name], x_dim=D)
    return model, INFERENCE["avf"](model, hidden_size=16, **avf)


OPTIONS = [dict(iterations=2, inputs=["gradients", "parameters", "observation"]),
           dict(iterations=2, inputs=["gradients", "errors"], update="sgd"),
           dict(iterations=3, inputs=["gradients", "parameters", "observation", "errors"], anneal=True),
           dict(iterations=1, inputs=["parameters", "observation"], layers=1)]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("options", range(len(OPTIONS)))
def test_new_inputs_and_annealing_kernels_equal_autograd(name, options):
    """The taped chain (graph-free loop, replay by hand) against autograd through the per-step graph,
    with the observation and error inputs and an annealed KL weight: same values and gradients."""
    x, mask = data()
    runs = []
    for reference_path in (True, False):
        model, avf = build(name, **OPTIONS[options])
        with reference(reference_path):
            torch.manual_seed(5)
            terms = filter_sequence(model, avf, x, mask, kl_weight=0.4)
            params = list(model.parameters()) + list(avf.parameters())
            grads = torch.autograd.grad(training_loss(terms, 0.4), params, allow_unused=True)
        runs.append((terms, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
    (ref, g_ref), (fast, g_fast) = runs
    torch.testing.assert_close(fast.free_energy, ref.free_energy, rtol=1e-5, atol=1e-5)
    if ref.aux is not None:
        torch.testing.assert_close(fast.aux, ref.aux, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ref, g_fast):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert all(bool(g.abs().sum() > 0) for g in g_fast[-4:])


def test_the_annealed_gradient_input_is_the_annealed_free_energys():
    model, _ = build("vrnn")
    x, _ = data()
    state = model.initial_state(B)
    p_z = model.prior(state)
    loc = (p_z.loc + 0.5).detach().requires_grad_(True)
    logvar = (2 * p_z.scale.log() - 0.3).detach().requires_grad_(True)
    eps = torch.randn(B, model.z_dim)
    beta = 0.25
    kl = _kl(loc, logvar, p_z)
    target = free_energy_at(model, loc, logvar, p_z, x[:, 0], state, eps) - (1 - beta) * kl   # recon + beta KL
    a_loc, a_logvar = torch.autograd.grad(target.sum(), (loc, logvar))
    g_loc, g_logvar, value = free_energy_gradient(model, loc.detach(), logvar.detach(), p_z, x[:, 0], state, eps,
                                                  value=True, kl_weight=beta)
    torch.testing.assert_close(g_loc, a_loc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_logvar, a_logvar, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(value, target.detach(), rtol=1e-5, atol=1e-5)


def _kl(loc, logvar, p_z):
    from torch.distributions import Normal

    from seqvi.free_energy import gaussian_kl
    return gaussian_kl(Normal(loc, (0.5 * logvar).exp()), p_z)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("options", [dict(iterations=2, inputs=["gradients", "parameters", "observation", "errors"],
                                          anneal=True),
                                     dict(iterations=2, init="encoder", encoder_sizes=[8])])
def test_every_model_trains_with_every_option(name, options):
    torch.manual_seed(0)
    model = build_model(MODELS[name])   # its own TEST_CONFIG
    shape = tiny_data(model)[0].shape[2:]
    avf = INFERENCE["avf"](model, hidden_size=16, **options)
    x = torch.rand(3, 4, *shape)
    if not model.emission(model.prior(model.initial_state(1)).loc, model.initial_state(1)).__class__.__name__ == "Normal":
        x = (x > 0.5).float()
    mask = torch.ones(3, 4)
    objective = Objective(BOUNDS["elbo"], 1, 0.5, free_bits=0.1, free_bits_groups=model.z_dim)   # one per z
    terms = training_terms(model, avf, x, mask, objective)
    (terms.loss_sum / mask.sum()).backward()
    grads = [p.grad for p in list(model.parameters()) + list(avf.parameters())]
    assert torch.isfinite(terms.loss_sum) and all(g is None or torch.isfinite(g).all() for g in grads)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in avf.loc_out.parameters())


@pytest.mark.parametrize("name", FAST)
def test_init_from_an_encoder_with_no_iterations_is_direct_filtering_exactly(name):
    torch.manual_seed(0)
    model = build_model(MODELS[name], x_dim=D)
    direct = INFERENCE["direct"](model, hidden_sizes=[5])
    avf = INFERENCE["avf"](model, hidden_size=16, iterations=0, init="encoder", encoder_sizes=[5])
    avf.encoder.load_state_dict(direct.net.state_dict())
    x, mask = data()
    runs = []
    for q in (direct, avf):
        model.zero_grad()
        torch.manual_seed(9)
        terms = filter_sequence(model, q, x, mask)
        training_loss(terms, 0.5).backward()
        runs.append((terms, [None if p.grad is None else p.grad.clone() for p in model.parameters()],
                     [p.grad.clone() for p in (direct.net if q is direct else q.encoder).parameters()]))
    (a, ga, qa), (b, gb, qb) = runs
    assert torch.equal(a.recon, b.recon) and torch.equal(a.kl, b.kl)
    for u, v in zip(ga + qa, gb + qb):
        assert (u is None and v is None) or torch.equal(u, v)
    with pytest.raises(ValueError):
        INFERENCE["avf"](model, iterations=0)   # no iterations from the prior: refused


def test_free_bits_change_the_loss_never_the_reported_free_energy():
    torch.manual_seed(0)
    model = build_model(MODELS["dmm"], x_dim=D, z_size=4)   # 4 dimensions: 2 groups of 2
    avf = INFERENCE["avf"](model, hidden_size=16, iterations=1)
    x, mask = data()
    figures = {}
    for bits in (0.0, 0.7):
        torch.manual_seed(2)
        out = training_terms(model, avf, x, mask, Objective(BOUNDS["elbo"], 1, 1.0, free_bits=bits, free_bits_groups=2))
        torch.manual_seed(2)
        terms = filter_sequence(model, avf, x, mask, kl_groups=2)
        figures[bits] = (out, terms)
    (plain, terms), (freed, same) = figures[0.0], figures[0.7]
    assert plain.recon == freed.recon and plain.kl == freed.kl          # the reported parts: true F
    torch.testing.assert_close(same.kl_groups.sum(-1), same.kl)
    clamped = (terms.kl_groups.clamp_min(0.7) * mask.unsqueeze(-1)).sum()
    assert freed.value == pytest.approx(plain.recon + float(clamped.detach()), rel=1e-5)
    assert freed.value > plain.value
    with pytest.raises(RuntimeError):
        filter_sequence(model, avf, x, mask, kl_groups=3)   # 4 dimensions do not split in 3


def test_q_is_clipped_on_its_own():
    from seqvi.data.batches import Batch
    from seqvi.engine.distributed import Dist
    from seqvi.engine.train import Trainee, train_step

    model, avf = build("vrnn", iterations=1)
    x, mask = data()
    trainee = Trainee(model, avf, list(model.parameters()) + list(avf.parameters()))
    stats = train_step(trainee, Batch(x, mask), Objective(BOUNDS["elbo"]), Dist(), 1e-3, 1e-4)
    norm = lambda ps: float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps if p.grad is not None])))  # noqa: E731
    assert norm(model.parameters()) == pytest.approx(1e-3, rel=1e-4)
    assert norm(avf.parameters()) == pytest.approx(1e-4, rel=1e-4)
    assert stats.grad_norm > 1e-2


def test_recipe_checks_free_bits_groups(tiny_store, tmp_path):
    from seqvi.config import recipe_from_dict
    from seqvi.engine.train import train

    from conftest import tiny_recipe

    raw = tiny_recipe(tiny_store, epochs=1)
    raw["objective"] = {"free_bits": 0.5, "free_bits_groups": 2}   # z_size 3
    with pytest.raises(RecipeError, match="free_bits_groups"):
        train(recipe_from_dict(raw), tmp_path / "r", device="cpu")
