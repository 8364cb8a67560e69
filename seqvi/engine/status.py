"""A run's life on disk, and its status read back from it (``seqvi runs``, ``seqvi sweep``).

What ``train`` writes, besides ``config.yaml``, ``metrics.jsonl`` and checkpoints:

    train.lock       while a train process works on the run: {"pid", "host", "started"};
                     created exclusively at the start, removed at every exit that Python sees
                     (normal end, error, signal, Ctrl-C); only SIGKILL, the OOM killer or a
                     lost node leave it behind
    history.jsonl    one line when training starts ({"event": "start", "step", "epoch", "time",
                     "pid", "host", "recipe"}) and one when it stops ({"event": "stop",
                     "reason", "step", "epoch", "checkpoint_step", "time", "message"})
    preempted        written on SIGTERM / SIGUSR1 (the batch script requeues on it)
    submitted        written by ``seqvi sweep --sbatch`` ({"job", "time"}); a train start clears it

Stop reasons: ``finished`` (all epochs), ``patience`` (train.patience epochs without a
better validation), ``budget`` (train.max_minutes used), ``signal`` (SIGTERM/SIGUSR1),
``interrupt`` (Ctrl-C), ``abort`` (a second Ctrl-C), ``error`` (an exception; its message).

The status rule, first match wins:

1. **running** — ``train.lock`` names a live process on this host (or any process on
   another host: seqvi cannot look there, so a lock left by a lost node reads as running
   until it is deleted);
2. **submitted** — ``submitted`` exists and no training started since (queued in SLURM);
3. **failed** — ``train.lock`` names a dead process on this host (killed: SIGKILL, OOM),
   or the last stop is ``error``;
4. **preempted** — the ``preempted`` marker exists, or the last stop is ``signal``;
5. **finished** — the last stop is ``finished`` or ``patience`` (why: "early stop");
6. **stopped** — the last stop is ``interrupt``, ``budget`` or ``abort``: resumable, rerun train;
7. **empty** — no checkpoint (a run directory that never reached its first checkpoint);
8. runs from before ``history.jsonl``: **finished** when metrics.jsonl reached
   ``train.epochs``, else **failed** ("ended without a stop record").

Nothing here imports torch: listing a thousand runs reads small text files only.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from seqvi.errors import SeqviError

REQUEUE_EXIT = 75    # EX_TEMPFAIL, "try again later": the sbatch scripts requeue on it
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
LOCK = "train.lock"
HISTORY = "history.jsonl"
PREEMPTED = "preempted"
SUBMITTED = "submitted"
RESUMABLE_STOPS = ("interrupt", "budget", "abort")
STOP_WHY = {"finished": "", "patience": "early stop (train.patience)", "budget": "time budget (train.max_minutes)",
            "signal": "signal (preempted)", "interrupt": "Ctrl-C", "abort": "aborted (second Ctrl-C)"}


class Preempted(SeqviError):
    """Training stopped on SIGTERM/SIGUSR1 after writing a checkpoint; rerun to resume (the scheduler does)."""

    exit_code = REQUEUE_EXIT


class Interrupted(SeqviError):
    """Training stopped on Ctrl-C after writing a checkpoint; rerun to resume."""

    exit_code = INTERRUPT_EXIT


# --------------------------------------------------------------------------- writing (train)


def _append(path: Path, record: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


class Lifecycle:
    """What one ``train`` call leaves about itself: the lock, start and stop records.

    ``with Lifecycle(run_dir):`` takes the lock (refusing a run that a live process on
    this host is training) and always releases it; ``start`` and ``stop`` append records;
    leaving by an exception after ``start`` without ``stop`` records the exception.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.started = False
        self.stopped = False
        self.position = {"step": 0, "epoch": 0, "checkpoint_step": None}

    def __enter__(self) -> "Lifecycle":
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        return self

    def _lock(self) -> None:
        path = self.run_dir / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = read_lock(self.run_dir)
                if owner and owner_alive(owner) and owner.get("pid") != os.getpid():
                    where = owner.get("host") if owner.get("host") != me["host"] else "this machine"
                    raise SeqviError(f"{self.run_dir}: already being trained by process {owner.get('pid')} on "
                                     f"{where} ({path}); wait for it, or stop it, or delete the lock if that "
                                     f"process is gone") from None
                path.unlink(missing_ok=True)   # left by a killed process (or by ourselves): take it over
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return

    def start(self, step: int, epoch: int, recipe: str = "") -> None:
        self.started = True
        self.position.update(step=step, epoch=epoch, checkpoint_step=step)
        if self.enabled:
            (self.run_dir / SUBMITTED).unlink(missing_ok=True)
            _append(self.run_dir / HISTORY, {"event": "start", "step": step, "epoch": epoch, "time": time.time(),
                                              "pid": os.getpid(), "host": socket.gethostname(), "recipe": recipe})

    def at(self, step: int, epoch: int) -> None:
        """Where training is (for a stop record written on an exception)."""
        self.position.update(step=step, epoch=epoch)

    def saved(self, step: int) -> None:
        self.position["checkpoint_step"] = step

    def stop(self, reason: str, message: str = "") -> None:
        if self.stopped or not self.started:
            return
        self.stopped = True
        if self.enabled:
            _append(self.run_dir / HISTORY, {"event": "stop", "reason": reason, **self.position,
                                              "time": time.time(), "message": message})

    def __exit__(self, kind, err, tb) -> None:
        if err is not None:
            if isinstance(err, Preempted):
                self.stop("signal", str(err))
            elif isinstance(err, Interrupted):
                self.stop("interrupt", str(err))
            elif isinstance(err, KeyboardInterrupt):
                self.stop("abort", "second Ctrl-C")
            else:
                text = " ".join(str(err).split())[:300]
                self.stop("error", f"{type(err).__name__}: {text}" if not isinstance(err, SeqviError) else text)
        if self.enabled:
            owner = read_lock(self.run_dir)
            if owner is None or owner.get("pid") == os.getpid():
                (self.run_dir / LOCK).unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading


