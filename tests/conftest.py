"""Shared fixtures: one torch thread, and a tiny MIDI corpus made with mido."""

from __future__ import annotations

import os
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

os.environ.setdefault("SEQVI_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def write_midi(path: Path, notes: list[tuple[int, int, int]], tpb: int = 96) -> None:
    """notes: (pitch, start_beat, end_beat) on a quarter-note grid."""
    events = []
    for pitch, start, end in notes:
        events.append((start * tpb, 1, mido.Message("note_on", note=pitch, velocity=70)))
        events.append((end * tpb, 0, mido.Message("note_off", note=pitch)))
    events.sort(key=lambda e: (e[0], e[1]))
    midi = mido.MidiFile(type=1, ticks_per_beat=tpb)
    track = mido.MidiTrack()
    last = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - last))
        last = tick
    midi.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(path)


def random_piece(rng: np.random.Generator, length: int) -> list[tuple[int, int, int]]:
    notes = []
    for voice_low in (48, 60, 67):
        t = 0
        while t < length:
            dur = int(rng.integers(1, 4))
            notes.append((int(voice_low + rng.integers(0, 8)), t, min(length, t + dur)))
            t += dur
    return notes


def make_corpus(folder: Path, counts=(8, 3, 3), seed: int = 0) -> Path:
    """``folder/{train,valid,test}/*.mid`` of random three-voice pieces, 12-40 beats long."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "valid", "test"), counts):
        for i in range(count):
            write_midi(folder / split / f"{split}_{i:02d}.mid", random_piece(rng, int(rng.integers(12, 40))))
    return folder


TINY_MANIFEST = """\
name: tiny
title: tiny generated corpus for tests
adapter: midi
download: http
steps_per_beat: 1
resolution: quarter note
files: []
"""


@pytest.fixture
def manifests(tmp_path, monkeypatch) -> Path:
    """A manifest folder holding the repository's manifests plus ``tiny``."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    for path in (REPO / "seqvi" / "data" / "manifests").glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    (folder / "tiny.yaml").write_text(TINY_MANIFEST)
    monkeypatch.setenv("SEQVI_MANIFESTS", str(folder))
    return folder


@pytest.fixture
def tiny_store(tmp_path, manifests) -> Path:
    """A data root with ``processed/tiny.h5`` built through the real adapter."""
    from seqvi.data.prepare import preprocess

    root = tmp_path / "data"
    make_corpus(root / "raw" / "tiny")
    preprocess("tiny", str(root))
    return root


def tiny_recipe(root: Path, **train) -> dict:
    return {
        "seed": 0,
        "data": {"dataset": "tiny", "root": str(root), "batch_size": 3, "crop_length": 6, "eval_batch_size": 4},
        "model": {"name": "vrnn", "hidden_size": 8, "z_size": 3, "feature_size": 8},
        "inference": {"name": "direct", "hidden_sizes": [8]},
        "train": {"epochs": 2, "lr": 0.01, "log_every": 1, **train},
    }


def one_line_error(result, needle: str) -> None:
    """A CLI result that is a bad-input answer: exit 2, one 'error:' line containing ``needle``, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert needle in lines[0], lines[0]
