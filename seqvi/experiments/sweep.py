"""``seqvi sweep``: a grid of recipe overrides x seeds, trained one run after another, then evaluated.

    seqvi sweep recipes/quickstart.yaml --seeds 0 1 2 model.z_size=16,32 train.lr=1e-3,3e-3

Each point of the grid is a run directory
``<runs>/<recipe>/<key=value,...>-seed<k>/`` (``seed<k>`` alone without grid
keys), trained with the recipe, the point's ``key=value`` overrides and
``seed=k``. Every point is validated before any is trained, so a typo fails
at once and names its override.

A rerun of the same sweep picks up where it stopped (``seqvi.experiments.listing``
says what each run is): a finished run is not trained again; an unfinished
one (stopped, preempted, failed, empty) resumes from its checkpoint; a run
that another process is training is left to it. Then every finished run is
evaluated through the ``evaluate`` callback (the CLI runs ``seqvi eval`` in
this process with the ``--eval`` options) unless ``eval/<split>.json`` is
newer than its ``best.pt`` and was made with the same options; the options
of each evaluation are kept in ``<runs>/<recipe>/sweep.json``.

Ctrl-C or a preemption signal stops the whole sweep (after the running
training checkpoints); rerun it to go on. A run that fails (a non-finite
loss, an error) is recorded and the sweep goes on with the next.

With ``sbatch``, each run that is not finished or running is submitted as
``sbatch --job-name=seqvi-<recipe>-<point> SCRIPT RECIPE RUN_DIR key=value... seed=k``
(``scripts/slurm/train.sbatch`` takes exactly that), and the job id is kept
in ``RUN_DIR/submitted`` until the job's training starts; finished runs are
still evaluated here. Rerun the sweep once the jobs are done to evaluate them.
A rerun asks the scheduler (``squeue --me --states=all``) which jobs are alive:
a run whose job (its recorded id, or a job of the point's name: a requeued
one) is pending, running, suspended or requeued is left to it and the job's
state is shown; a submitted or preempted run whose job is gone (cancelled,
failed, purged) is submitted again. Without ``squeue`` the recorded ids are
trusted: submitted and preempted runs are left alone.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from seqvi.engine.lifecycle import SUBMITTED, Interrupted, Preempted
from seqvi.experiments.listing import run_status
from seqvi.errors import RecipeError, SeqviError

Events = Callable[[str, dict], None]
SWEEP_FILE = "sweep.json"


@dataclass
class Point:
    name: str
    run_dir: Path
    overrides: list


@dataclass
class Outcome:
    point: Point
    action: str = ""          # trained, resumed, skipped, submitted, failed
    status: str = ""          # the run's status afterwards (seqvi runs)
    evaluated: str = ""       # evaluated, up to date, failed, or "" (not finished)
    message: str = ""


@dataclass
class SweepResult:
    folder: Path
    outcomes: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return [o for o in self.outcomes if o.action == "failed" or o.evaluated == "failed"]


def split_values(text: str) -> list[str]:
    """``"1e-3,3e-3"`` -> ``["1e-3", "3e-3"]``; commas inside brackets belong to one value (``[8,8],[16]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    if any(not v.strip() for v in values):
        raise RecipeError(f"sweep value list {text!r}: an empty value (two commas, or a comma at an end)")
    return [v.strip() for v in values]


def split_seeds(seeds: str | None, args: list[str]) -> tuple[list[int], list[str]]:
    """Seeds and grid items from ``--seeds 0 1 2 key=v1,v2``: the option takes the first seed (or
    ``"0 1 2"``, ``0,1,2``) and the other whole numbers arrive among the positional arguments."""
    if seeds is None:
        stray = [a for a in args if "=" not in a]
        if stray:
            raise RecipeError(f"sweep argument {stray[0]!r}: expected key.path=v1,v2,... "
                              f"(for seeds: --seeds {' '.join(stray)})")
        return [0], list(args)
    words = seeds.replace(",", " ").split() + [a for a in args if "=" not in a]
    bad = [w for w in words if not re.fullmatch(r"-?\d+", w)]
    if bad:
        raise RecipeError(f"--seeds: {bad[0]!r} is not a whole number")
    from seqvi.config import MAX_SEED

    bad = [w for w in words if not 0 <= int(w) <= MAX_SEED]
    if bad:
        raise RecipeError(f"--seeds: {', '.join(bad)} outside 0..2**63-1 (seeds are whole numbers from 0); "
                          f"nothing was trained")
    return [int(w) for w in words], [a for a in args if "=" in a]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        if "=" not in item:
            raise RecipeError(f"sweep argument {item!r}: expected key.path=v1,v2,... (seeds go after --seeds)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or key == "seed":
            raise RecipeError(f"sweep argument {item!r}: " + ("use --seeds for seeds" if key == "seed" else "empty key"))
        if key in (k for k, _ in grid):
            raise RecipeError(f"sweep argument {item!r}: '{key}' is given twice")
        grid.append((key, split_values(text)))
    return grid


def points(recipe: Path, grid: list[tuple[str, list[str]]], seeds: list[int], runs: Path) -> list[Point]:
    folder = runs / recipe.stem
    out = []
    for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
        assignment = [f"{key}={value}" for (key, _), value in zip(grid, values)]
        label = ",".join(f"{key}={_slug(value)}" for (key, _), value in zip(grid, values))
        for seed in seeds:
            name = f"{label}-seed{seed}" if label else f"seed{seed}"
            out.append(Point(name, folder / name, assignment + [f"seed={seed}"]))
    return out


def _slug(value: str) -> str:
    return re.sub(r"[/\\\s]+", "_", value).strip("_") or "_"


def sweep(recipe: Path, *, seeds: list[int], grid_items: list[str], runs: Path = Path("runs"),
          device: str = "auto", evaluate: Callable[[Path], None] | None = None, eval_split: str = "test",
          eval_args: str = "", sbatch: Path | None = None, events: Events | None = None,
          train_events: Events | None = None, picture: Callable[[Any], Any] | None = None) -> SweepResult:
    """Train (or submit) and evaluate every point of the grid; see the module docstring. ``train_events``
    and ``picture`` go to each ``train`` call."""
    from seqvi.config import load_recipe
    from seqvi.engine.setup import validate_sections

    events = events or (lambda kind, info: None)
    recipe = Path(recipe)
    if not seeds:
        raise SeqviError("--seeds: give at least one seed")
    grid = parse_grid(grid_items)
    todo = points(recipe, grid, list(dict.fromkeys(seeds)), Path(runs))
    specs = [load_recipe(recipe, p.overrides, check=validate_sections) for p in todo]   # every point, first
    if sbatch is None and any(spec.train.tensorboard for spec in specs):
        from seqvi.engine.board import require

        require()
    sbatch_exe = _sbatch_program() if sbatch is not None else None
    if sbatch is not None and not Path(sbatch).is_file():
        raise SeqviError(f"--sbatch {sbatch}: no such batch script (e.g. scripts/slurm/train.sbatch)")
    queue = _queue() if sbatch is not None else None
    result = SweepResult(Path(runs) / recipe.stem)
    record = _read_record(result.folder)
    record.update(recipe=str(recipe), grid={k: v for k, v in grid}, seeds=list(seeds))
    record.setdefault("runs", {})
    for i, (point, spec) in enumerate(zip(todo, specs)):
        outcome = Outcome(point)
        result.outcomes.append(outcome)
        before = run_status(point.run_dir).status if point.run_dir.exists() else "new"
        events("point", {"index": i + 1, "total": len(todo), "name": point.name, "run_dir": str(point.run_dir),
                         "status": before})
        if before in ("finished", "running"):
            outcome.action = "skipped"
        elif sbatch is not None:
            job = _alive(queue, point, recipe)
            if job or (queue is None and before in ("submitted", "preempted")):
                outcome.action, outcome.message = "skipped", f"SLURM job {job[0]} {job[1]}" if job else ""
            else:
                gone = _recorded_job(point) if before == "submitted" else ""
                outcome.action, outcome.message = "submitted", _submit(sbatch_exe, sbatch, recipe, point)
                if gone:
                    outcome.message += f" (job {gone} left the queue before training started)"
        else:
            outcome.action = "resumed" if (point.run_dir / "checkpoints" / "last.pt").exists() else "trained"
            try:
                _train_point(spec, point, device, recipe, train_events, picture)
            except (Interrupted, Preempted, KeyboardInterrupt):
                raise
            except SeqviError as err:
                outcome.action, outcome.message = "failed", str(err)
            except Exception as err:   # a bug or a fault (OSError, ...): recorded, and the sweep goes on
                text = " ".join(str(err).split())[:300]
                outcome.action, outcome.message = "failed", f"{type(err).__name__}: {text}"
        outcome.status = run_status(point.run_dir).status if point.run_dir.exists() else "new"
        if outcome.status == "finished" and evaluate is not None:
            outcome.evaluated = _evaluate(point, evaluate, eval_split, eval_args, record, outcome)
        record["runs"][point.name] = {**record["runs"].get(point.name, {}), "overrides": point.overrides,
                                      "action": outcome.action, "status": outcome.status}
        _write_record(result.folder, record)
        events("done", {"name": point.name, "action": outcome.action, "status": outcome.status,
                        "evaluated": outcome.evaluated, "message": outcome.message})
    return result


def _train_point(spec, point: Point, device: str, recipe: Path, train_events: Events | None,
                 picture: Callable[[Any], Any] | None = None) -> None:
    from seqvi.engine.train import train

    train(spec, point.run_dir, device=device, events=train_events, source=str(recipe), picture=picture)


def _evaluate(point: Point, evaluate: Callable[[Path], None], split: str, args: str, record: dict,
              outcome: Outcome) -> str:
    out = point.run_dir / "eval" / f"{split}.json"
    best = point.run_dir / "checkpoints" / "best.pt"
    done = record["runs"].get(point.name, {}).get("eval_args")
    if out.exists() and best.exists() and out.stat().st_mtime >= best.stat().st_mtime and done == args:
        return "up to date"
    try:
        evaluate(point.run_dir)
    except (Interrupted, Preempted, KeyboardInterrupt):
        raise
    except SeqviError as err:
        outcome.message = f"eval: {err}"
        return "failed"
    record["runs"].setdefault(point.name, {})["eval_args"] = args
    return "evaluated"


def _sbatch_program() -> str:
    program = shutil.which("sbatch")
    if program is None:
        raise SeqviError("--sbatch: no `sbatch` program on PATH (run the sweep on a SLURM login node)")
    return program


# Job states (squeue %T) of a job that will still run or is running; the others (COMPLETED,
# CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE) are over.
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
         "RESIZING", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD"}


def _queue() -> dict | None:
    """{job id: (name, state)} of this user's jobs that SLURM still knows; None without a working ``squeue``."""
    program = shutil.which("squeue")
    if program is None:
        return None
    try:
        done = subprocess.run([program, "--me", "--states=all", "--noheader", "--format=%i|%j|%T"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None      # no controller reachable: trust the recorded job ids, as without squeue
    jobs = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def _job_name(recipe: Path, point: Point) -> str:
    return f"seqvi-{recipe.stem}-{point.name}"[:120]


def _recorded_job(point: Point) -> str:
    try:
        return str(json.loads((point.run_dir / SUBMITTED).read_text(encoding="utf-8")).get("job", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _alive(queue: dict | None, point: Point, recipe: Path) -> tuple[str, str] | None:
    """(job id, state) of the point's live job: the recorded id, else a live job of the point's name."""
    if queue is None:
        return None
    job = _recorded_job(point)
    if job in queue and queue[job][1] in ALIVE:
        return job, queue[job][1]
    name = _job_name(recipe, point)
    for job, (job_name, state) in queue.items():
        if job_name == name and state in ALIVE:
            return job, state
    return None


def _submit(program: str, script: Path, recipe: Path, point: Point) -> str:
    job_name = _job_name(recipe, point)
    args = [program, f"--job-name={job_name}", str(script), str(recipe), str(point.run_dir), *point.overrides]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SeqviError(f"sbatch for {point.run_dir}: {err}") from None
    if done.returncode != 0:
        why = " ".join((done.stderr or done.stdout).split())[:300]
        raise SeqviError(f"sbatch for {point.run_dir} failed (exit {done.returncode}): {why}")
    match = re.search(r"(\d+)", done.stdout)
    job = match.group(1) if match else done.stdout.strip()[:40]
    point.run_dir.mkdir(parents=True, exist_ok=True)
    from seqvi.engine.runs import write_text_atomic

    write_text_atomic(point.run_dir / SUBMITTED, json.dumps({"job": job, "time": time.time(),
                                                             "argv": args[1:]}) + "\n")
    return f"job {job}"


def _read_record(folder: Path) -> dict:
    try:
        record = json.loads((folder / SWEEP_FILE).read_text(encoding="utf-8"))
        return record if isinstance(record, dict) and isinstance(record.get("runs", {}), dict) else {}
    except (OSError, ValueError):
        return {}


def _write_record(folder: Path, record: dict) -> None:
    from seqvi.engine.runs import write_text_atomic

    write_text_atomic(folder / SWEEP_FILE, json.dumps(record, indent=1) + "\n")