def read_lock(run_dir: Path) -> dict | None:
    try:
        owner = json.loads((Path(run_dir) / LOCK).read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}   # torn or garbled: a lock of unknown owner


def owner_alive(owner: dict) -> bool:
    """Whether the lock's process runs: checked on this host; assumed on another (unknowable)."""
    if owner.get("host") not in (None, socket.gethostname()):
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_jsonl(path: Path) -> list[dict]:
    """The whole lines of a JSON-lines file that parse to objects; a torn or garbled line is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_config(run_dir: Path) -> dict:
    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def find_runs(paths: list[Path] | tuple[Path, ...], max_depth: int = 4) -> list[Path]:
    """Run directories among ``paths``: each a run itself, or a folder (a sweep) searched below."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise SeqviError(f"{path}: no such run directory or folder")
        if not path.is_dir():
            raise SeqviError(f"{path}: not a folder (give a run directory or a folder of runs)")
        found += _walk(path, max_depth)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [Path(os.path.relpath(p)) if not os.path.relpath(p).startswith("..") else p for p in unique]


def _walk(path: Path, depth: int) -> list[Path]:
    if is_run(path):
        return [path]
    if depth == 0:
        return []
    runs = []
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        runs += _walk(child, depth - 1)
    return runs


@dataclass
class RunStatus:
    run_dir: Path
    status: str                         # running, submitted, failed, preempted, finished, stopped, empty
    why: str = ""
    epoch: int = 0                      # epochs validated (the last epoch record)
    epochs: int | None = None           # train.epochs of the config
    step: int = 0
    best_valid: float = math.nan
    best_epoch: int = 0
    modified: float = 0.0               # newest file of the run, seconds since the epoch
    config: dict = field(default_factory=dict)
    recipe: str = ""                    # the recipe file of the last start
    seconds: float = 0.0                # training wall time, summed over start..stop segments
    curve: list = field(default_factory=list)   # [(epoch, valid nats/step, training seconds at that point)]
    has_checkpoint: bool = False


