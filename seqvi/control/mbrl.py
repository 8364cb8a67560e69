"""The model-based RL loop (PlaNet's outer loop): random episodes -> train -> plan and collect -> retrain.

    round 0:   the data set's random-action episodes (``seqvi download`` + ``preprocess``, in the loop's
               own data root, so collecting never touches the user's store)
    round k:   train a run on every episode collected so far     ->  OUT/round-k/        (seqvi train)
               test it: ``test_episodes`` planned episodes        ->  OUT/round-k/loop-test/ (seqvi plan)
               collect ``collect_episodes`` with noise 0.3        ->  source round-k      (seqvi collect)
    until ``rounds`` rounds; per-round returns in OUT/returns.json (and a plot by the caller)

Each round trains a fresh run (same recipe and seed) on the grown store:
one crop per episode per epoch, so the number of updates grows with the
data, as PlaNet's "100 updates per collected episode" does. Resumable: each
part of a round is skipped when its output exists (a run whose training is
complete, a ``plan/returns.json``, a source already in the store), and an
interrupted ``train`` resumes exactly, so rerunning the same call continues
from where it stopped. Reports through ``events(kind, info)``; never prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from seqvi.data.append import used_sources
from seqvi.data.manifest import store_path
from seqvi.control.cem import CEMConfig
from seqvi.control.act import collect_run, plan_run
from seqvi.engine.runs import write_text_atomic

Events = Callable[[str, dict], None]


@dataclass
class LoopSettings:
    rounds: int = 4
    test_episodes: int = 10
    collect_episodes: int = 5
    noise: float = 0.3
    plan: CEMConfig = CEMConfig()
    seed: int = 0
    pixels: bool = False
    random_episodes: Optional[int] = None     # cap of random episodes per split (download --limit)
    env_steps: Optional[int] = None           # environment steps per planned episode (default: its time limit)


@dataclass
class LoopResult:
    out: Path
    rounds: list = field(default_factory=list)    # per round: returns, mean, sd, seconds, episodes, ...
    seconds: float = 0.0                          # wall time of the rounds (over every call that ran them)
    cpu_seconds: float = 0.0                      # this process's CPU time in them (the machine may be shared)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "rounds": self.rounds, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds}


def model_based_loop(recipe: Any, out: Path, settings: LoopSettings = LoopSettings(), *, device: str = "cpu",
                     events: Optional[Events] = None, train_events: Optional[Callable] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> LoopResult:
    """Run (or continue) the loop of ``recipe`` in ``out`` (see the module docstring)."""
    from dataclasses import replace

    from seqvi.data.prepare import download, preprocess
    from seqvi.engine.run import load_run
    from seqvi.engine.train import train

    events = events or (lambda kind, info: None)
    out = Path(out)
    root = str(out / "data")
    recipe = replace(recipe, data=replace(recipe.data, root=root))
    name = recipe.data.dataset
    summary_path = out / "returns.json"
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    result = LoopResult(out)
    if not store_path(name, root).exists():
        events("data", {"dataset": name, "root": root})
        download(name, root, limit=settings.random_episodes, pixels=settings.pixels)
        preprocess(name, root, pixels=settings.pixels)
    for k in range(settings.rounds):
        run_dir = out / f"round-{k}"
        round_started, cpu_started = time.perf_counter(), time.process_time()
        events("round", {"round": k, "run_dir": str(run_dir)})
        trained = train(recipe, run_dir, device=device, events=train_events, source=f"{out}/round-{k}")
        if trained.stop != "finished" and not trained.nothing_to_do:
            break                      # a time budget or patience stop: the run is not finished
        run = load_run(run_dir, device)
        returns_file = run_dir / "loop-test" / "returns.json"      # `seqvi plan` on the run writes plan/
        if returns_file.exists():
            tested = json.loads(returns_file.read_text())
        else:
            tested = plan_run(run, settings.test_episodes, config=settings.plan, seed=settings.seed + 1000 * k,
                              out=returns_file.parent,
                              video=k == settings.rounds - 1 or k == 0, env_steps=settings.env_steps,
                              progress=progress).to_dict()
        source = f"round-{k}"
        episodes = _episodes(store_path(name, root))
        old = next((r for r in previous.get("rounds", []) if r.get("round") == k), {})
        collected = old.get("collected_returns")
        if k + 1 < settings.rounds and source not in used_sources(store_path(name, root), "train"):
            collected = collect_run(run, settings.collect_episodes, source=source, config=settings.plan,
                                    seed=settings.seed + 1000 * k, noise=settings.noise, env_steps=settings.env_steps,
                                    progress=progress).returns
        entry = {"round": k, "run": str(run_dir), "episodes": episodes, "returns": tested["returns"],
                 "mean": tested["mean"], "sd": tested["sd"], "seconds_per_step": tested["seconds_per_step"],
                 "collected_returns": collected, "train_seconds": trained.seconds + old.get("train_seconds", 0.0),
                 "seconds": time.perf_counter() - round_started + old.get("seconds", 0.0),
                 "cpu_seconds": time.process_time() - cpu_started + old.get("cpu_seconds", 0.0)}
        result.rounds.append(entry)
        result.seconds = sum(r["seconds"] for r in result.rounds)
        result.cpu_seconds = sum(r["cpu_seconds"] for r in result.rounds)
        write_text_atomic(summary_path, json.dumps(result.to_dict(), indent=1))
        events("tested", entry)
    return result


def _episodes(path: Path) -> int:
    from seqvi.data.store import Store

    with Store(path) as store:
        return len(store.split("train"))
