"""Write generated sequences in the format people open for each kind of data.

``SAMPLE_WRITERS`` maps a store's adapter to a writer taking
``(x: (N, T, *X) array, out_dir, spec, truth=None, before=None) -> list of paths``
(``before(path)`` is called before each file is written: ``seqvi sample`` stops there on a signal);
``truth`` (the real sequences, when sampling was primed) lets a writer show
samples beside the data (video does; audio and MIDI ignore it).
``SAMPLE_MEAN`` says which kinds are shown as the emission's mean by default
(pixel noise drawn from a Gaussian hides the video).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from seqvi.data.audio_samples import write_wav
from seqvi.data.midi import roll_to_midi
from seqvi.data.synthetic import write_npz
from seqvi.data.video_samples import write_video

Before = Callable[[Path], None]


def write_midi(x: np.ndarray, out_dir: Path, spec: Any, truth: np.ndarray | None = None,
               before: Before | None = None) -> list[Path]:
    """One standard MIDI file per piano roll (N, T, 88), on the data set's beat grid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, roll in enumerate(x):
        path = out_dir / f"sample_{i + 1:02d}.mid"
        if before:
            before(path)
        roll_to_midi((roll > 0.5).astype(np.uint8), path, spec.steps_per_beat)
        paths.append(path)
    return paths


def write_observations(x: np.ndarray, out_dir: Path, spec: Any, truth: np.ndarray | None = None,
                       before: Before | None = None) -> list[Path]:
    """Interaction data: frames (N, T, C, 64, 64) as videos, state vectors (N, T, D) as ``samples.npz``."""
    return (write_video if np.ndim(x) == 5 else write_npz)(x, out_dir, spec, truth=truth, before=before)


# control: the mean, as for video (a unit-variance pixel Gaussian's draws are noise)
SAMPLE_MEAN = {"kth": True, "control": True}
SAMPLE_WRITERS = {"midi": write_midi, "timit": write_wav, "kth": write_video, "synthetic": write_npz,
                  "control": write_observations}
