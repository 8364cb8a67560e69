"""Speech waveforms from NIST SPHERE (TIMIT's own format) or RIFF WAV files.

NIST SPHERE, as TIMIT (LDC93S1) ships it: an ASCII header, then raw samples::

    NIST_1A\\n                          magic (bytes 0-7)
       1024\\n                          header size in bytes, whole header included
    sample_count -i 63488\\n            one "name -type value" field per line:
    sample_rate -i 16000\\n             -i integer, -r real, -sN string of N bytes
    channel_count -i 1\\n
    sample_n_bytes -i 2\\n
    sample_byte_format -s2 01\\n        01 = little endian, 10 = big endian
    sample_coding -s3 pcm\\n            optional; pcm when absent
    sample_min -i -2191\\n              optional; checked against the data when given
    sample_max -i 2790\\n
    end_head\\n
    (blank padding up to the header size, then sample_count int16 samples)

Only uncompressed 16-bit mono PCM is read. A ``sample_coding`` naming
``shorten`` (NIST's compressed distributions, e.g. ``pcm,embedded-shorten-v2.00``)
or another coding, or a ``sample_byte_format`` such as ``shortpack-v0``, is
refused with the field named: decompress with NIST's ``w_decode``/``sph2pipe``
first. The header is checked against the file: ``header size + sample_count *
2`` must be exactly the file's size, so a truncated file, or a header that lies
about ``sample_count``, is refused rather than read short or padded.

RIFF WAV (some TIMIT copies ship converted ``*.WAV.wav`` files; any speech
folder a user has) is read with ``scipy.io.wavfile``; it must hold 16-bit
integer PCM, one channel.

``read_audio(data, name)`` dispatches on the first bytes and returns
``(samples: (n,) int16 native byte order, sample_rate: int)``. Every problem is
a one-line ``DataError`` naming the file and the header field or byte offset.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from seqvi.errors import DataError

SPHERE_MAGIC = b"NIST_1A\n"
REQUIRED = ("sample_count", "sample_rate", "channel_count", "sample_n_bytes")
BYTE_FORMATS = {"01": "<i2", "10": ">i2"}
FIX = "re-copy it from the corpus or convert it to 16-bit mono PCM"


def read_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Samples ``(n,)`` int16 and the sample rate of a SPHERE or RIFF WAV file's bytes."""
    if data[:len(SPHERE_MAGIC)] == SPHERE_MAGIC:
        return read_sphere(data, name)
    if data[:4] in (b"RIFF", b"RIFX") and data[8:12] == b"WAVE":
        return read_wav(data, name)
    raise DataError(f"{name}: not a NIST SPHERE (NIST_1A) or RIFF WAV file "
                    f"(starts with {data[:8]!r}); {FIX}")


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return read_audio(data, str(path))


