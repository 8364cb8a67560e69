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
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Deep sequential latent variable models, trained and evaluated by variational filtering.",
)
STATE = {"debug": False}

RootOpt = typer.Option(None, "--root", help="Data root (default: $SEQVI_DATA, else the repository's datasets/).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="Torch intra-op threads (default: $SEQVI_THREADS, else 1).")


def command(fn):
    """Register ``fn`` as a command whose SeqviErrors become one line and exit code 2.

    An OSError that names a file (an output path that is a directory, a full
    disk, no permission) is bad input too: one line naming the file, exit 2.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
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


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    STATE["debug"] = debug


@command
def download(name: str = typer.Argument(..., help="Data set name (a manifest in datasets/)."),
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
def preprocess(name: str = typer.Argument(..., help="Data set name."),
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
    """Train (or resume) a run described by a recipe. SIGTERM/SIGUSR1 checkpoint and exit 75 (requeue)."""
    if nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc, recipe, overrides or [], run_dir, device, threads, force))
    from seqvi.config import load_recipe
    from seqvi.engine.setup import configure_threads, validate_sections
    from seqvi.engine.train import train as run_train
    from seqvi.report import TrainProgress, console, progress_bar

    configure_threads(threads)
    spec = load_recipe(recipe, overrides or [])
    validate_sections(spec, str(recipe))
    target = run_dir or Path("runs") / recipe.stem
    with progress_bar() as bar:
        result = run_train(spec, target, device=device, force=force, events=TrainProgress(bar), source=str(recipe))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports
    rate = result.train_steps / max(result.seconds, 1e-9)
    if result.train_steps == 0 and result.last_valid == float("inf"):   # a finished run, re-run as it was
        console.print(f"already trained to epoch {result.epoch} (step {result.step}), nothing to do "
                      f"(raise train.epochs to extend); best valid {result.best_valid:.4f} nats/step")
    else:
        console.print(f"trained to epoch {result.epoch} (step {result.step}) in {result.seconds:.1f} s, "
                      f"{rate:,.0f} time steps/s; valid {result.last_valid:.4f} nats/step, "
                      f"best {result.best_valid:.4f}")
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
    """Free energy of a split per time step (nats/step, nats/sequence), optional bounds and gap."""
    from seqvi.engine.evaluate import evaluate as run_evaluate
    from seqvi.engine.run import load_run
    from seqvi.engine.runs import write_text_atomic
    from seqvi.engine.setup import configure_threads
    from seqvi.objectives import BOUNDS
    from seqvi.report import console, eval_table, plot_free_energy

    choices = {"none": (), "all": tuple(BOUNDS), **{b: (b,) for b in BOUNDS}}
    if bound not in choices:
        raise SeqviError(f"--bound {bound}: expected one of {', '.join(choices)}")
    configure_threads(threads)
    run = load_run(checkpoint, device)
    if iterations is not None:
        if not run.inference.iterative:
            raise SeqviError(f"--iterations: the run's inference '{run.recipe.inference['name']}' is not iterative")
        run.inference.eval_iterations = iterations
    with run.open_store() as store:
        result = run_evaluate(run.model, run.inference, store.split(split), split, device=run.device,
                              batch_size=run.recipe.data.eval_batch_size, seed=seed, bounds=choices[bound],
                              particles=particles, refine={"steps": refine, "lr": refine_lr} if refine else None,
                              bin_width=store.attrs.get("bin_width"))
    console.print(eval_table(result, per_step))
    payload = {**result.to_dict(), "checkpoint": str(run.checkpoint), "epoch": run.epoch, "step": run.step,
               "dataset": run.spec.dataset, "seed": seed, "particles": particles,
               "iterations": iterations, "refine_steps": refine}
    text = json.dumps(payload, indent=1)
    out = run.run_dir / "eval" / f"{split}.json"
    write_text_atomic(out, text)
    if json_out:
        write_text_atomic(json_out, text)
    plot = plot_free_energy(result, run.run_dir / "eval" / f"{split}.png")
    if run.inference.iterative:
        from seqvi.engine.iterations import iteration_curve
        from seqvi.report import iteration_table, plot_iterations

        with run.open_store() as store:
            curve = iteration_curve(run.model, run.inference, store.split(split),
                                    iterations=iterations or max(run.inference.iterations, 5),
                                    batch_size=run.recipe.data.eval_batch_size, device=run.device, seed=seed)
        console.print(iteration_table(curve, split))
        payload["iteration_curve"] = curve.tolist()
        write_text_atomic(out, json.dumps(payload, indent=1))
        if json_out:
            write_text_atomic(json_out, json.dumps(payload, indent=1))
        console.print(f"iterations plot: {plot_iterations(curve, run.run_dir / 'eval' / f'{split}_iterations.png')}")
    console.print(f"{split}: {result.nats_per_step:.4f} nats/step, {result.nats_per_sequence:.2f} nats/sequence "
                  f"({result.num_sequences} sequences, {result.steps} steps)")
    console.print(f"results: {out}\nplot: {plot}")


@command
def sample(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
           num: int = typer.Option(4, "--num", min=1, help="Number of sequences."),
           length: int = typer.Option(128, "--length", min=1, help="Time steps per sequence."),
           prime: int = typer.Option(0, "--prime", min=0, help="Prime with the first N steps of test sequences."),
           out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <run>/samples)."),
           seed: int = typer.Option(0, "--seed"), device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt,
           mean: Optional[bool] = typer.Option(None, "--mean/--draw", help="Write the emission's mean, or draw from it (default: mean for video, draw otherwise).")) -> None:
    """Generate sequences from the prior (optionally primed) and write them as files and a PNG."""
    from seqvi.data.batches import pad
    from seqvi.data.samples import SAMPLE_MEAN, SAMPLE_WRITERS
    from seqvi.engine.run import load_run
    from seqvi.engine.sample import sample_sequences
    from seqvi.engine.setup import configure_threads
    from seqvi.report import console, plot_samples

    configure_threads(threads)
    run = load_run(checkpoint, device)
    prime_x, truth = None, None
    if prime:
        if prime >= length:
            raise SeqviError(f"--prime {prime} must be shorter than --length {length}")
        with run.open_store() as store:
            test = store.split("test")
            picks = [i for i in range(len(test)) if test.lengths[i] >= prime][:num]
            if len(picks) < num:
                raise SeqviError(f"only {len(picks)} test sequences have {prime} steps to prime from")
            prime_x, _ = pad([test.read(i, 0, prime) for i in picks], test.value_scale)
            truth, _ = pad([test.read(i, 0, length) for i in picks], test.value_scale, length)
            truth = truth.numpy()
    use_mean = SAMPLE_MEAN.get(run.spec.adapter, False) if mean is None else mean
    x = sample_sequences(run.model, run.inference, num, length, prime=prime_x, seed=seed,
                         use_mean=use_mean).cpu().numpy()
    out_dir = out or run.run_dir / "samples"
    paths = SAMPLE_WRITERS[run.spec.adapter](x, out_dir, run.spec, truth=truth)
    png = plot_samples(run.spec.adapter, x, out_dir / "samples.png", primed=prime)
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"picture: {png}")


@command
def predict(checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory or checkpoint file."),
            split: str = typer.Option("test", "--split", help="train, valid or test."),
            context: int = typer.Option(10, "--context", min=1, help="Real frames to condition on."),
            horizon: Optional[List[int]] = typer.Option(None, "--horizon", min=1, help="Frames to predict; repeat for several (default 10 and 30)."),
            samples: int = typer.Option(100, "--samples", min=1, help="Samples per sequence; the best is scored (SVG protocol)."),
            max_sequences: Optional[int] = typer.Option(None, "--max-sequences", min=1, help="Score only the first N eligible sequences."),
            batch_size: int = typer.Option(100, "--batch-size", min=1, help="Sample copies generated at once (bounds memory)."),
            seed: int = typer.Option(0, "--seed"), device: str = DeviceOpt, threads: Optional[int] = ThreadsOpt) -> None:
    """Video prediction: condition on real frames, best of N samples by PSNR and SSIM per predicted frame."""
    from seqvi.engine.predict import predict as run_predict
    from seqvi.engine.run import load_run
    from seqvi.engine.runs import write_text_atomic
    from seqvi.engine.setup import configure_threads
    from seqvi.report import console, plot_predict, predict_table, progress_bar

    configure_threads(threads)
    run = load_run(checkpoint, device)
    with run.open_store() as store, progress_bar() as bar:
        task = bar.add_task("predict", total=None, info="")
        result = run_predict(run.model, run.inference, store.split(split), split, context=context,
                             horizons=tuple(horizon or (10, 30)), samples=samples, max_sequences=max_sequences,
                             batch_size=batch_size, seed=seed,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(predict_table(result))
    payload = {**result.to_dict(), "checkpoint": str(run.checkpoint), "epoch": run.epoch, "step": run.step,
               "dataset": run.spec.dataset, "seed": seed}
    out = run.run_dir / "eval" / f"predict_{split}.json"
    write_text_atomic(out, json.dumps(payload, indent=1))
    plot = plot_predict(result, run.run_dir / "eval" / f"predict_{split}.png")
    console.print(f"results: {out}\nplot: {plot}")


def _launch_torchrun(nproc: int, recipe: Path, overrides: list[str], run_dir: Optional[Path], device: str,
                     threads: Optional[int], force: bool) -> int:
    """Re-run this train command under ``torch.distributed.run`` with ``nproc`` processes."""
    import subprocess

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SeqviError("--nproc inside a torchrun job: drop --nproc (torchrun already started the processes)")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
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
