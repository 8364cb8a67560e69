"""Run directories: ``runs/<name>/`` is the unit of reproducibility.

    config.yaml              the resolved recipe (written atomically)
    metrics.jsonl            one JSON object per line, each with "step"
    tensorboard/             TensorBoard event files (train.tensorboard: true)
    checkpoints/last.pt      latest state; best.pt: lowest validation free energy
    eval/<split>.json        evaluation results
    samples/                 MIDI/PNG samples
    history.jsonl, train.lock, preempted    the run's starts and stops (seqvi/engine/lifecycle.py)

Re-running ``train`` on a run directory resumes it when the resolved config is
the same (``train.epochs``, ``train.patience``, ``train.max_minutes`` and
``train.tensorboard`` may change: they decide when training stops or what is
recorded, not what a step computes). A
different config is refused unless ``force``, which starts the run afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from seqvi.data.atomic import write_text_atomic  # noqa: F401  (the one safe writer; used here and re-exported)
from seqvi.config import read_config_text
from seqvi.errors import RecipeError, SeqviError

RESUMABLE_KEYS = (("train", "epochs"), ("train", "patience"), ("train", "max_minutes"), ("train", "tensorboard"))


def comparable(config: dict) -> dict:
    out = json.loads(json.dumps(config))
    for section, key in RESUMABLE_KEYS:
        out.get(section, {}).pop(key, None)
    return out


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
            return True, []
        if not force:
            raise SeqviError(
                f"{run_dir}: holds a run with a different config ({'; '.join(diffs[:3])}"
                f"{' ...' if len(diffs) > 3 else ''}); use another --run-dir or --force to replace it"
            )
        replaced = diffs
        for name in ("checkpoints", "metrics.jsonl", "history.jsonl", "eval", "samples", "tensorboard"):
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
            os.write(fd, line)  # one write(2) of a short line: a kill leaves it whole or absent
        finally:
            os.close(fd)
