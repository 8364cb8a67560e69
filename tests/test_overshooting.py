"""Latent overshooting (PlaNet sec. 4): identities against the one-step KL of F and a step-by-step reference."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from seqvi import overshooting, stacked
from seqvi.free_energy import gaussian_kl, map_state
from seqvi.inference.direct import DirectFilter
from seqvi.models.rssm import RSSM
from seqvi.objectives import BOUNDS, Objective, filter_sequence, training_terms

B, T, D_X, A = 3, 7, 3, 2


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = RSSM(x_dim=D_X, frame_shape=(D_X,), input_dim=A, deter_size=7, z_size=3, hidden_size=6)
    inference = DirectFilter(model, [5])
    x, u = torch.randn(B, T, D_X), torch.randn(B, T, A)
    mask = torch.ones(B, T)
    mask[1, 5:] = 0          # padding at the end of two sequences
    mask[2, 3:] = 0
    return model, inference, x, u, mask


def path_of(model, inference, x, u):
    return stacked.sample_path(model, inference, x, model.initial_state(B), None, u)


def test_distance_one_is_the_one_step_kl_of_the_free_energy():
    model, inference, x, u, mask = setup()
    torch.manual_seed(1)
    path = path_of(model, inference, x, u)
    terms = stacked.score_path(model, path, x, mask)
    one = overshooting.overshooting_kl(model, path, x, mask, 1, u)
    assert one.shape == (B, T) and bool((one[mask == 0] == 0).all())
    torch.testing.assert_close(one, terms.kl, rtol=1e-5, atol=1e-6)
    assert float(terms.kl.detach().sum()) > 0.1                                  # a KL that could differ


def test_every_distance_against_a_step_by_step_reference(monkeypatch):
    """With the open-loop samples at the prior mean, each step's term is the mean over d = 1..min(D, t+1) of
    KL(q_t || prior rolled d steps from the belief after step t-d), computed here one start at a time."""
    model, inference, x, u, mask = setup(2)
    monkeypatch.setattr(overshooting, "reparameterize", lambda p: p.loc)
    torch.manual_seed(3)
    path = path_of(model, inference, x, u)
    D = 3
    got = overshooting.overshooting_kl(model, path, x, mask, D, u)
    want = torch.zeros(B, T)
    for b in range(B):
        row = lambda s: map_state(lambda v: v[b:b + 1], s)                     # noqa: E731
        for t in range(T):
            if not mask[b, t]:
                continue
            q_t = Normal(path.locs[t][b:b + 1], path.scales[t][b:b + 1])
            kls = []
            for d in range(1, min(D, t + 1) + 1):
                start = t - d            # the belief after step start (-1: the initial one)
                state = model.initial_state(1) if start < 0 else model.advance(row(path.states[start]), None,
                                                                                path.zs[start][b:b + 1])
                for k in range(start + 1, t + 1):
                    state = model.condition(state, u[b:b + 1, k])
                    p_z = model.prior(state)
                    if k < t:
                        state = model.advance(state, None, p_z.loc)
                kls.append(gaussian_kl(q_t, p_z))
            want[b, t] = torch.cat(kls).mean().detach()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert float((got - overshooting.overshooting_kl(model, path, x, mask, 1, u)).detach().abs().max()) > 1e-3


def test_the_posterior_is_held_fixed_beyond_one_step():
    """The target q gets gradient only through d = 1 (PlaNet): in q's parameters (leaves here, the samples
    held apart), the D = 2 term's gradient is the one-step KL's weighted 1 at t = 0 (one distance) and 1/2
    after (two distances); the prior network is trained by every distance."""
    model, inference, x, u, mask = setup(4)
    torch.manual_seed(5)
    path = path_of(model, inference, x, u)
    locs = [v.detach().requires_grad_(True) for v in path.locs]
    scales = [v.detach().requires_grad_(True) for v in path.scales]
    leaves = stacked.Path([map_state(torch.Tensor.detach, s) for s in path.states], locs, scales,
                          [z.detach() for z in path.zs], [])
    two = torch.autograd.grad(overshooting.overshooting_kl(model, leaves, x, mask, 2, u).sum(), locs + scales)
    weights = torch.full((B, T), 0.5)
    weights[:, 0] = 1.0
    one = torch.autograd.grad((overshooting.overshooting_kl(model, leaves, x, mask, 1, u) * weights).sum(),
                              locs + scales)
    for a, b in zip(two, one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in one) > 0
    prior_grads = torch.autograd.grad(overshooting.overshooting_kl(model, leaves, x, mask, 2, u).sum()
                                      - overshooting.overshooting_kl(model, leaves, x, mask, 1, u).sum(),
                                      list(model.prior_net.parameters()))
    assert all(g.abs().sum() > 0 for g in prior_grads)          # the multi-step prior is trained


def test_training_loss_adds_the_weighted_term_and_leaves_the_free_energy_alone():
    model, inference, x, u, mask = setup(6)
    r = torch.randn(B, T)
    elbo = BOUNDS["elbo"]
    torch.manual_seed(7)
    plain = training_terms(model, inference, x, mask, Objective(elbo), inputs=u, rewards=r)
    torch.manual_seed(7)
    path = path_of(model, inference, x, u)
    extra = float(overshooting.overshooting_kl(model, path, x, mask, 3, u).sum().detach())
    torch.manual_seed(7)
    over = training_terms(model, inference, x, mask, Objective(elbo, overshooting=3, overshooting_weight=0.5),
                          inputs=u, rewards=r)
    assert over.recon == pytest.approx(plain.recon, rel=1e-5) and over.kl == pytest.approx(plain.kl, rel=1e-5)
    assert over.value == pytest.approx(plain.value + 0.5 * extra, rel=1e-4)
    torch.manual_seed(7)
    ref = filter_sequence(model, inference, x, mask, inputs=u, rewards=r)
    assert float((ref.recon + ref.kl).sum().detach()) == pytest.approx(plain.value, rel=1e-5)


def test_free_bits_clamp_the_one_step_kl_and_leave_the_overshooting_term_alone():
    """PlaNet's free nats with overshooting: F's KL per group is max(lambda, KL); the multi-step term is added
    unclamped, the same as without free bits."""
    model, inference, x, u, mask = setup(8)
    elbo, lam = BOUNDS["elbo"], 5.0                      # above every step's KL: the clamp is visible
    torch.manual_seed(9)
    path = path_of(model, inference, x, u)
    extra = float(overshooting.overshooting_kl(model, path, x, mask, 2, u).sum().detach())
    recon = float(stacked.score_path(model, path, x, mask).recon.sum().detach())
    torch.manual_seed(9)
    got = training_terms(model, inference, x, mask, Objective(elbo, free_bits=lam, overshooting=2), inputs=u)
    assert got.recon == pytest.approx(recon, rel=1e-5)
    assert got.value == pytest.approx(recon + lam * float(mask.sum()) + extra, rel=1e-4)
