"""The ``seqvi`` command line: parse, call one library function, render.

Heavy imports (torch, h5py, the engine) happen inside the commands so that
``seqvi --help`` is instant. A ``SeqviError`` becomes one red line on stderr
and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from seqvi.errors import SeqviError

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_enable=False,
    help="Deep sequential latent variable models, trained and evaluated by variational filtering.",
)
STATE = {"debug": False}

RootOpt = typer.Option(None, "--root", help="Data root (default: $SEQVI_DATA, else a source checkout's datasets/, "
                                            "else ./datasets).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="Torch intra-op threads (default: $SEQVI_THREADS, else 1).")


def command(fn):
    """Register ``fn`` as a command whose SeqviErrors become one line and exit code 2.

    An OSError that names a file (an output path that is a directory, a full
    disk, no permission) is bad input too: one line naming the file, exit 2.
    A stop that is not an error (a signal, Ctrl-C) prints "stopped:" and exits
    with its own code; a Ctrl-C the command did not handle (a second one while
    training) prints one line and exits 130.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if STATE["debug"]:
                raise
            from seqvi.report import err_console

            err_console.print("[bold red]aborted:[/] Ctrl-C (a run keeps its last checkpoint; rerun to resume)")
            raise typer.Exit(130) from None
        except (SeqviError, OSError) as err:
            if STATE["debug"] or (isinstance(err, OSError) and err.filename is None):
                raise
            from rich.markup import escape

            from seqvi.report import err_console

            if isinstance(err, OSError):
                err = SeqviError(f"{err.filename2 or err.filename}: {err.strerror or err}")
            label = "error" if err.exit_code == 2 else "stopped"
            err_console.print(f"[bold red]{label}:[/] {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(err.exit_code) from None

    return app.command(name=fn.__name__.rstrip("_").replace("_", "-"))(wrapper)


def _warn(line: str) -> None:
    """One yellow line on stderr: something the user asked for had a side effect worth knowing."""
    from rich.markup import escape

    from seqvi.report import err_console

    if os.environ.get("RANK", "0") == "0":   # under torchrun, rank 0 tells
        err_console.print(f"[bold yellow]warning:[/] {escape(line)}", soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from seqvi import __version__

        typer.echo(f"seqvi {__version__}")
        raise typer.Exit()


def _datasets() -> list[str]:
    from seqvi.data.manifest import available

    try:
        return available()
    except OSError:
        return []


def _complete_dataset(incomplete: str) -> list[str]:
    return [name for name in _datasets() if name.startswith(incomplete)]


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
                 version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")) -> None:
    STATE["debug"] = debug


def _dataset_help(what: str) -> str:
    return f"{what}: {', '.join(_datasets()) or 'none found'} (or one of $SEQVI_MANIFESTS)."


@command
def download(name: str = typer.Argument(..., help=_dataset_help("Data set"), autocompletion=_complete_dataset),
             root: Optional[str] = RootOpt,
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Export only the first N files (music21 sources) or N episodes per split (simulators); for quick trials."),
             pixels: bool = typer.Option(False, "--pixels", help="Simulators: also render 64x64 RGB frames (about 4 ms each).")) -> None:
    """Fetch a data set's raw files into <root>/raw/NAME (sha256-checked, resumable), or generate them."""
    from seqvi.data.control import GeneratedEpisodes
    from seqvi.data.prepare import download as run_download
    from seqvi.report import FileProgress, console, generated_lines, progress_bar

    with progress_bar() as bar:
        raw, result = run_download(name, root, progress=FileProgress(bar), limit=limit, pixels=pixels)
    if isinstance(result, dict):
        for file, digest in result.items():
            console.print(f"{file}  sha256 {digest}")
    elif isinstance(result, GeneratedEpisodes):
        for line in generated_lines(result):
            console.print(line)
    else:
        if result.already_done:
            console.print("already exported (delete EXPORT.json to redo)")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.written.items()))
        console.print(f"exported {sum(result.written.values())} chorales ({counts}); "
                      f"{result.duplicates} duplicates dropped, {len(result.skipped)} files skipped")
        for line in _skipped(result.skipped):
            console.print(line)
    console.print(f"raw files in {raw}")


