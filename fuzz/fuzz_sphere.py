"""Fuzz target: audio bytes -> samples (``seqvi.data.sphere.read_audio``: NIST SPHERE header parser and RIFF WAV).

Any exception other than ``SeqviError`` is a crash, and so is a result that
breaks the contract: ``(n,)`` int16 samples and a positive integer rate.

    python fuzz/fuzz_sphere.py -max_total_time=60 fuzz/corpus/sphere
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver import main  # noqa: E402

try:
    import atheris

    with atheris.instrument_imports():
        from seqvi.data import sphere
except ImportError:
    from seqvi.data import sphere

from seqvi.errors import SeqviError  # noqa: E402


def test_one_input(data: bytes) -> None:
    try:
        samples, rate = sphere.read_audio(data, "fuzz.wav")
    except SeqviError:
        return
    assert samples.ndim == 1 and samples.dtype == np.int16, (samples.shape, samples.dtype)
    assert isinstance(rate, int) and rate > 0, rate


def sphere_file(samples: np.ndarray, byte_format: str = "01", extra: str = "") -> bytes:
    fields = (f"database_id -s5 TIMIT\nsample_count -i {len(samples)}\nsample_rate -i 16000\n"
              f"channel_count -i 1\nsample_n_bytes -i 2\nsample_byte_format -s2 {byte_format}\n"
              f"sample_min -i {samples.min()}\nsample_max -i {samples.max()}\n{extra}end_head\n")
    header = ("NIST_1A\n   1024\n" + fields).encode().ljust(1024, b" ")
    return header + samples.astype(">i2" if byte_format == "10" else "<i2").tobytes()


def seeds() -> list[bytes]:
    from scipy.io import wavfile

    samples = (np.sin(np.arange(64) / 3) * 3000).astype(np.int16)
    wav = io.BytesIO()
    wavfile.write(wav, 16000, samples)
    return [sphere_file(samples), sphere_file(samples, "10", "sample_coding -s3 pcm\nsample_rate_r -r 1.5\n"),
            sphere_file(samples[:4]), wav.getvalue()]


if __name__ == "__main__":
    main(test_one_input, seeds())
