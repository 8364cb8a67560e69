"""A run's status read back from what ``train`` left (``seqvi runs``, ``seqvi sweep``, ``seqvi compare``).

What train writes is described in ``seqvi/engine/lifecycle.py``.

The status rule, first match wins:

1. **running** — some process holds ``train.lock``'s flock (probed with a non-blocking
   shared flock), or the lock names a live process on this host that holds none (an older
   seqvi), or any process on another host whose flock this host cannot see (a lock left
   by a lost node reads as running until it is deleted);
2. **submitted** — ``submitted`` exists and no training started since (queued in SLURM);
3. **failed** — ``train.lock`` is held by nobody and names a dead process on this host
   (killed: SIGKILL, OOM), or the last stop is ``error``, or ``config.yaml`` is not a
   readable file (a directory: the run is listed with that reason, not dropped);
4. **preempted** — the ``preempted`` marker exists, or the last stop is ``signal``;
5. **finished** — the last stop is ``finished`` or ``patience`` (why: "early stop");
6. **stopped** — the last stop is ``interrupt``, ``budget`` or ``abort``: resumable, rerun train;
7. **empty** — no checkpoint (a run directory that never reached its first checkpoint);
8. runs from before ``history.jsonl``: **finished** when metrics.jsonl reached
   ``train.epochs``, else **failed** ("ended without a stop record").

Files that are not regular (a FIFO named ``metrics.jsonl`` would block a reader forever)
are not read: they are skipped and named in the run's ``why`` (``RunStatus.skipped``). A
torn last line of ``metrics.jsonl`` (a kill in mid-write) is read for its whole fields, and
the epoch reached is at least the last stop record's.

Nothing here imports torch: listing a thousand runs reads small text files only.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from seqvi.engine.lifecycle import (HISTORY, LOCK, PREEMPTED, RESUMABLE_STOPS, STOP_WHY, SUBMITTED, lock_held,
                                    owner_alive, read_lock, read_regular)
from seqvi.errors import SeqviError


_FIELD = re.compile(r'"(\w+)": (-?[0-9][0-9.eE+-]*|true|false|null)(?=[,}])')


def read_jsonl(path: Path, skipped: list | None = None) -> list[dict]:
    """The lines of a JSON-lines file that parse to objects; a garbled line is skipped. A torn last line
    (no newline: a kill in mid-write) keeps its whole ``"key": number`` fields. A file that is not regular
    is not read; it and a torn line are named in ``skipped``."""
    skipped = [] if skipped is None else skipped
    text, problem = read_regular(Path(path))
    if problem:
        skipped.append(f"{Path(path).name} ({problem})")
    if not text:
        return []
    records = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) - 1 and not text.endswith("\n"):
                record = {key: json.loads(value) for key, value in _FIELD.findall(line)}
                skipped.append(f"{Path(path).name}: last line torn ({len(line)} bytes; its whole fields read)")
            else:
                continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_config(run_dir: Path, skipped: list | None = None) -> dict:
    text, problem = read_regular(Path(run_dir) / "config.yaml")
    if problem and skipped is not None:
        skipped.append(f"config.yaml ({problem})")
    try:
        config = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        if skipped is not None:
            skipped.append("config.yaml (invalid YAML)")
        return {}
    return config if isinstance(config, dict) else {}


def is_run(path: Path) -> bool:
    """A folder with a ``config.yaml`` (of any kind: one that is not a file is reported, not hidden)."""
    return os.path.lexists(path / "config.yaml")


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
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name != "config.yaml")
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
    skipped: list = field(default_factory=list)   # files not read (not regular) or read in part (torn)


def run_status(run_dir: Path) -> RunStatus:
    run_dir = Path(run_dir)
    skipped: list[str] = []
    config = read_config(run_dir, skipped)
    epochs = (config.get("train") or {}).get("epochs") if isinstance(config.get("train"), dict) else None
    metrics = read_jsonl(run_dir / "metrics.jsonl", skipped)
    history = [r for r in read_jsonl(run_dir / HISTORY, skipped) if r.get("event") in ("start", "stop")]
    valid = [r for r in metrics if isinstance(r.get("valid_nats_per_step"), (int, float))
             and isinstance(r.get("epoch"), int)]
    out = RunStatus(run_dir, "empty", epochs=epochs if isinstance(epochs, int) else None, config=config,
                    skipped=skipped)
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
    stops = [r for r in history if r["event"] == "stop" and isinstance(r.get("epoch"), int)]
    if stops and stops[-1]["epoch"] > out.epoch:   # the epoch's metrics line was lost (torn, deleted)
        out.epoch = stops[-1]["epoch"]
    out.seconds, out.curve = _timeline(history, metrics, valid)
    unreadable = any(s.startswith("config.yaml") for s in skipped)
    out.status, out.why = ("failed", "") if unreadable else _classify(run_dir, out, history)
    if skipped:
        out.why = "; ".join(([out.why] if out.why else []) + [f"skipped {s}" for s in skipped])
    return out


def _classify(run_dir: Path, out: RunStatus, history: list[dict]) -> tuple[str, str]:
    owner = read_lock(run_dir)
    if owner is not None:
        if lock_held(run_dir) or owner_alive(owner):   # the flock, or a pid that holds none (older seqvi)
            host = owner.get("host")
            where = f" on {host}" if host and host != socket.gethostname() else ""
            return "running", f"pid {owner.get('pid', '?')}{where}"
        return "failed", f"killed (process {owner.get('pid', '?')} is gone; no stop was recorded)"
    submitted = run_dir / SUBMITTED
    last_start = max((r.get("time", 0) for r in history if r["event"] == "start"), default=0)
    if submitted.exists() and submitted.stat().st_mtime >= last_start:
        try:
            job = json.loads(read_regular(submitted)[0] or "").get("job", "?")
        except (ValueError, AttributeError):
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