@command
def preprocess(name: str = typer.Argument(..., help=_dataset_help("Data set"), autocompletion=_complete_dataset),
               source: Optional[Path] = typer.Option(None, "--source", help="A zip, folder or .pickle you already have."),
               root: Optional[str] = RootOpt,
               strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable file instead of skipping it."),
               max_steps: int = typer.Option(100_000, "--max-steps", help="Refuse sequences longer than this many steps."),
               pixels: bool = typer.Option(False, "--pixels", help="Interaction data: observe the 64x64 frames instead of the state vectors.")) -> None:
    """Convert raw files into <root>/processed/NAME.h5."""
    from seqvi.data.prepare import preprocess as run_preprocess
    from seqvi.report import FileProgress, console, preprocess_table, progress_bar

    with progress_bar() as bar:
        report = run_preprocess(name, root, source, strict=strict, max_steps=max_steps, progress=FileProgress(bar),
                                pixels=pixels)
    console.print(preprocess_table(report))
    notes = report.notes
    line = f"{report.files} files, {report.files / max(report.seconds, 1e-9):.0f} files/s"
    if notes.notes:
        line += (f"; notes {notes.notes:,} placed, {notes.out_of_range} outside 21–108, {notes.drums} drum, "
                 f"{notes.unterminated} unterminated, {notes.zero_length} shorter than a step")
    console.print(line)
    console.print(f"skipped {len(report.skipped)} unreadable files")
    for line in _skipped(report.skipped):
        console.print(line)
    console.print(f"store: {report.path}")


@command
def train(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
          overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides."),
          run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe name>)."),
          device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt,
          force: bool = typer.Option(False, "--force", help="Replace a run directory whose config differs."),
          nproc: int = typer.Option(1, "--nproc", min=1, help="Launch this many data-parallel processes with torchrun.")) -> None:
    """Train (or resume) a run described by a recipe.

    Stops after a whole step with checkpoints/last.pt written, and a rerun resumes: on SIGTERM/SIGUSR1
    (exit 75, requeue), on Ctrl-C (exit 130; a second Ctrl-C aborts at once), when train.max_minutes is
    used up (exit 0) and after train.patience epochs without a better validation (exit 0).

    Output: one line per epoch (train loss with its recon and KL parts and the KL weight, valid free energy
    and KL, gradient norm, learning rate, time; all in nats per time step; "posterior collapse: z unused"
    when the valid KL is below 0.01 nats/step), in a terminal or not. In a terminal a live bar shows the
    step and loss; in a log (not a terminal) it is a plain line every ~10% of the steps with an ETA. Every
    figure also goes to RUN/metrics.jsonl, and to TensorBoard (RUN/tensorboard/) with train.tensorboard=true.
    """
    if nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc, recipe, overrides or [], run_dir, device, threads, force))
    from seqvi.config import load_recipe
    from seqvi.engine.setup import configure_threads, validate_sections
    from seqvi.engine.train import train as run_train
    from seqvi.report import TrainProgress, console, free_energy_figure, progress_bar, train_summary

    configure_threads(threads)
    spec = load_recipe(recipe, overrides or [], check=validate_sections, warn=_warn)
    target = run_dir or Path("runs") / recipe.stem
    with progress_bar() as bar:
        result = run_train(spec, target, device=device, force=force, events=TrainProgress(bar), source=str(recipe),
                           picture=free_energy_figure)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    console.print(train_summary(result, spec.train))
    console.print(f"run: {target}  (checkpoints in {target / 'checkpoints'})")


