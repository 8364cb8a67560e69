"""A run's life on disk: the lock, the start and stop records, the markers train leaves.

What ``train`` writes, besides ``config.yaml``, ``metrics.jsonl`` and checkpoints:

    train.lock       while a train process works on the run: {"pid", "host", "started"}, and
                     the process holds an exclusive ``fcntl.flock`` on it. The flock is the lock:
                     the kernel drops it when the process dies (SIGKILL, OOM), so a file left
                     behind is stale exactly when nobody holds its flock, and taking it over
                     needs no unlink (two processes can never both hold it). The file is removed
                     at every exit that Python sees; ``lock_held`` probes it (``seqvi runs``)
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

import errno
import fcntl
import json
import os
import signal
import socket
import stat
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
LOCK_TRIES = 500      # takeover attempts while a lock is held by a process that has not written its owner yet
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
        self._fd: int | None = None          # train.lock, open and flocked while we hold it

    def __enter__(self) -> "Lifecycle":
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        return self

    def _lock(self) -> None:
        path = self.run_dir / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(LOCK_TRIES):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                os.close(fd)
                raise SeqviError(f"{path}: {file_kind(mode)}, not a lock file; delete it and rerun")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = read_lock(self.run_dir)
                if owner and owner_alive(owner):
                    raise self._busy(owner, me, path) from None
                time.sleep(0.01)   # held, but its owner is not written yet (or a `seqvi runs` probe): again
                continue
            except OSError:         # a file system without flock: the pid check alone
                os.close(fd)
                return self._lock_by_pid(path, me)
            try:
                same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:            # the holder before us removed the file we opened: lock the new one
                os.close(fd)
                continue
            owner = read_lock(self.run_dir)
            if owner and owner.get("pid") != os.getpid() and owner.get("host") == me["host"] and owner_alive(owner):
                os.close(fd)        # a live process here that holds no flock (an older seqvi): leave it be
                raise self._busy(owner, me, path)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode("utf-8"))
            self._fd = fd
            return
        raise SeqviError(f"{self.run_dir}: {path} is held by another process that did not say who it is; "
                         f"wait for it, or delete the lock if no seqvi runs there")

    def _busy(self, owner: dict, me: dict, path: Path) -> SeqviError:
        where = owner.get("host") if owner.get("host") != me["host"] else "this machine"
        return SeqviError(f"{self.run_dir}: already being trained by process {owner.get('pid')} on {where} "
                          f"({path}); wait for it, or stop it, or delete the lock if that process is gone")

    def _lock_by_pid(self, path: Path, me: dict) -> None:
        owner = read_lock(self.run_dir)
        if owner and owner_alive(owner) and owner.get("pid") != os.getpid():
            raise self._busy(owner, me, path)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(me, handle)

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
                (self.run_dir / LOCK).unlink(missing_ok=True)   # removed while still held, then released
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

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


def read_regular(path: Path) -> tuple[str | None, str]:
    """(text, problem) of a small run file: (None, "") when absent; (None, why) when it is not a regular
    file (a FIFO would block a reader forever, a directory cannot be read) or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None, ""
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return None, f"{file_kind(mode)}, not a regular file"
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read().decode("utf-8", errors="replace"), ""
    except OSError as err:
        return None, f"unreadable ({err.strerror or err})"
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def read_lock(run_dir: Path) -> dict | None:
    text, problem = read_regular(Path(run_dir) / LOCK)
    if text is None:
        return {} if problem else None   # not a regular file: a lock of unknown owner
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        return {}   # torn or garbled (or being written): a lock of unknown owner


def lock_held(run_dir: Path) -> bool | None:
    """Whether some process holds train.lock's flock (a live trainer); None when no lock file or no flock."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as err:
        return None if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF) else True
    finally:
        os.close(fd)
    return False


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