def run_status(run_dir: Path) -> RunStatus:
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    epochs = (config.get("train") or {}).get("epochs") if isinstance(config.get("train"), dict) else None
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    history = [r for r in read_jsonl(run_dir / HISTORY) if r.get("event") in ("start", "stop")]
    valid = [r for r in metrics if isinstance(r.get("valid_nats_per_step"), (int, float)) and "epoch" in r]
    out = RunStatus(run_dir, "empty", epochs=epochs if isinstance(epochs, int) else None, config=config)
    out.has_checkpoint = any((run_dir / "checkpoints" / n).is_file() for n in ("last.pt", "best.pt"))
    out.modified = _newest(run_dir)
    if valid:
        out.epoch = int(valid[-1]["epoch"])
        best = min(valid, key=lambda r: r["valid_nats_per_step"])
        out.best_valid, out.best_epoch = float(best["valid_nats_per_step"]), int(best["epoch"])
    steps = [r["step"] for r in metrics if isinstance(r.get("step"), int)]
    out.step = max(steps) if steps else 0
    starts = [r for r in history if r["event"] == "start"]
    out.recipe = str(starts[-1].get("recipe", "")) if starts else ""
    out.seconds, out.curve = _timeline(history, metrics, valid)
    out.status, out.why = _classify(run_dir, out, history)
    return out


def _classify(run_dir: Path, out: RunStatus, history: list[dict]) -> tuple[str, str]:
    owner = read_lock(run_dir)
    if owner is not None:
        if owner_alive(owner):
            host = owner.get("host")
            where = f" on {host}" if host and host != socket.gethostname() else ""
            return "running", f"pid {owner.get('pid', '?')}{where}"
        return "failed", f"killed (process {owner.get('pid', '?')} is gone; no stop was recorded)"
    submitted = run_dir / SUBMITTED
    last_start = max((r.get("time", 0) for r in history if r["event"] == "start"), default=0)
    if submitted.exists() and submitted.stat().st_mtime >= last_start:
        try:
            job = json.loads(submitted.read_text(encoding="utf-8")).get("job", "?")
        except (OSError, ValueError, AttributeError):
            job = "?"
        return "submitted", f"SLURM job {job}"
    last = history[-1] if history else None
    if last is not None and last["event"] == "stop":
        reason = last.get("reason", "")
        if reason == "error":
            return "failed", str(last.get("message", ""))
        if (run_dir / PREEMPTED).exists() or reason == "signal":
            return "preempted", f"resumes at step {last.get('checkpoint_step', '?')}"
        if reason in ("finished", "patience"):
            return "finished", STOP_WHY[reason]
        if reason in RESUMABLE_STOPS:
            return "stopped", f"{STOP_WHY[reason]}; resumes at step {last.get('checkpoint_step', '?')}"
    if (run_dir / PREEMPTED).exists():
        return "preempted", ""
    if not out.has_checkpoint:
        return "empty", "no checkpoint"
    if last is not None and last["event"] == "start":
        return "failed", "ended without a stop record (killed?)"
    if out.epochs is not None and out.epoch >= out.epochs:
        return "finished", ""
    return "failed", "ended without a stop record (killed?)"


def _timeline(history: list[dict], metrics: list[dict], valid: list[dict]) -> tuple[float, list]:
    """Training seconds (start..stop segments; gaps between calls do not count) and the curve."""
    times = [float(r["time"]) for r in metrics if isinstance(r.get("time"), (int, float))]

    def last_line(start: float, before: float) -> float:   # a killed call ends at its last metrics line
        return max([t for t in times if start <= t <= before] + [start])

    segments = []
    for record in history:
        if record["event"] == "start":
            start = float(record.get("time", 0))
            if segments and segments[-1][1] is None:
                segments[-1][1] = last_line(segments[-1][0], start)
            segments.append([start, None])
        elif segments and segments[-1][1] is None:
            segments[-1][1] = float(record.get("time", 0))
    if not segments and times:   # a run from before history.jsonl: first to last line
        segments = [[min(times), max(times)]]
    if segments and segments[-1][1] is None:
        segments[-1][1] = last_line(segments[-1][0], math.inf)

    def elapsed(t: float) -> float:
        return sum(max(0.0, min(t, b) - a) for a, b in segments if a <= t)

    total = sum(max(0.0, b - a) for a, b in segments)
    curve = [(int(r["epoch"]), float(r["valid_nats_per_step"]),
              elapsed(float(r["time"])) if isinstance(r.get("time"), (int, float)) else math.nan) for r in valid]
    return total, curve


def _newest(run_dir: Path) -> float:
    newest = 0.0
    for path in (run_dir, run_dir / "metrics.jsonl", run_dir / HISTORY, run_dir / LOCK,
                 run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt", run_dir / "config.yaml"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            continue
    return newest