@command
def eval_(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
          split: str = typer.Option("test", "--split", help="train, valid or test."),
          per_step: bool = typer.Option(False, "--per-step", help="One row per time step."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results here."),
          bound: str = typer.Option("none", "--bound", help="Also report a bound: elbo, iwae, fivo, all or none."),
          particles: int = typer.Option(16, "--particles", min=1, help="Particles K for IWAE and FIVO."),
          iterations: Optional[int] = typer.Option(None, "--iterations", min=1, help="AVF iterations per step at evaluation (default: the training value)."),
          refine: int = typer.Option(0, "--refine", min=0, help="Measure the amortization gap with this many gradient steps per time step."),
          refine_lr: float = typer.Option(0.05, "--refine-lr", help="Step size of the refinement."),
          device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt,
          seed: int = typer.Option(0, "--seed", help="Seed for the posterior samples.")) -> None:
    """Free energy of a split per time step (nats/step, nats/sequence), optional bounds and gap.

    Progress: a bar per pass (the free energy with its bounds and gap, AVF's per-iteration curve); in a
    log (not a terminal) a plain line every ~10% of the sequences with an ETA."""
    from seqvi.engine.evaluate import evaluate_run
    from seqvi.engine.run import load_run
    from seqvi.engine.setup import configure_threads
    from seqvi.report import (FileProgress, console, eval_table, iteration_table, plot_free_energy, plot_iterations,
                              progress_bar)

    configure_threads(threads)
    run = load_run(checkpoint, device)
    with progress_bar() as bar:
        out = evaluate_run(run, split, bound=bound, particles=particles, iterations=iterations,
                           refine_steps=refine, refine_lr=refine_lr, seed=seed, json_out=json_out,
                           progress=FileProgress(bar))
    result, name = out["result"], f"{split}-{out['tag']}"
    console.print(f"checkpoint: {run.checkpoint} (epoch {run.epoch}, step {run.step})")
    console.print(eval_table(result, per_step))
    plot = plot_free_energy(result, run.run_dir / "eval" / f"{name}.png")
    if out["curve"] is not None:
        console.print(iteration_table(out["curve"], split, run.inference.iterations,
                                      getattr(run.inference, "init", "prior"), out["curve_samples"]))
        console.print(f"iterations plot: {plot_iterations(out['curve'], run.run_dir / 'eval' / f'{name}_iterations.png')}")
    console.print(f"{split}: {result.nats_per_step:.4f} nats/step, {result.nats_per_sequence:.2f} nats/sequence "
                  f"({result.num_sequences} sequences, {result.steps} steps)")
    console.print(f"results: {out['json']} (copied to {out['json'].parent / (split + '.json')}, the latest, "
                  f"which `seqvi compare` reads)\nplot: {plot}")


@command
def sample(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
           num: int = typer.Option(4, "--num", min=1, help="Number of sequences."),
           length: int = typer.Option(128, "--length", min=1, help="Time steps per sequence."),
           prime: int = typer.Option(0, "--prime", min=0, help="Prime with the first N steps of test sequences."),
           out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <run>/samples)."),
           seed: int = typer.Option(0, "--seed"), device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt,
           mean: Optional[bool] = typer.Option(None, "--mean/--draw", help="Write the emission's mean, or draw from it (default: mean for video, draw otherwise).")) -> None:
    """Generate sequences from the prior (optionally primed) and write them as files and a PNG."""
    from seqvi.engine.run import load_run
    from seqvi.engine.sample import sample_run
    from seqvi.engine.setup import configure_threads
    from seqvi.report import console, plot_samples

    configure_threads(threads)
    result = sample_run(load_run(checkpoint, device), num=num, length=length, prime=prime, out=out, seed=seed,
                        mean=mean, picture=plot_samples)
    for path in result.paths[:-1]:
        console.print(f"wrote {path}")
    console.print(f"picture: {result.paths[-1]}")
    if result.removed:
        console.print(f"removed {len(result.removed)} files of the previous call: "
                      f"{', '.join(p.name for p in result.removed)}")


