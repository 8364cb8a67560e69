"""CEM and model-predictive control: closed-form optima, the imagination loop's alignment with the
real environment, and a planner with Pendulum-v1's own dynamics swinging the real pendulum up."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import av
import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.data.environment import Simulator
from seqvi.data.video_samples import write_rgb_mp4
from seqvi.control.cem import CEMConfig, cem
from seqvi.control.plan import control_episode, imagined_returns
from seqvi.free_energy import map_state, repeat_rows
from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import SequentialModel

SMALL = CEMConfig(horizon=12, candidates=100, top_k=10, iterations=5)


# --------------------------------------------------------------------------- CEM


def test_cem_finds_the_box_projection_of_a_quadratic_optimum():
    """max -||a - target||^2 over the box is clamp(target, low, high), elementwise."""
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    target = torch.stack([torch.linspace(-3, 3, 12), torch.linspace(-0.5, 0.8, 12)], 1)      # (12, 2), some outside
    seen = []

    def objective(a):
        seen.append(a)
        return -((a - target) ** 2).sum((1, 2))

    # in 24 dimensions the elites' spread shrinks by ~0.8 a round, so PlaNet's 10 rounds stop ~0.1 away: run 30
    plan = cem(objective, low, high, CEMConfig(iterations=30), torch.Generator().manual_seed(0))
    optimum = torch.max(torch.min(target, high), low)
    assert plan.mean.shape == (12, 2)
    assert (plan.mean - optimum).abs().max() < 0.01 and plan.std.max() < 0.02
    outside = (target != optimum)
    assert outside.sum() >= 8 and torch.allclose(plan.mean[outside], optimum[outside], atol=2e-3)  # pinned at the bound
    assert len(seen) == 30 and all(a.shape == (1000, 12, 2) for a in seen)      # one tensor per iteration
    assert all(bool(((a >= low) & (a <= high)).all()) for a in seen)
    assert plan.elite_score > -0.01 + float(-((optimum - target) ** 2).sum())


def test_one_cem_iteration_is_the_mean_of_the_top_k_of_clamped_draws():
    low, high = torch.tensor([-1.0]), torch.tensor([3.0])
    objective = lambda a: -(a[..., 0] - 2.5).abs().sum(1)
    config = CEMConfig(horizon=4, candidates=50, top_k=7, iterations=1)
    plan = cem(objective, low, high, config, torch.Generator().manual_seed(5))
    noise = torch.randn((50, 4, 1), generator=torch.Generator().manual_seed(5))
    candidates = torch.clamp(1.0 + 2.0 * noise, low, high)       # centre of the box, half its width
    elites = candidates[objective(candidates).topk(7).indices]
    torch.testing.assert_close(plan.mean, elites.mean(0))
    torch.testing.assert_close(plan.std, elites.std(0, unbiased=False))


def test_cem_is_reproducible_from_its_generator_and_checks_its_arguments():
    low, high = -torch.ones(3), torch.ones(3)
    objective = lambda a: -(a ** 2).sum((1, 2))
    a = cem(objective, low, high, SMALL, torch.Generator().manual_seed(1)).mean
    b = cem(objective, low, high, SMALL, torch.Generator().manual_seed(1)).mean
    c = cem(objective, low, high, SMALL, torch.Generator().manual_seed(2)).mean
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="top_k <= candidates"):
        CEMConfig(candidates=10, top_k=20)
    with pytest.raises(ValueError, match="low < high"):
        cem(objective, high, low, SMALL)
    with pytest.raises(ValueError, match=r"objective returned shape \(100, 12\)"):
        cem(lambda a: a.sum(2), low, high, SMALL)


def test_the_shared_state_helpers_repeat_one_row_of_nested_named_tuples():
    """What imagination needs of ``repeat_rows``: N separate copies of a one-row belief, structure kept."""
    class Inner(NamedTuple):
        h: Tensor
        c: Tensor

    class Outer(NamedTuple):
        inner: Inner
        z: Tensor
        tag: object

    state = Outer(Inner(torch.ones(1, 2), torch.zeros(1, 3, 4)), torch.arange(2.0)[None], None)
    repeated = repeat_rows(state, 5)
    assert isinstance(repeated, Outer) and isinstance(repeated.inner, Inner) and repeated.tag is None
    assert repeated.inner.c.shape == (5, 3, 4) and repeated.z.tolist() == [[0.0, 1.0]] * 5
    assert map_state(lambda t: t * 2, (torch.ones(1),))[0].item() == 2.0


# --------------------------------------------------------------------------- the true pendulum as a model


G, DT, MAX_SPEED = 10.0, 0.05, 8.0          # Pendulum-v1: g, dt, max speed (m = l = 1)


class PendulumState(NamedTuple):
    theta: Tensor        # (B,)
    omega: Tensor        # (B,)
    reward: Tensor       # (B,) the reward of the environment steps folded in by the last ``condition``


class TruePendulum(SequentialModel):
    """Pendulum-v1's own dynamics and reward as a (deterministic) model; z_t = (theta_t, omega_t).

    ``condition`` runs the R environment steps of the action u_t = a_{t-1} and sums their rewards;
    ``advance`` keeps z. ``reads_x=True`` makes ``advance`` recover (theta, omega) from x instead,
    to exercise the planner's emission-mean path."""

    def __init__(self, repeat: int, reads_x: bool = False):
        super().__init__()
        self.repeat, self.advance_needs_x = repeat, reads_x
        self.x_dim, self.z_dim, self.feature_size = 3, 2, 3
        self.anchor = nn.Parameter(torch.zeros(()))        # gives the model a device

    def initial_state(self, batch_size):
        zeros = torch.zeros(batch_size)
        return PendulumState(zeros, zeros, zeros)

    def condition(self, state, u):
        th, om = state.theta, state.omega
        u = torch.zeros_like(th) if u is None else u[:, 0].clamp(-2.0, 2.0)
        reward = torch.zeros_like(th)
        for _ in range(self.repeat):
            reward = reward - (torch.remainder(th + math.pi, 2 * math.pi) - math.pi) ** 2 - 0.1 * om ** 2 - 0.001 * u ** 2
            om = torch.clamp(om + (1.5 * G * torch.sin(th) + 3.0 * u) * DT, -MAX_SPEED, MAX_SPEED)
            th = th + om * DT
        return PendulumState(th, om, reward)

    def prior(self, state):
        return Normal(torch.stack([state.theta, state.omega], -1), 1e-4, validate_args=False)

    def emission(self, z, state):
        return Normal(torch.stack([torch.cos(z[:, 0]), torch.sin(z[:, 0]), z[:, 1]], -1), 1e-4, validate_args=False)

    def reward(self, z, state):
        return Normal(state.reward, 1.0, validate_args=False)

    def advance(self, state, x, z):
        if self.advance_needs_x:
            z = torch.stack([torch.atan2(x[:, 1], x[:, 0]), x[:, 2]], -1)
        return PendulumState(z[:, 0], z[:, 1], torch.zeros_like(z[:, 0]))


