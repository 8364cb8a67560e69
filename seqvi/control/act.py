"""The world-model commands on a trained run: ``seqvi plan`` and ``seqvi collect``.

Both play episodes of the run's environment (the store's ``env`` and
``action_repeat`` attributes, written by ``seqvi preprocess``) with
model-predictive control in the run's latent space (``seqvi.control.plan``):
at every stored step the run's q filters the real observation, CEM searches
H-step action sequences by imagined reward under the run's p, and the first
action is held for the store's action repeat. Defaults are PlaNet's (horizon
12, 1,000 candidates, top 100, 10 iterations, re-planned every step).

* ``plan_run``: ``episodes`` test episodes without exploration noise; their
  returns (the environment's, summed over every environment step) go to
  ``RUN/plan/returns.json`` with the settings and the time per planning step,
  and one episode's frames to ``RUN/plan/episode.mp4``.
* ``collect_run``: episodes with Gaussian exploration noise (PlaNet: sd 0.3)
  appended to the run's data set under a new source name
  (``seqvi.data.control.collect``): the store grows, nothing in it is
  rewritten, and a later ``seqvi train`` reads the new episodes.

Episode e resets the environment with ``SeedSequence([seed, stream, e])``
(stream 3 for plan, 4 for collect: never the seeds of the downloaded
episodes, whose streams are the splits 0..2) and draws the planner's noise
from a generator seeded with the same number, so a call is reproducible.
The loop reports through ``progress(done, total)`` (planning steps) and
never prints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from seqvi.data.environment import Simulator
from seqvi.control.cem import CEMConfig
from seqvi.control.plan import ControlResult, control_episode
from seqvi.errors import SeqviError

Progress = Callable[[int, int], None]
PLAN_STREAM, COLLECT_STREAM = 3, 4


@dataclass
class Environment:
    """What a run's store says about the environment its episodes came from."""
    env: str
    action_repeat: int
    observation: str          # "state" | "pixels"
    value_scale: float
    dataset: str
    root: Optional[str]


@dataclass
class ControlSummary:
    """Episodes played by the planner on a run."""
    run_dir: Path
    env: str
    returns: list = field(default_factory=list)          # the environment's return of each episode
    predicted: list = field(default_factory=list)        # mean elite score (imagined return) per episode
    step_seconds: list = field(default_factory=list)     # mean wall time of a filter + plan step, per episode
    steps: list = field(default_factory=list)            # stored steps per episode
    seeds: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    paths: dict = field(default_factory=dict)            # what was written: returns, video, store, ...
    appended: Any = None                                 # collect: seqvi.data.append.AppendResult

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan

    @property
    def sd(self) -> float:
        return float(np.std(self.returns, ddof=1)) if len(self.returns) > 1 else 0.0

    @property
    def seconds_per_step(self) -> float:
        total = sum(s * n for s, n in zip(self.step_seconds, self.steps))
        return total / max(sum(self.steps), 1)

    def to_dict(self) -> dict:
        return {"env": self.env, "returns": self.returns, "mean": self.mean, "sd": self.sd,
                "predicted": self.predicted, "seconds_per_step": self.seconds_per_step,
                "step_seconds": self.step_seconds, "steps": self.steps, "seeds": self.seeds,
                "config": self.config, "seconds": self.seconds,
                "paths": {k: str(v) for k, v in self.paths.items()}}


def environment_of(run: Any) -> Environment:
    """The run's environment from its store's attributes; one line if the run has none (e.g. MIDI)."""
    if not run.model.has("reward") or not run.spec.input_dim:
        raise SeqviError(f"{run.run_dir}: planning needs a run trained on interaction data (actions and rewards) "
                         f"with a model that predicts rewards (model.name: rssm); this run's data set "
                         f"'{run.spec.dataset}' has {'no actions' if not run.spec.input_dim else 'them'} and its "
                         f"model {'has no' if not run.model.has('reward') else 'has a'} reward head")
    with run.open_store() as store:
        attrs = store.attrs
        if not attrs.get("env"):
            raise SeqviError(f"{store.path}: the store names no environment (attribute 'env'); planning needs "
                             f"episodes of a simulator (`seqvi preprocess` of a gymnasium data set)")
        return Environment(str(attrs["env"]), int(attrs.get("action_repeat", 1)),
                           str(attrs.get("observation", "state")), float(attrs.get("value_scale", 1.0)),
                           run.spec.dataset, run.recipe.data.root)


def episode_seed(seed: int, stream: int, episode: int) -> int:
    """The reset seed of episode ``episode`` of a call with ``seed`` (module docstring)."""
    return int(np.random.SeedSequence([seed, stream, episode]).generate_state(1)[0] % (2 ** 31))


