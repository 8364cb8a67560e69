"""Adapter for TIMIT speech waveforms (LDC93S1) -> store of 200-sample frames.

Sources (``--source``), case-insensitive throughout:

* the corpus folder ``.../TIMIT/{TRAIN,TEST}/DR1..DR8/<speaker>/*.WAV`` (NIST
  SPHERE, read by ``seqvi.data.sphere``; RIFF WAV copies are read as well),
* a zip of that folder (members read one at a time in memory, never extracted;
  members with absolute or ``..`` paths are refused and counted as skipped),
* any other folder or zip of 16 kHz 16-bit mono ``.wav`` files with no
  ``TRAIN``/``TEST`` folders: **not TIMIT**, for trying the pipeline. Splits
  then come from a stable hash of each file's relative path (sha256: 80%
  train, 10% valid, 10% test) and the report's title says "not TIMIT".

Splits, as FIVO's ``create_timit_dataset.py`` makes them (Maddison et al.
2017; the AVF code does the same): ``TEST`` -> test (1,680); of ``TRAIN``'s
4,620 utterances, 5% -> valid (``int(0.05 * 4620)`` = 231) and the rest ->
train (4,389). Valid is a set of *utterances*, not of held-out speakers: FIVO
sorts the TRAIN paths, shuffles them with ``random.seed(1234);
random.shuffle(...)`` and takes the first 231. This module reproduces that
with the shuffle written out (``j = int(random() * (i + 1))`` from the last
index down, Python 2's ``random.shuffle``, which FIVO's and AVF's Python 2
scripts ran) on ``random.Random(1234).random()``, the one part of ``random``
that Python guarantees across versions. The sort key is the path below
``TRAIN/``, upper-cased, so a lower-case copy or a zip gives the same split;
files that later prove unreadable do not shift it. Below 20 TRAIN files valid
gets one utterance (so small trees still have three splits).

Preprocessing streams file by file (memory does not grow with the corpus):

1. pass 1 reads the train split's files and sums the int16 samples and their
   squares exactly (Python ints): ``audio_mean`` and ``audio_std`` are the
   scalar mean and standard deviation over every training sample (FIVO:
   0.006 and 548.1 on the real corpus);
2. pass 2 reads every file, normalizes ``(x - audio_mean) / audio_std``,
   zero-pads the end to a multiple of 200 samples (after normalizing, as FIVO
   does) and writes float32 frames ``(ceil(n / 200), 200)``.

Store attributes added to the usual ones (``seqvi.data.store``): adapter
"timit", likelihood "gaussian", sample_rate 16000, frame_size 200,
audio_mean, audio_std (int16 units), bin_width = 1 / audio_std (one 16-bit
quantization step in normalized units: the bin of the discretized likelihood
in the AVF paper's TIMIT table), layout ("timit" or "plain"), duplicates
(files ignored because another file holds the same utterance, e.g. the
``SA1.WAV.wav`` RIFF copy next to ``SA1.WAV``). Each split also holds
``/<split>/num_samples`` (N_seq,) int64: true lengths before padding.

Files that are unreadable, shorten-compressed, not 16 kHz (no resampling:
the rate is named in the message), empty or longer than ``max_steps`` frames
are skipped with their reason and counted; with ``strict`` the first is fatal.
"""

from __future__ import annotations

import hashlib
import random
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from seqvi.data.download import sha256_of
from seqvi.data.manifest import Manifest
from seqvi.data.sources import PreprocessReport, member_reader, open_zip, plain_split, skip, unsafe_member
from seqvi.data.sphere import read_audio
from seqvi.data.store import SPLITS, StoreWriter
from seqvi.errors import DataError

ADAPTER_VERSION = "1"
SAMPLE_RATE = 16_000
FRAME_SIZE = 200          # samples per time step (12.5 ms)
VALID_FRACTION = 0.05     # FIVO's valid_frac
VALID_SEED = 1234         # FIVO's random.seed
Progress = Callable[[str, int, int | None], None]


@dataclass
class Utterance:
    split: str
    name: str                       # path in the source, as stored in /<split>/names
    read: Callable[[], bytes]