class ReadTheState(Inference):
    """q(z_t | x_t): reads theta and omega from the observation (cos, sin, omega) exactly."""
    reads_prior = False

    def posterior(self, model, x, state, p_z, q_state=None):
        return Posterior(Normal(torch.stack([torch.atan2(x[:, 1], x[:, 0]), x[:, 2]], -1), 1e-4), q_state)


@pytest.mark.parametrize("reads_x", [False, True])
def test_imagined_return_is_the_real_return_under_the_true_dynamics(reads_x):
    """The imagination loop's order (condition, prior, reward, advance) matches the stored alignment."""
    repeat, horizon = 2, 12
    model, inference = TruePendulum(repeat, reads_x), ReadTheState()
    rng = np.random.default_rng(0)
    for seed in range(3):
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=seed)
        x = torch.as_tensor(obs)[None]
        state = model.advance(model.initial_state(1), x, inference.posterior(model, x, None, None).q_z.mean)
        actions = rng.uniform(-2, 2, (horizon, 1)).astype(np.float32)
        real = sum(env.step(a)[1] for a in actions for _ in range(repeat))
        imagined = imagined_returns(model, state, torch.as_tensor(actions)[None].repeat(4, 1, 1), sample=False)
        assert imagined.shape == (4,)
        torch.testing.assert_close(imagined, torch.full((4,), float(real)), rtol=1e-4, atol=1e-3)


def test_planner_with_the_true_dynamics_swings_the_real_pendulum_up():
    """Random actions score about -1,200 per episode; swinging up and balancing scores above -400."""
    model, inference = TruePendulum(2), ReadTheState()
    with Simulator("Pendulum-v1", action_repeat=2) as sim:
        results = [control_episode(model, inference, sim, env_steps=200, seed=seed, config=SMALL) for seed in (0, 1, 2)]
    for result in results:
        assert len(result.episode) == 101 and len(result.step_seconds) == 100
        assert result.total_reward == pytest.approx(float(result.episode.reward.sum()), rel=1e-5)
        assert result.total_reward > -400, [r.total_reward for r in results]
        theta = np.arctan2(result.episode.obs[-20:, 1], result.episode.obs[-20:, 0])
        assert np.all(np.abs(theta) < 0.3)           # upright at the end
    again = control_episode(model, inference, Simulator("Pendulum-v1", action_repeat=2), env_steps=40, seed=1,
                            config=SMALL)
    np.testing.assert_array_equal(again.episode.action, results[1].episode.action[:21])     # reproducible


def test_control_episode_records_frames_that_write_to_an_mp4(tmp_path):
    model, inference = TruePendulum(2), ReadTheState()
    config = CEMConfig(horizon=4, candidates=20, top_k=4, iterations=2)
    with Simulator("Pendulum-v1", action_repeat=2, render=True) as sim:
        result = control_episode(model, inference, sim, env_steps=16, seed=3, config=config, record_frames=True,
                                 noise=0.3)
    frames = result.episode.frames
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
    path = write_rgb_mp4(frames, tmp_path / "episode.mp4", fps=sim.fps, upscale=2)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 9 and decoded[0].shape == (128, 128, 3)
    red = lambda image: (image[..., 0].astype(int) - image[..., 1] > 60).mean()
    assert red(decoded[4]) == pytest.approx(red(frames[4].repeat(2, 0).repeat(2, 1)), abs=0.01)   # the rod survives
