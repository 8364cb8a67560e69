"""A run's life on disk: the lock, the start and stop records, the markers train leaves.

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

The status rule that reads these back is ``seqvi/experiments/listing.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from seqvi.data.atomic import NO_SPACE, disk_full
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


def _append(path: Path, record: dict) -> None:
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
        except OSError as err:
            if err.errno not in NO_SPACE:
                raise
            written = -1
        if written != len(line):   # a full disk: one line, and no torn record left
            os.ftruncate(fd, size)
            raise disk_full(path, needed=len(line), what="a history record")
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
        try:
            self._record_exit(err)
        except (OSError, SeqviError):   # a full or read-only disk: the error in flight is the one to report
            if err is None:
                raise
        if self.enabled:
            owner = read_lock(self.run_dir)
            if owner is None or owner.get("pid") == os.getpid():
                (self.run_dir / LOCK).unlink(missing_ok=True)

    def _record_exit(self, err) -> None:
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


class StopFlag:
    """Signal handlers that only raise a flag; the loop (train's step, sample's file) acts on it.

    A second SIGINT while the first is pending raises KeyboardInterrupt at once. ``stopped(where)``
    raises what the flag means: ``Preempted`` for SIGTERM/SIGUSR1, ``Interrupted`` for Ctrl-C.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.signal: int = 0
        self._old = {}

    def __enter__(self):
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. a test runner's worker)
                    pass
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.signal:
            self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def stopped(self, where: str) -> None:
        """Raise ``Interrupted`` / ``Preempted`` with ``where`` when a signal came; else return."""
        if self.signal == signal.SIGINT:
            raise Interrupted(f"Ctrl-C {where}")
        if self.signal:
            raise Preempted(f"{signal.Signals(self.signal).name} {where}")


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