@command
def predict(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
            split: str = typer.Option("test", "--split", help="train, valid or test."),
            context: int = typer.Option(10, "--context", min=1, help="Real frames (steps) to condition on."),
            horizon: Optional[List[int]] = typer.Option(None, "--horizon", min=1, help="Frames to predict; repeat for several (default 10 and 30; interaction data: the longest)."),
            samples: int = typer.Option(100, "--samples", min=1, help="Samples per sequence; video: the best is scored (SVG protocol); interaction data: their mean."),
            max_sequences: Optional[int] = typer.Option(None, "--max-sequences", min=1, help="Score only the first N eligible sequences."),
            batch_size: int = typer.Option(100, "--batch-size", min=1, help="Sample copies generated at once (bounds memory)."),
            seed: int = typer.Option(0, "--seed"), device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt) -> None:
    """Prediction from real context: video, best of N samples by PSNR and SSIM per predicted frame;
    interaction data (actions), open loop with the recorded actions: observation and reward error per step."""
    from seqvi.control.open_loop import predict_split
    from seqvi.engine.run import load_run
    from seqvi.engine.runs import write_text_atomic
    from seqvi.engine.setup import configure_threads
    from seqvi.report import PREDICT_VIEWS, console, plot_imagined_frames, progress_bar

    configure_threads(threads)
    run = load_run(checkpoint, device)
    with run.open_store() as store, progress_bar() as bar:
        task = bar.add_task("predict", total=None, info="")
        result = predict_split(run.model, run.inference, store.split(split), split, context=context,
                               horizons=tuple(horizon or (10, 30)), samples=samples, max_sequences=max_sequences,
                               batch_size=batch_size, seed=seed,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    table, plot_fn = PREDICT_VIEWS[result.kind]
    console.print(table(result))
    payload = {**result.to_dict(), "checkpoint": str(run.checkpoint), "epoch": run.epoch, "step": run.step,
               "dataset": run.spec.dataset, "seed": seed}
    out = run.run_dir / "eval" / f"predict_{split}.json"
    write_text_atomic(out, json.dumps(payload, indent=1))
    plot = plot_fn(result, run.run_dir / "eval" / f"predict_{split}.png")
    console.print(f"results: {out}\nplot: {plot}")
    if getattr(result, "frames", None) is not None:
        strip = plot_imagined_frames(result, run.run_dir / "eval" / f"predict_{split}_frames.png")
        console.print(f"real against imagined frames: {strip}")


def _cem_config(horizon: int, candidates: int, top_k: int, iterations: int):
    from seqvi.control.cem import CEMConfig

    try:
        return CEMConfig(horizon, candidates, top_k, iterations)
    except ValueError as err:
        raise SeqviError(f"--top-k {top_k} must not exceed --candidates {candidates}") from err


def _play(name: str, checkpoint: Path, device: str, threads: Optional[int], play):
    """Load the run and call ``play(run, progress)`` (plan or collect) under a progress bar -> (run, summary)."""
    from seqvi.engine.run import load_run
    from seqvi.engine.setup import configure_threads
    from seqvi.report import progress_bar

    configure_threads(threads)
    run = load_run(checkpoint, device)
    with progress_bar() as bar:
        task = bar.add_task(name, total=None, info="")
        return run, play(run, lambda done, total: bar.update(task, completed=done, total=total))


HorizonOpt = typer.Option(12, "--horizon", min=1, help="CEM: actions planned ahead (stored steps; PlaNet: 12).")
CandidatesOpt = typer.Option(1000, "--candidates", min=1, help="CEM: action sequences per iteration (PlaNet: 1,000).")
TopKOpt = typer.Option(100, "--top-k", min=1, help="CEM: elites refit per iteration (PlaNet: 100).")
IterationsOpt = typer.Option(10, "--iterations", min=1, help="CEM: refits per plan (PlaNet: 10).")
EnvStepsOpt = typer.Option(None, "--env-steps", min=1, help="Environment steps per episode (default: its time limit).")


@command
def plan(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
         episodes: int = typer.Option(10, "--episodes", min=1, help="Test episodes to play."),
         horizon: int = HorizonOpt, candidates: int = CandidatesOpt, top_k: int = TopKOpt,
         iterations: int = IterationsOpt, env_steps: Optional[int] = EnvStepsOpt,
         noise: float = typer.Option(0.0, "--noise", min=0.0, help="Gaussian exploration noise (sd) on each executed action."),
         video: bool = typer.Option(True, "--video/--no-video", help="Write one episode as RUN/plan/episode.mp4."),
         seed: int = typer.Option(0, "--seed", help="Seeds the episodes' resets and the planner's draws."),
         device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt) -> None:
    """Model-predictive control in the run's latent space (CEM, PlaNet's defaults) in its real environment."""
    from seqvi.control.act import plan_run
    from seqvi.report import console, plan_table

    config = _cem_config(horizon, candidates, top_k, iterations)
    run, summary = _play("plan", checkpoint, device, threads, lambda run, progress: plan_run(
        run, episodes, config=config, seed=seed, noise=noise, env_steps=env_steps, video=video, progress=progress))
    console.print(f"checkpoint: {run.checkpoint} (epoch {run.epoch}, step {run.step})")
    console.print(plan_table(summary))
    console.print(f"return {summary.mean:.1f} ± {summary.sd:.1f} over {len(summary.returns)} episodes; "
                  f"{1e3 * summary.seconds_per_step:.1f} ms per planning step; {summary.seconds:.0f} s")
    for key in ("returns", "video"):
        if key in summary.paths:
            console.print(f"{key}: {summary.paths[key]}")


@command
def collect(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
            episodes: int = typer.Option(5, "--episodes", min=1, help="Episodes to play and append."),
            source: Optional[str] = typer.Option(None, "--source", help="Name of the new source (default: the first free planner-N)."),
            split: str = typer.Option("train", "--split", help="Split to append to."),
            horizon: int = HorizonOpt, candidates: int = CandidatesOpt, top_k: int = TopKOpt,
            iterations: int = IterationsOpt, env_steps: Optional[int] = EnvStepsOpt,
            noise: float = typer.Option(0.3, "--noise", min=0.0, help="Gaussian exploration noise (sd) on each executed action (PlaNet: 0.3)."),
            seed: int = typer.Option(0, "--seed", help="Seeds the episodes' resets and the planner's draws."),
            device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt) -> None:
    """Play episodes with the planner (and exploration noise) and append them to the run's data set."""
    from seqvi.control.act import collect_run
    from seqvi.report import console, plan_table

    config = _cem_config(horizon, candidates, top_k, iterations)
    _, summary = _play("collect", checkpoint, device, threads, lambda run, progress: collect_run(
        run, episodes, source=source, split=split, config=config, seed=seed, noise=noise, env_steps=env_steps,
        progress=progress))
    console.print(plan_table(summary, title="collected episodes"))
    added = summary.appended
    console.print(f"appended {added.sequences} episodes ({added.steps:,} steps) to split '{added.split}' as source "
                  f"'{added.source}' of {added.path}; `seqvi train` on it reads them")


@command
def sweep(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
          grid: Optional[List[str]] = typer.Argument(None, help="key.path=v1,v2,... : one axis of the grid each."),
          seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, e.g. --seeds 0 1 2 (default: 0)."),
          eval_args: str = typer.Option("", "--eval", help='Options for `seqvi eval` on each finished run, e.g. "--bound all --particles 16".'),
          sbatch: Optional[Path] = typer.Option(None, "--sbatch", help="Submit each run with this batch script (scripts/slurm/train.sbatch) instead."),
          runs_dir: Path = typer.Option(Path("runs"), "--runs", help="Folder of sweeps: runs go to <runs>/<recipe>/<point>."),
          device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt) -> None:
    """Train a grid of overrides x seeds one run after another, then evaluate each; a rerun resumes the sweep."""
    from seqvi.engine.setup import configure_threads
    from seqvi.experiments.sweep import split_seeds, sweep as run_sweep
    from seqvi.report import SweepProgress, TrainProgress, console, free_energy_figure, progress_bar, sweep_table

    seed_list, grid_items = split_seeds(seeds, grid or [])
    split, evaluate = _eval_in_process(eval_args)
    configure_threads(threads)
    with progress_bar() as bar:
        result = run_sweep(recipe, seeds=seed_list, grid_items=grid_items, runs=runs_dir, device=device,
                           evaluate=evaluate, eval_split=split, eval_args=eval_args, sbatch=sbatch,
                           events=SweepProgress(), train_events=TrainProgress(bar), picture=free_energy_figure)
    console.print(sweep_table(result))
    if result.failed:
        raise SeqviError(f"{len(result.failed)} of {len(result.outcomes)} runs failed (table above); "
                         f"rerun the same command to retry them")
    console.print(f"compare them: seqvi compare {result.folder}")


def _eval_in_process(args: str):
    """(split, callback) running this app's own `eval` command on a run directory, in this process.

    The options are parsed by `eval` itself now, so a typo fails before any training.
    """
    import shlex

    argv = shlex.split(args)
    if "--checkpoint" in argv:
        raise SeqviError("--eval: leave out --checkpoint (the sweep gives each run's directory)")
    command_ = typer.main.get_command(app).commands["eval"]
    try:
        split = command_.make_context("eval", argv + ["--checkpoint", "RUN"]).params["split"]
    except typer.TyperException as err:   # click's usage errors (no such option, bad value)
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise SeqviError(f"--eval {args!r}: {message}") from None

    def evaluate(run_dir: Path) -> None:
        try:
            with command_.make_context("eval", argv + ["--checkpoint", str(run_dir)]) as ctx:
                command_.invoke(ctx)
        except typer.Exit as done:
            if done.exit_code:
                raise SeqviError(f"eval of {run_dir} failed (exit {done.exit_code}; its error is above)") from None

    return split, evaluate


@command
def compare(paths: List[Path] = typer.Argument(..., help="Run directories, or folders of runs (a sweep)."),
            split: str = typer.Option("test", "--split", help="Whose eval/<split>.json to read."),
            csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV (mean, sd, n per number); - for stdout."),
            markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as Markdown; - for stdout."),
            plot: Optional[Path] = typer.Option(None, "--plot", help="Learning-curve PNG (default: compare.png beside the runs).")) -> None:
    """Compare runs in one table (seeds pooled: mean ± sd) and plot their learning curves."""
    from seqvi.data.atomic import output_target, write_text_atomic
    from seqvi.experiments.compare import compare as run_compare
    from seqvi.report import (compare_csv, compare_flags, compare_markdown, compare_table, console, err_console,
                              plot_learning_curves)

    outputs = [(path, render) for path, render in ((csv, compare_csv), (markdown, compare_markdown)) if path]
    to_stdout = [render for path, render in outputs if str(path) == "-"]
    if len(to_stdout) > 1:
        raise SeqviError("--csv - and --markdown -: only one table can go to stdout")
    for path in [path for path, _ in outputs if str(path) != "-"] + ([plot] if plot else []):
        output_target(path)   # a FIFO, device or folder is refused before any work
    result = run_compare(paths, split)
    human = err_console if to_stdout else console   # stdout carries only the table asked for with -
    human.print(compare_table(result))
    for line in compare_flags(result):
        human.print(line)
    for path, render in outputs:
        if str(path) == "-":
            sys.stdout.write(render(result))
            sys.stdout.flush()
        else:
            write_text_atomic(path, render(result))
            human.print(f"table: {path}")
    human.print(f"learning curves: {plot_learning_curves(result, plot or result.default_plot)}")


@command
def runs(paths: Optional[List[Path]] = typer.Argument(None, help="Run directories or folders of runs (default: runs).")) -> None:
    """List runs with their status (finished, running, preempted, stopped, failed, empty), epoch and best valid."""
    from seqvi.experiments.listing import find_runs, run_status
    from seqvi.report import console, runs_table

    found = find_runs(paths or [Path("runs")])
    if not found:
        raise SeqviError(f"no run directories (folders with a config.yaml) under {', '.join(map(str, paths or ['runs']))}")
    console.print(runs_table([run_status(p) for p in found]))


@command
def models() -> None:
    """List every registered model, inference procedure and data adapter: where each comes from (seqvi,
    or an installed package's entry point) and its constructor options. A recipe may also name a class
    by its import path (model.name: mypkg.storn:STORN)."""
    from seqvi.engine.setup import catalog
    from seqvi.report import console, models_table

    for table in models_table(catalog()):
        console.print(table)


def _launch_torchrun(nproc: int, recipe: Path, overrides: list[str], run_dir: Optional[Path], device: str,
                     threads: Optional[int], force: bool) -> int:
    """Re-run this train command under torchrun (``seqvi.engine.launch``: the workers' exit status, one line
    per failed worker) with ``nproc`` processes."""
    import subprocess

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SeqviError("--nproc inside a torchrun job: drop --nproc (torchrun already started the processes)")
    args = [sys.executable, "-m", "seqvi.engine.launch", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "seqvi"] + (["--debug"] if STATE["debug"] else []) + ["train", str(recipe), *overrides,
            "--run-dir", str(run_dir or Path("runs") / recipe.stem), "--device", device]
    if threads:
        args += ["--threads", str(threads)]
    if force:
        args.append("--force")
    return subprocess.call(args)


def _skipped(skipped: list) -> list[str]:
    from seqvi.report import skipped_lines

    return skipped_lines(skipped)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
