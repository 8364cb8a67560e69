"""PlaNet's model-based loop on a recipe: random episodes -> train -> plan and collect -> retrain.

    python scripts/planet_loop.py recipes/planet_pendulum.yaml --out runs/planet [--rounds 4] [key=value ...]

Everything happens in the library (``seqvi.control.mbrl.model_based_loop``);
this script parses, reports and draws the returns per round
(OUT/returns.json, OUT/returns.png). Rerunning the same command continues
from the last finished round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the recipe")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--test-episodes", type=int, default=10)
    parser.add_argument("--collect", type=int, default=5, help="episodes collected per round")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixels", action="store_true")
    parser.add_argument("--random-episodes", type=int, default=None, help="cap of random episodes per split")
    parser.add_argument("--env-steps", type=int, default=None, help="environment steps per episode (default: its limit)")
    args = parser.parse_intermixed_args(argv)

    from seqvi.config import load_recipe
    from seqvi.control.cem import CEMConfig
    from seqvi.control.mbrl import LoopSettings, model_based_loop
    from seqvi.engine.setup import configure_threads, validate_sections
    from seqvi.errors import SeqviError
    from seqvi.report import console, err_console, plot_loop_returns, loop_table

    configure_threads()
    try:
        recipe = load_recipe(args.recipe, args.overrides, check=validate_sections)
        settings = LoopSettings(rounds=args.rounds, test_episodes=args.test_episodes,
                                collect_episodes=args.collect, noise=args.noise, seed=args.seed,
                                plan=CEMConfig(args.horizon, args.candidates, args.top_k, args.iterations),
                                pixels=args.pixels, random_episodes=args.random_episodes, env_steps=args.env_steps)

        def events(kind: str, info: dict) -> None:
            if kind == "round":
                console.print(f"round {info['round']}: {info['run_dir']}")
            elif kind == "tested":
                console.print(f"round {info['round']}: return {info['mean']:.1f} ± {info['sd']:.1f} "
                              f"({info['episodes']} training episodes, {1e3 * info['seconds_per_step']:.0f} ms "
                              f"per plan step, {info['seconds']:.0f} s)")

        result = model_based_loop(recipe, args.out, settings, events=events)
    except SeqviError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        return 2
    console.print(loop_table(result))
    console.print(f"returns: {args.out / 'returns.json'}\nplot: {plot_loop_returns(result, args.out / 'returns.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
