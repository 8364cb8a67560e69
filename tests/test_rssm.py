"""RSSM (PlaNet): shapes, the action path of ``condition``, ``advance`` ignoring x, no leak of o_t into
p(o_t | h_t, z_t), gradients reaching every part, and one planning episode in the real pendulum."""

from __future__ import annotations

import pytest
import torch

from seqvi.data.environment import Simulator
from seqvi.control.cem import CEMConfig
from seqvi.control.plan import control_episode, imagined_returns
from seqvi.inference.direct import DirectFilter
from seqvi.models.base import SequentialModel
from seqvi.models.rssm import RSSM, RSSMState

TINY = dict(deter_size=7, z_size=3, hidden_size=6)


def vector_model(**kw) -> RSSM:
    torch.manual_seed(0)
    return RSSM(x_dim=3, frame_shape=(3,), input_dim=2, **{**TINY, **kw})


def test_shapes_of_every_conditional_for_state_vectors():
    model = vector_model()
    assert isinstance(model, SequentialModel) and model.advance_needs_x is False
    state = model.initial_state(4)
    assert isinstance(state, RSSMState) and state.h.shape == (4, 7) and state.z.shape == (4, 3)
    state = model.condition(state, torch.randn(4, 2))
    p_z = model.prior(state)
    assert p_z.loc.shape == (4, 3) and bool((p_z.scale >= 0.1).all())         # PlaNet's minimum scale
    z = p_z.rsample()
    assert model.emission(z, state).mean.shape == (4, 3)
    reward = model.reward(z, state)
    assert reward.mean.shape == (4,) and torch.equal(reward.stddev, torch.ones(4))
    assert model.features(torch.randn(4, 3), state).shape == (4, model.feature_size) == (4, 6 + 7)
    assert torch.equal(model.advance(state, None, z).z, z)


def test_condition_with_and_without_actions():
    model = vector_model()
    state = RSSMState(torch.randn(5, 7), torch.randn(5, 3))
    none = model.condition(state, None)
    zeros = model.condition(state, torch.zeros(5, 2))
    torch.testing.assert_close(none.h, zeros.h)                     # no input = a zero action
    moved = model.condition(state, torch.ones(5, 2))
    assert (moved.h - zeros.h).abs().max() > 1e-4                    # the action reaches h_t
    assert torch.equal(moved.z, state.z)                             # z_{t-1} is kept until advance
    assert (none.h - state.h).abs().max() > 1e-4                     # the GRU steps even without actions
    with pytest.raises(ValueError, match="inputs have 3 columns, the model was built for 2"):
        model.condition(state, torch.ones(5, 3))
    plain = RSSM(x_dim=3, frame_shape=(3,), input_dim=0, **TINY)    # data without actions
    assert plain.condition(plain.initial_state(2), None).h.shape == (2, 7)
    # rows are independent: each row's h_t depends on its own (h, z, a) only
    one = model.condition(RSSMState(state.h[2:3], state.z[2:3]), torch.ones(1, 2))
    torch.testing.assert_close(one.h, moved.h[2:3])


def test_advance_stores_z_and_ignores_x():
    model = vector_model()
    state = model.condition(model.initial_state(3), torch.randn(3, 2))
    z = torch.randn(3, 3)
    a, b, c = (model.advance(state, x, z) for x in (None, torch.zeros(3, 3), 100 * torch.randn(3, 3)))
    for other in (b, c):
        assert torch.equal(other.h, a.h) and torch.equal(other.z, a.z)
    assert torch.equal(a.h, state.h) and torch.equal(a.z, z)


