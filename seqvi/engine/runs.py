"""Run directories: ``runs/<name>/`` is the unit of reproducibility.

    config.yaml              the resolved recipe (written atomically)
    metrics.jsonl            one JSON object per line, each with "step"
    tensorboard/             TensorBoard event files (train.tensorboard: true)
    checkpoints/last.pt      latest state; best.pt: lowest validation free energy
    eval/<split>.json        evaluation results
    samples/                 MIDI/PNG samples
    history.jsonl, train.lock, preempted    the run's starts and stops (seqvi/engine/lifecycle.py)
    run.json                 the run's identity {"run_id", "created"}, written when the run starts afresh

Every checkpoint carries the run's ``run_id`` and ``config_hash`` (sha256 of the
config without the keys that may change on resume). Resuming checks both
(``check_checkpoint``): a ``last.pt`` copied from another run, or trained with
another config, is refused in one line naming the run ids or the keys that
differ. A checkpoint written before these fields existed is checked by the
config it holds.

Re-running ``train`` on a run directory resumes it when the resolved config is
the same (``train.epochs``, ``train.patience``, ``train.max_minutes`` and
``train.tensorboard`` may change: they decide when training stops or what is
recorded, not what a step computes). A
different config is refused unless ``force``, which starts the run afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import yaml

from seqvi.data.atomic import NO_SPACE, disk_full, write_text_atomic  # noqa: F401  (write_text_atomic re-exported)
from seqvi.config import read_config_text
from seqvi.errors import CheckpointError, RecipeError, SeqviError

RUN_FILE = "run.json"
RESUMABLE_KEYS = (("train", "epochs"), ("train", "patience"), ("train", "max_minutes"), ("train", "tensorboard"))


def comparable(config: dict) -> dict:
    out = json.loads(json.dumps(config))
    for section, key in RESUMABLE_KEYS:
        out.get(section, {}).pop(key, None)
    return out


def config_hash(config: dict) -> str:
    """sha256 of the config's comparable part (what a resumed step computes from)."""
    return hashlib.sha256(json.dumps(comparable(config), sort_keys=True).encode("utf-8")).hexdigest()


def new_identity(run_dir: Path) -> str:
    """Give a run starting afresh a new ``run.json``; returns its run id."""
    run_id = uuid.uuid4().hex
    write_text_atomic(run_dir / RUN_FILE, json.dumps({"run_id": run_id, "created": time.time()}) + "\n")
    return run_id


def run_identity(run_dir: Path) -> str | None:
    """The run id in ``run.json``; None for a run made before run ids (or without the file)."""
    try:
        record = json.loads(read_config_text(Path(run_dir) / RUN_FILE, what="a run's run.json"))
    except FileNotFoundError:
        return None
    except (RecipeError, ValueError) as err:
        raise CheckpointError(f"{Path(run_dir) / RUN_FILE}: unreadable run identity "
                              f"({str(err).removeprefix(str(Path(run_dir) / RUN_FILE) + ': ')}); "
                              f"restore it, or use --force to start the run afresh") from None
    run_id = record.get("run_id") if isinstance(record, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise CheckpointError(f"{Path(run_dir) / RUN_FILE}: no run_id in it; restore it, or use --force "
                              f"to start the run afresh")
    return run_id


def check_checkpoint(state: dict, path: Path, run_dir: Path, config: dict) -> None:
    """Refuse to resume from a checkpoint that is not this run's (CheckpointError, one line).

    New checkpoints name their run (``run_id``) and config (``config_hash``); an old one (neither
    field) is checked by its ``config`` alone, keys it does not have being skipped.
    """
    fix = "put this run's own checkpoint back, or use another --run-dir or --force to start afresh"
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: holds no config to check against {run_dir / 'config.yaml'}; {fix}")
    legacy = "config_hash" not in state
    diffs = config_diff(comparable(saved), comparable(config))
    if legacy:   # keys added to the recipe since that checkpoint was written are not differences
        diffs = [d for d in diffs if not d.split(": ", 1)[1].startswith(repr("<unset>"))]
    if diffs or (not legacy and state.get("config_hash") != config_hash(config)):
        shown = "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "") if diffs else "its config hash differs"
        raise CheckpointError(f"{path}: trained with another config than {run_dir / 'config.yaml'} "
                              f"(checkpoint -> run: {shown}); {fix}")
    mine, theirs = run_identity(run_dir), state.get("run_id")
    if theirs is not None and theirs != mine:
        owner = f"run {theirs}" if isinstance(theirs, str) else repr(theirs)
        here = f"this run is {mine}" if mine else f"this run has no {RUN_FILE}"
        raise CheckpointError(f"{path}: belongs to another run ({owner}; {here}); {fix}")


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def prepare(run_dir: Path, config: dict, force: bool = False) -> tuple[bool, list[str]]:
    """Make the run directory ready; returns (resume, replaced-differences)."""
    config_path = run_dir / "config.yaml"
    last = run_dir / "checkpoints" / "last.pt"
    replaced: list[str] = []
    if config_path.exists() and last.exists():
        try:
            old = yaml.safe_load(read_config_text(config_path, what="a run's config.yaml")) or {}
            problem = None if isinstance(old, dict) else f"a {type(old).__name__}, not a mapping"
        except yaml.YAMLError as err:
            old, problem = {}, " ".join(str(err).split())[:160]
        except RecipeError as err:
            old, problem = {}, str(err).removeprefix(f"{config_path}: ")
        if problem:
            if not force:
                raise SeqviError(f"{config_path}: corrupt run config ({problem}); "
                                 f"use another --run-dir or --force to replace the run")
            old = {}
        diffs = config_diff(comparable(old), comparable(config))
        if not diffs:
            write_config(run_dir, config)
            if run_identity(run_dir) is None:   # a run made before run ids: it gets one now
                new_identity(run_dir)
            return True, []
        if not force:
            raise SeqviError(
                f"{run_dir}: holds a run with a different config ({'; '.join(diffs[:3])}"
                f"{' ...' if len(diffs) > 3 else ''}); use another --run-dir or --force to replace it"
            )
        replaced = diffs
        for name in (RUN_FILE, "checkpoints", "metrics.jsonl", "history.jsonl", "eval", "samples", "tensorboard"):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    else:  # no checkpoint to resume: start clean
        for name in ("metrics.jsonl", "history.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
        if (run_dir / "tensorboard").is_dir():
            shutil.rmtree(run_dir / "tensorboard")
    write_config(run_dir, config)
    new_identity(run_dir)
    return False, replaced


def write_config(run_dir: Path, config: dict) -> None:
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


class Metrics:
    """Append-only ``metrics.jsonl``; each line is written whole and flushed."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (work lost since the last checkpoint) and torn lines."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
                keep.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def log(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)  # one write(2) of a short line: a kill leaves it whole or absent
            except OSError as err:
                if err.errno not in NO_SPACE:
                    raise
                written = -1
            if written != len(line):   # a full disk: no torn line left behind
                os.ftruncate(fd, size)
                raise disk_full(self.path, needed=len(line), what="a metrics line")
        finally:
            os.close(fd)