def play(run: Any, episodes: int, *, config: CEMConfig, seed: int, stream: int, noise: float = 0.0,
         env_steps: Optional[int] = None, record: int = 0, progress: Optional[Progress] = None,
         ) -> tuple[ControlSummary, list[ControlResult]]:
    """``episodes`` episodes of MPC with the run's model in its environment; frames of the first
    ``record`` episodes are kept (rendering costs ~4 ms per stored step)."""
    if episodes < 1:
        raise SeqviError(f"--episodes must be at least 1, got {episodes}")
    if noise < 0:
        raise SeqviError(f"--noise must be >= 0, got {noise}")
    where = environment_of(run)
    started = time.perf_counter()
    render = record > 0 or where.observation == "pixels"
    with Simulator(where.env, where.action_repeat, render=render) as sim:
        if sim.action_dim != run.spec.input_dim:
            raise SeqviError(f"{run.run_dir}: the model takes actions of {run.spec.input_dim} columns, "
                             f"{where.env} has {sim.action_dim}")
        steps = env_steps or sim.max_episode_steps or 1000
        per_episode = steps // where.action_repeat
        summary = ControlSummary(run.run_dir, where.env, config={
            **asdict(config), "noise": noise, "seed": seed, "episodes": episodes, "env_steps": steps,
            "action_repeat": where.action_repeat, "observation": where.observation,
            "checkpoint": str(run.checkpoint), "epoch": run.epoch, "step": run.step})
        results = []
        for e in range(episodes):
            done, reset = e * per_episode, episode_seed(seed, stream, e)
            result = control_episode(
                run.model, run.inference, sim, env_steps=steps, seed=reset,
                observation=where.observation, value_scale=where.value_scale, config=config, noise=noise,
                record_frames=e < record, device=run.device,
                on_step=None if progress is None else lambda k: progress(done + k, episodes * per_episode))
            results.append(result)
            summary.returns.append(float(result.total_reward))
            summary.predicted.append(float(np.mean(result.plans)) if result.plans else math.nan)
            summary.step_seconds.append(float(np.mean(result.step_seconds)) if result.step_seconds else 0.0)
            summary.steps.append(len(result.step_seconds))
            summary.seeds.append(reset)
        fps = sim.fps
    summary.seconds = time.perf_counter() - started
    summary.config["fps"] = fps
    return summary, results


def plan_run(run: Any, episodes: int = 10, *, config: CEMConfig = CEMConfig(), seed: int = 0, noise: float = 0.0,
             env_steps: Optional[int] = None, video: bool = True, out: Optional[Path] = None,
             progress: Optional[Progress] = None) -> ControlSummary:
    """``seqvi plan``: test episodes of MPC; writes ``returns.json`` and one episode's MP4 to ``out``
    (default ``RUN/plan``)."""
    from seqvi.data.video_samples import write_rgb_mp4
    from seqvi.engine.runs import write_text_atomic

    summary, results = play(run, episodes, config=config, seed=seed, stream=PLAN_STREAM, noise=noise,
                            env_steps=env_steps, record=1 if video else 0, progress=progress)
    out = Path(out) if out is not None else run.run_dir / "plan"
    out.mkdir(parents=True, exist_ok=True)
    if video and results[0].episode.frames is not None:
        summary.paths["video"] = write_rgb_mp4(results[0].episode.frames, out / "episode.mp4",
                                               fps=summary.config["fps"] or 10.0, upscale=4)
    summary.paths["returns"] = out / "returns.json"
    write_text_atomic(summary.paths["returns"], json.dumps(summary.to_dict(), indent=1))
    return summary


def collect_run(run: Any, episodes: int = 5, *, source: Optional[str] = None, split: str = "train",
                config: CEMConfig = CEMConfig(), seed: int = 0, noise: float = 0.3,
                env_steps: Optional[int] = None, progress: Optional[Progress] = None) -> ControlSummary:
    """``seqvi collect``: episodes with exploration noise appended to the run's data set under
    ``source`` (default: the first free ``planner-N``), without rewriting what the store holds."""
    from seqvi.data.append import used_sources
    from seqvi.data.control import collect
    from seqvi.data.manifest import store_path

    where = environment_of(run)
    path = store_path(where.dataset, where.root)
    used = used_sources(path, split)
    if source is None:
        source = next(f"planner-{k}" for k in range(1, len(used) + 2) if f"planner-{k}" not in used)
    elif source in used:   # refused before any episode is played
        raise SeqviError(f"{path}: source '{source}' is already in the store; name each collection anew "
                         f"(--source), or leave --source out for the next free planner-N")
    summary, results = play(run, episodes, config=config, seed=seed, stream=COLLECT_STREAM, noise=noise,
                            env_steps=env_steps, record=episodes if where.observation == "pixels" else 0,
                            progress=progress)
    summary.appended = collect(where.dataset, where.root, split, source, [r.episode for r in results])
    summary.paths["store"] = summary.appended.path
    summary.config.update(source=source, split=split)
    return summary