def preprocess_timit(manifest: Manifest, source: Path, out_path: Path, *, strict: bool = False,
                     max_steps: int = 100_000, progress: Progress | None = None) -> PreprocessReport:
    """Convert ``source`` (TIMIT folder or zip, or a plain WAV tree) into the store at ``out_path``."""
    started = time.perf_counter()
    report = PreprocessReport(manifest.name)
    # No 16-bit mono file of at most max_steps frames is bigger (header included): refuse before reading.
    max_bytes = max_steps * FRAME_SIZE * 2 + (1 << 20)
    utterances, layout, duplicates = _find_utterances(source, report, strict, max_bytes)
    if layout == "plain":
        report.dataset = f"{manifest.name} (not TIMIT: plain WAV tree, splits by path hash)"

    mean, std, bad = _train_statistics(source, utterances, report, strict, max_steps, progress)
    writer = StoreWriter(out_path, (FRAME_SIZE,), "float32")
    num_samples: dict[str, list[int]] = {split: [] for split in SPLITS}
    folder_digest = hashlib.sha256()
    try:
        for done, utt in enumerate(utterances):
            if progress:
                progress(f"{source.name}: frames", done, len(utterances))
            try:
                data = utt.read()
                folder_digest.update(utt.name.encode() + b"\0" + hashlib.sha256(data).digest())
                if utt.name in bad:
                    continue  # skipped and counted in pass 1
                samples = _load(utt.name, data, max_steps)
            except DataError as err:
                if utt.name not in bad:
                    skip(report, utt.name, err, strict)
                continue
            frames = frame(samples, mean, std)
            writer.add(utt.split, utt.name, frames)
            num_samples[utt.split].append(len(samples))
            report.sequences[utt.split] = report.sequences.get(utt.split, 0) + 1
            report.steps[utt.split] = report.steps.get(utt.split, 0) + len(frames)
        if progress:
            progress(f"{source.name}: frames", len(utterances), len(utterances))
        if source.is_dir():
            report.sources[source.name + "/"] = folder_digest.hexdigest()
        for split, lengths in num_samples.items():
            if not lengths:
                raise DataError(f"{source}: no readable {split} utterances "
                                f"({len(report.skipped)} files skipped{_first_reason(report)})")
            writer.file[split].create_dataset("num_samples", data=np.asarray(lengths, dtype=np.int64))
        report.path = writer.close({
            "dataset": manifest.name,
            "adapter": "timit",
            "adapter_version": ADAPTER_VERSION,
            "likelihood": "gaussian",
            "resolution": f"{FRAME_SIZE} samples at {SAMPLE_RATE} Hz",
            "sample_rate": SAMPLE_RATE,
            "frame_size": FRAME_SIZE,
            "audio_mean": mean,
            "audio_std": std,
            "bin_width": 1.0 / std,
            "layout": layout,
            "duplicates": duplicates,
            "sources": report.sources,
            "skipped": [list(s) for s in report.skipped],
        })
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    return report


def _train_statistics(source: Path, utterances: list[Utterance], report: PreprocessReport, strict: bool,
                      max_steps: int, progress: Progress | None) -> tuple[float, float, set[str]]:
    """Pass 1: exact mean and std of every int16 sample of the train split; the unreadable names."""
    bad: set[str] = set()
    total, sq_total, count = 0, 0, 0
    train = [u for u in utterances if u.split == "train"]
    for done, utt in enumerate(train, 1):
        try:
            samples = _load(utt.name, utt.read(), max_steps)
            total += int(samples.sum(dtype=np.int64))
            sq_total += int(np.square(samples, dtype=np.int64).sum())
            count += len(samples)
        except DataError as err:
            bad.add(utt.name)
            skip(report, utt.name, err, strict)
        if progress:
            progress(f"{source.name}: train statistics", done, len(train))
    if count == 0:
        raise DataError(f"{source}: no readable training utterances ({len(report.skipped)} files skipped"
                        f"{_first_reason(report)})")
    std = float(np.sqrt(max(count * sq_total - total * total, 0) / count ** 2))
    if std == 0.0:
        raise DataError(f"{source}: the training audio is constant (std 0); nothing to normalize")
    return total / count, std, bad


def _first_reason(report: PreprocessReport) -> str:
    """``"; first: <file>: <why>"`` for the first skipped file, else ``""``."""
    if not report.skipped:
        return ""
    name, why = report.skipped[0]
    return f"; first: {why if why.startswith(name) else f'{name}: {why}'}"


