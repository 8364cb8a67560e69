"""A simulator seen as stored steps: gymnasium with action repeat, headless 64x64 frames.

    sim = Simulator("Pendulum-v1", action_repeat=2, render=True)
    episode = rollout(sim, policy, env_steps=200, seed=s)      # an Episode in the stored alignment

``rollout`` resets with ``seed`` and records o_0 with a zero action and
reward; then, while fewer than ``env_steps`` environment steps have run, it
asks ``policy(x_t)`` for a_t (x_t: the latest stored observation, the state
vector (D,) float32 or, with ``observation="pixels"``, the frame (3, 64, 64)
uint8), holds it for R = ``action_repeat`` environment steps and records
(o_{t+1}, a_t, r_{t+1} = the sum of the R rewards). An environment that
terminates or truncates inside a repeat ends the episode there (its partial
reward sum is recorded). Actions are clipped to the action space's bounds
before they are sent and stored.

Frames. ``render=True`` makes the environment with ``render_mode="rgb_array"``
under SDL's dummy video driver (``SDL_VIDEODRIVER=dummy`` unless already set:
no display needed); each stored step's image (Pendulum: 500x500) is area-
resized to 64x64 RGB (``shrink_rgb``: the area weights of
``seqvi.data.video``, in float32). Measured for Pendulum-v1 on this 2-core
machine: 2.7 ms to draw a 500x500 frame + 1.8 ms to shrink it, 4.3 ms per
frame in a whole download (7.6 ms when OpenBLAS runs 2 threads on busy
cores), against 35 us for an environment step without rendering: a frame
costs about 120 environment steps. Only stored steps are rendered (every R
environment steps). ``render_seconds`` / ``rendered`` keep the measured cost.

Only bounded continuous (Box) action spaces and 1-D Box observation spaces
are supported: the planner searches a box of actions and the state vector is
always recorded. gymnasium missing, an unknown environment id or another
space is one SeqviError line.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Callable

import numpy as np

from seqvi.data.episodes import FRAME_SIZE, Episode, to_chw64
from seqvi.data.video import area_weights
from seqvi.errors import SeqviError

EXTRA = "pip install 'seqvi[control]'"
Policy = Callable[[np.ndarray], np.ndarray]


def import_gymnasium():
    """The gymnasium module, or one line naming the extra that installs it."""
    try:
        import gymnasium
    except ImportError:
        raise SeqviError(f"interaction data needs gymnasium, which is not installed: {EXTRA}") from None
    return gymnasium


class Simulator:
    """One gymnasium environment: bounds, sizes, repeat-stepping and 64x64 frames."""

    def __init__(self, env_id: str, action_repeat: int = 1, render: bool = False):
        gym = import_gymnasium()
        if action_repeat < 1:
            raise SeqviError(f"action_repeat must be at least 1, got {action_repeat}")
        if render:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            try:
                import pygame  # noqa: F401  (gymnasium's classic-control renderer)
            except ImportError:
                raise SeqviError(f"rendering frames needs pygame, which is not installed: {EXTRA}") from None
        try:
            self.env = gym.make(env_id, render_mode="rgb_array" if render else None)
        except gym.error.Error as err:
            raise SeqviError(f"environment '{env_id}': {_first_line(err)}") from None
        space, obs_space = self.env.action_space, self.env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            self.env.close()
            raise SeqviError(f"environment '{env_id}': action space {space} is not a 1-D box of real "
                             f"actions; seqvi's control data and planner need one")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            self.env.close()
            raise SeqviError(f"environment '{env_id}': observation space {obs_space} is not a state vector "
                             f"(a 1-D box)")
        self.env_id, self.action_repeat, self.render = env_id, int(action_repeat), render
        self.low = np.asarray(space.low, dtype=np.float32)
        self.high = np.asarray(space.high, dtype=np.float32)
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            self.env.close()
            raise SeqviError(f"environment '{env_id}': its action box [{self.low}, {self.high}] is unbounded; "
                             f"random actions and the planner need finite bounds")
        self.action_dim, self.obs_dim = int(space.shape[0]), int(obs_space.shape[0])
        spec = self.env.spec
        self.max_episode_steps = spec.max_episode_steps if spec is not None else None
        dt = getattr(self.env.unwrapped, "dt", None)
        self.fps = 1.0 / (dt * self.action_repeat) if dt else None     # stored steps per second
        self.render_seconds, self.rendered = 0.0, 0

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=int(seed))
        return np.asarray(obs, dtype=np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, int]:
        """Hold ``action`` for R environment steps: (observation, summed reward, done, steps run)."""
        total, done, steps = 0.0, False, 0
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, _ = self.env.step(action)
            total, steps = total + float(reward), steps + 1
            if terminated or truncated:
                done = True
                break
        return np.asarray(obs, dtype=np.float32), total, done, steps

    def frame(self) -> np.ndarray:
        """The current image, area-resized to (64, 64, 3) uint8 RGB."""
        started = time.perf_counter()
        image = np.asarray(self.env.render())                            # (H, W, 3)
        if image.shape[:2] != FRAME_SIZE:
            image = shrink_rgb(image)
        self.render_seconds += time.perf_counter() - started
        self.rendered += 1
        return np.ascontiguousarray(image, dtype=np.uint8)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "Simulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@lru_cache(maxsize=8)
def _weights32(n_in: int, n_out: int) -> np.ndarray:
    return area_weights(n_in, n_out).astype(np.float32)


def shrink_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (64, 64, 3) uint8 by area averaging (``seqvi.data.video``'s weights) in
    float32: 9x faster than the float64 path on a 500x500 frame, the same bytes on rendered frames."""
    rows, cols = _weights32(image.shape[0], FRAME_SIZE[0]), _weights32(image.shape[1], FRAME_SIZE[1])
    out = np.einsum("ih,hwc,jw->ijc", rows, image.astype(np.float32), cols, optimize=True)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def rollout(sim: Simulator, policy: Policy, env_steps: int, seed: int, observation: str = "state",
            record_frames: bool = False) -> Episode:
    """One episode of at most ``env_steps`` environment steps, in the stored alignment (module docstring)."""
    if observation not in ("state", "pixels"):
        raise SeqviError(f"observation must be 'state' or 'pixels', got {observation!r}")
    frames_on = record_frames or observation == "pixels"
    if frames_on and not sim.render:
        raise SeqviError(f"environment '{sim.env_id}' was made without rendering; frames need render=True")
    obs = [sim.reset(seed)]
    actions = [np.zeros(sim.action_dim, np.float32)]
    rewards = [0.0]
    frames = [sim.frame()] if frames_on else None
    done, ran = False, 0
    while not done and ran + sim.action_repeat <= env_steps:
        x = to_chw64(frames[-1][None])[0] if observation == "pixels" else obs[-1]
        action = np.clip(np.asarray(policy(x), dtype=np.float32).reshape(sim.action_dim), sim.low, sim.high)
        o, reward, done, steps = sim.step(action)
        ran += steps
        obs.append(o)
        actions.append(action)
        rewards.append(reward)
        if frames_on:
            frames.append(sim.frame())
    return Episode(np.stack(obs), np.stack(actions), np.asarray(rewards, dtype=np.float32),
                   np.stack(frames) if frames_on else None)


def uniform_policy(sim: Simulator, rng: np.random.Generator) -> Policy:
    """Actions drawn uniformly in the action box, independently per stored step."""
    return lambda x: rng.uniform(sim.low, sim.high).astype(np.float32)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
