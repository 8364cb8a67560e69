"""Nothing lost: SIGKILL a real ``python -m seqvi`` midway, then look at what it left.

* ``preprocess`` writes ``NAME.h5.<random>.tmp`` and renames it when complete: killed
  midway, the previous ``NAME.h5`` is byte for byte what it was and loads,
  and the ``.tmp`` is never taken for the store.
* ``train`` appends ``metrics.jsonl`` one whole line at a time: killed midway
  every line parses, and after resuming every step is logged exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.data.store import Store
from seqvi.experiments.listing import run_status

from conftest import REPO, random_piece, tiny_recipe, write_midi


def seqvi_process(*args) -> subprocess.Popen:
    env = dict(os.environ, SEQVI_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "seqvi", *[str(a) for a in args]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(condition, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL  # it was still running: killed, not finished
    process.stderr.close()


def big_corpus(folder: Path, counts=(800, 100, 100)) -> Path:
    """A thousand MIDI files (six distinct 40-beat pieces, copied): seconds of preprocessing."""
    rng = np.random.default_rng(1)
    pieces = []
    for i in range(6):
        path = folder / f"piece{i}.mid"
        write_midi(path, random_piece(rng, 40))
        pieces.append(path.read_bytes())
        path.unlink()
    for split, count in zip(("train", "valid", "test"), counts):
        (folder / split).mkdir(parents=True)
        for j in range(count):
            (folder / split / f"{split}_{j:04d}.mid").write_bytes(pieces[j % len(pieces)])
    return folder


def test_killed_preprocess_leaves_the_previous_store(tiny_store, tmp_path):
    store = tiny_store / "processed" / "tiny.h5"
    temporaries = lambda: list(store.parent.glob("tiny.h5.*.tmp"))  # noqa: E731
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    with Store(store) as old:
        old_names = old.split("train").names

    process = seqvi_process("preprocess", "tiny", "--source", big_corpus(tmp_path / "big"), "--root", tiny_store)
    wait_for(temporaries, process)
    time.sleep(0.5)  # into the conversion (about 2 s for this corpus)
    kill(process)

    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    with Store(store) as kept:
        assert kept.split("train").names == old_names
        assert len(kept.split("train").read(0)) > 0
    assert temporaries()    # the killed writer's
    # Only NAME.h5 is ever opened as the store; a rerun removes the leftover .tmp and completes.
    result = CliRunner().invoke(app, ["preprocess", "tiny", "--source", str(tmp_path / "big"), "--root", str(tiny_store)])
    assert result.exit_code == 0, result.output
    assert not temporaries()
    with Store(store) as new:
        assert len(new.split("train")) == 800


def read_metrics(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line parses


def test_killed_train_leaves_whole_metrics_lines_and_resumes(tiny_store, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=1000, checkpoint_every=2)))
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"

    process = seqvi_process("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    wait_for(lambda: metrics.exists() and metrics.read_bytes().count(b"\n") >= 12, process)
    kill(process)

    records = read_metrics(metrics)
    assert len(records) >= 12 and (run_dir / "checkpoints" / "last.pt").exists()
    epochs = max(r["epoch"] for r in records) + 2
    result = CliRunner().invoke(app, ["train", str(recipe), f"train.epochs={epochs}", "--run-dir", str(run_dir),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = read_metrics(metrics)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, steps[-1] + 1))  # each step once: lines after the checkpoint were replayed
    assert [r["epoch"] for r in records if "valid_nats_per_step" in r] == list(range(1, epochs + 1))
    # the killed call has a start and no stop: status and training time still read (seqvi runs, sweep, compare)
    status = run_status(run_dir)
    assert status.status == "finished" and status.epoch == epochs
    times = [r["time"] for r in records]
    assert 0 < status.seconds <= max(times) - min(times) + 5      # the two calls' segments, the gap excluded
    assert len(status.curve) == epochs and all(t == t for _, _, t in status.curve)