def sphere_header(data: bytes, name: str) -> tuple[dict, int]:
    """The header fields (ints, floats or strings) and the header size in bytes."""
    if data[:len(SPHERE_MAGIC)] != SPHERE_MAGIC:
        raise DataError(f"{name}: not a NIST SPHERE file (no NIST_1A magic at byte 0)")
    end_of_size = data.find(b"\n", 8, 32)
    try:
        header_size = int(data[8:end_of_size].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        header_size = 0
    if end_of_size < 0 or header_size < 16:
        raise DataError(f"{name}: SPHERE header size at byte 8 is not a number of bytes; {FIX}")
    if header_size > len(data):
        raise DataError(f"{name}: SPHERE header size {header_size} exceeds the file's "
                        f"{len(data)} bytes (truncated file); {FIX}")
    fields: dict = {}
    offset = end_of_size + 1
    for raw in data[offset:header_size].split(b"\n"):
        line = raw.decode("ascii", errors="replace").rstrip("\r")
        if line.strip() == "end_head":
            break
        if line.strip() and not line.startswith(";"):
            fields.update([_field(line, name, offset)])
        offset += len(raw) + 1
    else:
        raise DataError(f"{name}: SPHERE header has no end_head within its {header_size} bytes; {FIX}")
    return fields, header_size


def read_sphere(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Samples and rate of a 16-bit mono PCM SPHERE file; the header is checked against the data."""
    fields, header_size = sphere_header(data, name)
    for key in REQUIRED:
        if not isinstance(fields.get(key), int):
            raise DataError(f"{name}: SPHERE header field {key} is missing or not an integer (-i)")
    coding = str(fields.get("sample_coding", "pcm")).lower()
    if "shorten" in coding:
        raise DataError(f"{name}: SPHERE header field sample_coding = {coding!r} is shorten-compressed; "
                        f"decompress it first (NIST sph2pipe or w_decode -o pcm)")
    if coding.split(",")[0] != "pcm":
        raise DataError(f"{name}: SPHERE header field sample_coding = {coding!r} is unsupported "
                        f"(only 16-bit pcm); convert the file to 16-bit PCM")
    if fields["channel_count"] != 1:
        raise DataError(f"{name}: SPHERE header field channel_count = {fields['channel_count']}; "
                        f"only mono (1) is supported")
    if fields["sample_n_bytes"] != 2:
        raise DataError(f"{name}: SPHERE header field sample_n_bytes = {fields['sample_n_bytes']}; "
                        f"only 16-bit samples (2) are supported")
    byte_format = str(fields.get("sample_byte_format", ""))
    if byte_format not in BYTE_FORMATS:
        raise DataError(f"{name}: SPHERE header field sample_byte_format = {byte_format!r} is unsupported "
                        f"(01 little endian or 10 big endian; shortpack needs decompressing)")
    count = fields["sample_count"]
    if fields["sample_rate"] <= 0 or count < 0:
        raise DataError(f"{name}: SPHERE header fields sample_rate/sample_count must be positive")
    need, have = count * 2, len(data) - header_size
    if have != need:
        what = "truncated file or" if have < need else "trailing bytes or"
        raise DataError(f"{name}: SPHERE header field sample_count = {count} needs {need} bytes after the "
                        f"{header_size}-byte header, the file has {have} ({what} a wrong header); {FIX}")
    samples = np.frombuffer(data, dtype=BYTE_FORMATS[byte_format], count=count,
                            offset=header_size).astype(np.int16)
    for key, reduce in (("sample_min", np.min), ("sample_max", np.max)):
        if count and isinstance(fields.get(key), int) and fields[key] != int(value := reduce(samples)):
            raise DataError(f"{name}: SPHERE header field {key} = {fields[key]} but the samples give "
                            f"{int(value)} (wrong sample_byte_format or corrupt data); {FIX}")
    return samples, int(fields["sample_rate"])


def read_wav(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Samples and rate of a RIFF WAV file holding 16-bit integer PCM, one channel."""
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)  # unknown chunks are fine, a short body is not
            rate, samples = wavfile.read(io.BytesIO(data))
    except Exception as err:  # scipy raises ValueError, EOFError, struct.error, ... for a garbled header
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{name}: unreadable RIFF WAV ({first}); {FIX}") from None
    for warning in caught:
        if "EOF" in str(warning.message):  # "Reached EOF prematurely; finished at N bytes, expected M ..."
            raise DataError(f"{name}: truncated RIFF WAV ({warning.message}); {FIX}")
    if rate <= 0:
        raise DataError(f"{name}: RIFF WAV fmt field sample rate = {rate}; {FIX}")
    if samples.ndim != 1:
        raise DataError(f"{name}: RIFF WAV fmt field channels = {samples.shape[1]}; only mono is supported")
    if samples.dtype != np.int16:
        raise DataError(f"{name}: RIFF WAV fmt field bits per sample gives {samples.dtype}; "
                        f"only 16-bit integer PCM is supported")
    return samples.astype(np.int16, copy=False), int(rate)


def _field(line: str, name: str, offset: int) -> tuple[str, object]:
    parts = line.split(" ", 2)
    if len(parts) < 3 or not parts[1].startswith("-"):
        raise DataError(f"{name}: SPHERE header line at byte {offset} is not 'name -type value': {line[:40]!r}")
    key, kind, value = parts
    try:
        if kind == "-i":
            return key, int(value)
        if kind == "-r":
            return key, float(value)
        if kind.startswith("-s"):
            return key, value[:int(kind[2:])]
    except ValueError:
        pass
    raise DataError(f"{name}: SPHERE header field {key} at byte {offset} has a bad {kind} value {value[:20]!r}")
