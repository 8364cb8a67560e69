"""Generated waveforms -> 16 kHz, 16-bit mono RIFF WAV files anyone can play.

A sample ``x`` is ``(N, T, 200)`` in the store's normalized units; each
sequence is flattened to ``T * 200`` samples, de-normalized with the store's
``audio_mean`` and ``audio_std`` (``x * std + mean``), rounded and clipped to
int16, and written as ``sample_NN.wav`` at the store's ``sample_rate``. Each
file is written under a temporary name in the same folder and renamed, so a
listener never opens half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from seqvi.data.atomic import atomic_output
from seqvi.data.store import Store
from seqvi.errors import DataError


def write_wav(x: np.ndarray, out_dir: Path, spec: Any, truth: np.ndarray | None = None,
              before: Callable[[Path], None] | None = None) -> list[Path]:
    """One WAV file per sequence of frames (N, T, F); returns the paths written."""
    with Store(spec.store) as store:
        try:
            mean, std = float(store.attrs["audio_mean"]), float(store.attrs["audio_std"])
            rate = int(store.attrs.get("sample_rate", 16_000))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{spec.store}: no audio_mean/audio_std attributes; "
                            f"re-run `seqvi preprocess {spec.dataset}`") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    waves = to_int16(np.asarray(x).reshape(len(x), -1), mean, std)
    paths = []
    for i, wave in enumerate(waves):
        path = out_dir / f"sample_{i + 1:02d}.wav"
        if before:
            before(path)
        paths.append(_write_atomic(path, rate, wave))
    return paths


def to_int16(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Normalized samples -> int16: ``round(x * std + mean)``, clipped to [-32768, 32767]."""
    return np.clip(np.rint(x.astype(np.float64) * std + mean), -32768, 32767).astype(np.int16)


def _write_atomic(path: Path, rate: int, wave: np.ndarray) -> Path:
    from scipy.io import wavfile

    with atomic_output(path) as out:
        wavfile.write(out, rate, wave)
    return path
