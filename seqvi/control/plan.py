"""Planning by latent imagination, and model-predictive control in the real environment (PlaNet).

The model hooks used here (declared with docstrings in ``SequentialModel``;
the ``PlanningModel`` protocol below lists them)::

    condition(state, u) -> state       folds u_t = a_{t-1} (B, A) into the state:   p(z_t | h_{t-1}, a_{t-1})
    prior(state)        -> Normal      p(z_t | .) over (B, Z)
    reward(z, state)    -> Distribution over (B,)                                    p(r_t | h_t, z_t)
    emission(z, state)  -> Distribution over (B, *X)                                 p(x_t | h_t, z_t)
    advance(state, x, z) -> state      x may be None when ``advance_needs_x`` is False
    advance_imagined(state, z)          advance without an observation (``SequentialModel``)

Imagination (``imagined_returns``). From a filtered state of ONE row (the
belief after the latest real observation), repeated for N candidates
(N, H, A), for k = 1..H::

    state = condition(state, a_k)               # the action taken after the last step
    z     ~ prior(state)                        # (N, Z)
    state = transit(state, z)                   # (the step order of ``seqvi.models.base``)
    R    += reward(z, state).mean               # (N,)
    state = advance_imagined(state, z)   (x = None, or emission(z, state).mean if advance_needs_x)

z is SAMPLED from the prior, as in PlaNet: the model's recurrent path was
trained on posterior samples, so sampled z keep it on the inputs it knows,
and each candidate is scored on a trajectory the model can produce, whereas
the prior mean fed back step after step is a path the model need not
believe (when the pendulum may fall left or right, the mean goes straight
down the middle) and hides the model's uncertainty from the planner; CEM's
refit to the top k averages the single-sample noise over many candidates.
``sample=False`` uses the mean (a deterministic model, or a check).
Sampling draws from the planner's generator, so a plan stays reproducible.

Model-predictive control (``control_episode``). An episode in the real
environment (``seqvi.data.environment.rollout``, the stored alignment: row
t holds o_t, a_{t-1}, r_t). At every stored step the policy filters the new
observation with the run's inference, then plans::

    state        = observe(condition(state, u_t), x_t)   (u_0 = 0, then the action just executed)
    q_z, q_state = inference.posterior(model, x_t, state, prior(state), q_state)
    state        = advance(transit(state, q_z.mean), x_t, q_z.mean)   (the posterior mean: the filter's best guess)
    plan         = cem(imagined_returns from state)   -> execute plan.mean[0] for R environment steps

with optional Gaussian exploration noise of sd ``noise`` on the executed
action (PlaNet collects with 0.3), clamped into the box. Filtering runs with
autograd enabled (AVF differentiates inside ``posterior``) and its state is
detached; imagination runs under ``torch.no_grad``. The wall time of each
step (filtering + planning) is recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

from seqvi.data.environment import Simulator, rollout
from seqvi.data.episodes import Episode
from seqvi.control.cem import CEMConfig, Plan, cem
from seqvi.free_energy import map_state, repeat_rows


class PlanningModel(Protocol):
    """What planning needs of a model (see the module docstring)."""
    advance_needs_x: bool

    def initial_state(self, batch_size: int) -> Any: ...
    def condition(self, state: Any, u: Optional[Tensor]) -> Any: ...
    def observe(self, state: Any, x: Tensor) -> Any: ...
    def transit(self, state: Any, z: Tensor) -> Any: ...
    def prior(self, state: Any) -> Normal: ...
    def emission(self, z: Tensor, state: Any) -> Distribution: ...
    def reward(self, z: Tensor, state: Any) -> Distribution: ...
    def advance(self, state: Any, x: Optional[Tensor], z: Tensor) -> Any: ...
    def advance_imagined(self, state: Any, z: Tensor) -> Any: ...


def draw(p_z: Normal, generator: Optional[torch.Generator]) -> Tensor:
    """One reparameterized sample of a diagonal Normal from ``generator``."""
    noise = torch.randn(p_z.loc.shape, generator=generator, device=p_z.loc.device, dtype=p_z.loc.dtype)
    return p_z.loc + p_z.scale * noise


@torch.no_grad()
def imagined_returns(model: PlanningModel, state: Any, actions: Tensor, generator: Optional[torch.Generator] = None,
                     sample: bool = True) -> Tensor:
    """Predicted return (N,) of each candidate (N, H, A) from a filtered ``state`` of one row."""
    n, horizon = actions.shape[:2]
    state = repeat_rows(state, n)                                          # (N, ...) copies of the one row
    total = torch.zeros(n, device=actions.device)
    for k in range(horizon):
        state = model.condition(state, actions[:, k])
        p_z = model.prior(state)
        z = draw(p_z, generator) if sample else p_z.mean                     # (N, Z)
        state = model.transit(state, z)
        total = total + model.reward(z, state).mean
        state = model.advance_imagined(state, z)
    return total


@dataclass
class ControlResult:
    episode: Episode                   # the real episode, stored alignment (frames when recorded)
    total_reward: float                # the environment's return over the episode
    step_seconds: list = field(default_factory=list)   # wall time of each filter + plan step
    plans: list = field(default_factory=list)          # elite score of each plan (predicted return)


class MPCPolicy:
    """Filter the real observations and plan from the belief: a policy for ``rollout``."""

    def __init__(self, model: PlanningModel, inference: Any, low: Tensor, high: Tensor, config: CEMConfig,
                 generator: torch.Generator, value_scale: float = 1.0, sample: bool = True, noise: float = 0.0,
                 on_step: Optional[Callable[[int], None]] = None):
        self.model, self.inference, self.low, self.high = model, inference, low, high
        self.config, self.generator, self.value_scale = config, generator, value_scale
        self.sample, self.noise, self.on_step = sample, noise, on_step
        self.state = model.initial_state(1)
        self.q_state = inference.initial_state(1)
        self.u = torch.zeros(1, low.shape[0], device=low.device)                 # u_0 = a_{-1} = 0
        self.step_seconds: list[float] = []
        self.scores: list[float] = []

    def filter(self, x: Tensor) -> None:
        """Fold the real observation x_t (1, *X) into the belief."""
        state = self.model.observe(self.model.condition(self.state, self.u), x)
        post = self.inference.posterior(self.model, x, state, self.model.prior(state), self.q_state)
        z = post.q_z.mean
        state = self.model.advance(self.model.transit(state, z), x, z)
        self.state = map_state(torch.Tensor.detach, state)
        self.q_state = map_state(torch.Tensor.detach, post.q_state)

    def plan(self) -> Plan:
        return cem(lambda a: imagined_returns(self.model, self.state, a, self.generator, self.sample),
                   self.low, self.high, self.config, self.generator)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        x = torch.as_tensor(observation, dtype=torch.float32, device=self.low.device).unsqueeze(0) * self.value_scale
        self.filter(x)
        plan = self.plan()
        action = plan.mean[0]
        if self.noise:
            action = action + self.noise * torch.randn(action.shape, generator=self.generator,
                                                       device=action.device, dtype=action.dtype)
        action = torch.clamp(action, self.low, self.high)
        self.u = action.unsqueeze(0)
        self.step_seconds.append(time.perf_counter() - started)
        self.scores.append(plan.elite_score)
        if self.on_step is not None:
            self.on_step(len(self.step_seconds))
        return action.cpu().numpy()


def control_episode(model: PlanningModel, inference: Any, sim: Simulator, *, env_steps: int, seed: int = 0,
                    observation: str = "state", value_scale: float = 1.0, config: CEMConfig = CEMConfig(),
                    sample: bool = True, noise: float = 0.0, record_frames: bool = False,
                    device: torch.device | str = "cpu", on_step: Optional[Callable[[int], None]] = None
                    ) -> ControlResult:
    """One episode of model-predictive control in ``sim`` (see the module docstring); ``on_step(k)``
    is called after the k-th planning step."""
    generator = torch.Generator(device=device).manual_seed(seed)
    low = torch.as_tensor(sim.low, device=device)
    high = torch.as_tensor(sim.high, device=device)
    modes = [(module, module.training) for module in (model, inference) if isinstance(module, torch.nn.Module)]
    for module, _ in modes:
        module.eval()
    try:
        policy = MPCPolicy(model, inference, low, high, config, generator, value_scale, sample, noise, on_step)
        episode = rollout(sim, policy, env_steps, seed, observation=observation, record_frames=record_frames)
    finally:
        for module, mode in modes:
            module.train(mode)
    return ControlResult(episode, episode.total_reward, policy.step_seconds, policy.scores)