def frame(samples: np.ndarray, mean: float, std: float) -> np.ndarray:
    """int16 samples (n,) -> normalized float32 frames (ceil(n / 200), 200), zero-padded at the end."""
    steps = -(-len(samples) // FRAME_SIZE)
    out = np.zeros(steps * FRAME_SIZE, dtype=np.float32)
    out[:len(samples)] = (samples.astype(np.float64) - mean) / std
    return out.reshape(steps, FRAME_SIZE)


def valid_choice(keys: list[str], fraction: float = VALID_FRACTION, seed: int = VALID_SEED) -> set[str]:
    """The keys FIVO's rule puts in valid: sort, shuffle (Python 2 algorithm, seed 1234), take the first 5%."""
    order = sorted(keys)
    rng = random.Random(seed)
    for i in reversed(range(1, len(order))):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    size = int(len(order) * fraction)
    if size == 0 and len(order) >= 2:
        size = 1
    return set(order[:size])


# --------------------------------------------------------------------------- sources


def _find_utterances(source: Path, report: PreprocessReport, strict: bool,
                     max_bytes: int | None = None) -> tuple[list[Utterance], str, int]:
    """Every audio file of the source with its split, in a fixed order; the layout; duplicates ignored."""
    members = _members(source, report, strict, max_bytes)   # sorted (name, read)
    timit = any(_timit_split(name) for name, _ in members)
    chosen: dict[str, tuple[str, str, Callable]] = {}   # utterance key -> (split, name, read)
    duplicates = 0
    for name, read in members:
        split = _timit_split(name) if timit else "plain"
        if split is None:
            skip(report, name, "not under a TRAIN/ or TEST/ folder", strict)
            continue
        key = f"{split}:{_utterance_key(name, split)}"
        if key in chosen:
            duplicates += 1
            continue
        chosen[key] = (split, name, read)
    if not chosen:
        raise DataError(f"{source}: no .wav files found (expected TIMIT/{{TRAIN,TEST}}/DR*/<speaker>/*.WAV "
                        f"or a folder of 16 kHz .wav files)")
    if timit:
        train_keys = [k.split(":", 1)[1] + ".WAV" for k, v in chosen.items() if v[0] == "train"]
        held_out = valid_choice(train_keys)
        utterances = [Utterance("valid" if s == "train" and k.split(":", 1)[1] + ".WAV" in held_out else s, n, r)
                      for k, (s, n, r) in chosen.items()]
        return utterances, "timit", duplicates
    utterances = [Utterance(plain_split(n), n, r) for s, n, r in chosen.values()]
    missing = [s for s in SPLITS if not any(u.split == s for u in utterances)]
    if missing:
        raise DataError(f"{source}: not TIMIT, so files are split 80/10/10 by a hash of their path; "
                        f"{len(utterances)} files left split '{missing[0]}' empty (use more files)")
    return utterances, "plain", duplicates


def _members(source: Path, report: PreprocessReport, strict: bool,
             max_bytes: int | None = None) -> list[tuple[str, Callable[[], bytes]]]:
    if source.is_file() and (source.suffix.lower() == ".zip" or zipfile.is_zipfile(source)):
        archive, infos = open_zip(source)
        report.sources[source.name] = sha256_of(source)
        found = []
        for info in infos:
            path = PurePosixPath(info.filename)
            if info.is_dir() or path.suffix.lower() != ".wav":
                continue
            if unsafe_member(info):
                skip(report, info.filename, "unsafe path in zip (absolute or '..')", strict)
                continue
            found.append((info.filename, _zip_reader(archive, info, source, max_bytes)))
        return sorted(found, key=lambda m: m[0])
    if source.is_dir():
        return [(p.relative_to(source).as_posix(), _file_reader(p, max_bytes))
                for p in sorted(source.rglob("*")) if p.suffix.lower() == ".wav" and p.is_file()]
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    raise DataError(f"{source}: not a zip or a folder of TIMIT .WAV files")


def _timit_split(name: str) -> str | None:
    """'train' or 'test' from the last TRAIN/TEST folder in the path, else None."""
    for part in reversed(PurePosixPath(name).parts[:-1]):
        if part.lower() in ("train", "test"):
            return part.lower()
    return None


def _utterance_key(name: str, split: str) -> str:
    """The path below TRAIN/ or TEST/ (or the whole path), upper-cased, without .wav suffixes."""
    parts = PurePosixPath(name).parts
    if split in ("train", "test"):
        below = max(i for i, p in enumerate(parts[:-1]) if p.lower() == split)
        parts = parts[below + 1:]
    key = "/".join(parts).upper()
    while key.endswith(".WAV"):
        key = key[:-4]
    return key


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: Path,
                max_bytes: int | None = None) -> Callable[[], bytes]:
    read_member = member_reader(archive, info, source)

    def read() -> bytes:
        if max_bytes is not None and info.file_size > max_bytes:  # zipfile never inflates past file_size
            raise DataError(f"{info.filename}: {info.file_size} bytes uncompressed, more than max_steps allows "
                            f"({max_bytes}); raise --max-steps to keep it")
        return read_member()
    return read


def _file_reader(path: Path, max_bytes: int | None = None) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise DataError(f"{path}: {path.stat().st_size} bytes, more than max_steps allows "
                                f"({max_bytes}); raise --max-steps to keep it")
            return path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return read


def _load(name: str, data: bytes, max_steps: int) -> np.ndarray:
    samples, rate = read_audio(data, name)
    if rate != SAMPLE_RATE:
        raise DataError(f"{name}: sample rate {rate} Hz, expected {SAMPLE_RATE}; "
                        f"resample to 16 kHz first (e.g. sox IN -r 16000 OUT)")
    if len(samples) == 0:
        raise DataError(f"{name}: no samples")
    steps = -(-len(samples) // FRAME_SIZE)
    if steps > max_steps:
        raise DataError(f"{name}: {steps} steps of {FRAME_SIZE} samples exceed max_steps {max_steps} "
                        f"(raise --max-steps)")
    return samples