def test_frames_use_the_conv_encoder_and_a_decoder_that_never_sees_the_frame():
    torch.manual_seed(0)
    model = RSSM(x_dim=3 * 64 * 64, frame_shape=(3, 64, 64), input_dim=1, embed_size=16, channels=4, **TINY)
    state = model.condition(model.initial_state(2), torch.randn(2, 1))
    x1, x2 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    f1 = model.features(x1, state)
    assert f1.shape == (2, model.feature_size) == (2, 16 + 7)
    assert not torch.equal(f1, model.features(x2, state))
    z = model.prior(state).rsample()
    mean = model.emission(z, state).mean
    assert mean.shape == (2, 3, 64, 64) and bool(((mean > 0) & (mean < 1)).all())
    model.features(x2, state)                                        # encoding another frame changes nothing
    torch.testing.assert_close(model.emission(z, state).mean, mean)
    bern = RSSM(x_dim=3 * 64 * 64, likelihood="bernoulli", frame_shape=(3, 64, 64), embed_size=8, channels=2, **TINY)
    assert bern.emission(z, bern.initial_state(2)).logits.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"frames must be \(C, 64, 64\)"):
        RSSM(x_dim=3 * 32 * 32, frame_shape=(3, 32, 32))


def test_one_filtering_step_trains_every_part():
    """-log p(o|h,z) - log p(r|h,z) + KL(q||p) with q from the direct encoder reaches every parameter."""
    model = vector_model()
    inference = DirectFilter(model, [5])
    state = model.condition(RSSMState(torch.randn(4, 7), torch.randn(4, 3)), torch.randn(4, 2))  # h_{t-1} != 0: W_hh too
    x, r = torch.randn(4, 3), torch.randn(4)
    q_z = inference.posterior(model, x, state, model.prior(state)).q_z
    z = q_z.rsample()
    p_z = model.prior(state)
    loss = (-model.emission(z, state).log_prob(x).sum(-1) - model.reward(z, state).log_prob(r)
            + torch.distributions.kl_divergence(q_z, p_z).sum(-1)).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_an_untrained_rssm_plans_an_episode_in_the_real_pendulum():
    """The whole loop with a learned-model-shaped p and its direct encoder (no training: any return)."""
    model = RSSM(x_dim=3, frame_shape=(3,), input_dim=1, **TINY)
    inference = DirectFilter(model, [5])
    state = model.condition(model.initial_state(1), None)
    actions = torch.rand(8, 4, 1) * 4 - 2
    g = lambda: torch.Generator().manual_seed(0)
    returns = imagined_returns(model, state, actions, g())
    assert returns.shape == (8,) and torch.equal(returns, imagined_returns(model, state, actions, g()))
    assert not torch.equal(returns, imagined_returns(model, state, actions, torch.Generator().manual_seed(1)))
    with Simulator("Pendulum-v1", action_repeat=2) as sim:
        result = control_episode(model, inference, sim, env_steps=20, seed=0,
                                 config=CEMConfig(horizon=5, candidates=30, top_k=5, iterations=2))
    assert len(result.episode) == 11 and len(result.step_seconds) == 10
    assert bool((abs(result.episode.action) <= 2).all()) and model.training          # training mode restored


def test_the_pixel_link_sets_the_emission_mean():
    """``shifted`` is PlaNet's linear mean 0.5 + logits (the same decoder as ``sigmoid`` reads); unknown links fail."""
    kw = dict(x_dim=3 * 64 * 64, frame_shape=(3, 64, 64), input_dim=1, embed_size=8, channels=2, **TINY)
    torch.manual_seed(0)
    sigmoid = RSSM(**kw)
    torch.manual_seed(0)
    shifted = RSSM(pixel_link="shifted", **kw)
    state = sigmoid.condition(sigmoid.initial_state(2), torch.randn(2, 1))
    z = torch.randn(2, 3)
    a, b = sigmoid.emission(z, state).mean, shifted.emission(z, state).mean
    torch.testing.assert_close(torch.sigmoid(b - 0.5), a)
    with pytest.raises(ValueError, match="pixel_link must be one of sigmoid, shifted"):
        RSSM(pixel_link="tanh", **kw)
