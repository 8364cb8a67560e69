"""Adapter for the polyphonic music corpora: MIDI zips/folders or note pickles -> store.

Sources, in the published layouts (Boulanger-Lewandowski et al. 2012):

* a zip ``<Name>/{train,valid,test}/*.mid`` (members read in memory, never
  extracted; members with absolute or ``..`` paths are refused and counted),
* a folder holding ``.../{train,valid,test}/*.mid`` (the split is the parent
  folder's name, case-insensitive),
* a pickle ``{'train': [...], 'valid': [...], 'test': [...]}`` of sequences of
  note-number lists, loaded through the restricted unpickler.

Every sequence becomes a binary piano roll ``(T, 88)`` (uint8) on the
manifest's beat grid (``seqvi.data.midi``). A file that cannot be read is
skipped, listed with its reason and counted; with ``strict`` the first one
is fatal. The store records the sources' sha256 and the adapter version.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from seqvi.data.manifest import Manifest
from seqvi.data.midi import NUM_KEYS, midi_to_roll, notes_to_roll
from seqvi.data.download import sha256_of
from seqvi.data.safe_pickle import load_note_pickle
from seqvi.data.sources import PreprocessReport, member_reader, open_zip, skip, unsafe_member
from seqvi.data.store import SPLITS, StoreWriter
from seqvi.errors import DataError

ADAPTER_VERSION = "1"
MIDI_SUFFIXES = (".mid", ".midi")
MAX_MIDI_BYTES = 16 << 20  # bounds memory per file (a zip member may inflate a thousandfold); real MIDI is < 1 MiB
Progress = Callable[[str, int, int | None], None]


def preprocess_midi(manifest: Manifest, source: Path, out_path: Path, *, strict: bool = False,
                    max_steps: int = 100_000, progress: Progress | None = None) -> PreprocessReport:
    """Convert ``source`` (zip, folder or pickle) into the store at ``out_path``."""
    started = time.perf_counter()
    report = PreprocessReport(manifest.name)
    writer = StoreWriter(out_path, (NUM_KEYS,), "uint8")
    try:
        for split, name, roll in _rolls(source, manifest.steps_per_beat, max_steps, report, strict, progress):
            writer.add(split, name, roll)
            report.sequences[split] = report.sequences.get(split, 0) + 1
            report.steps[split] = report.steps.get(split, 0) + len(roll)
        report.path = writer.close({
            "dataset": manifest.name,
            "adapter": "midi",
            "adapter_version": ADAPTER_VERSION,
            "likelihood": "bernoulli",
            "steps_per_beat": manifest.steps_per_beat,
            "resolution": manifest.resolution,
            "sources": report.sources,
            "skipped": [list(s) for s in report.skipped],
        })
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    return report


def _rolls(source: Path, steps_per_beat: int, max_steps: int, report: PreprocessReport,
           strict: bool, progress: Progress | None) -> Iterator[tuple[str, str, object]]:
    if source.is_file() and source.suffix.lower() in (".pickle", ".pkl"):
        report.sources[source.name] = sha256_of(source)
        corpus = load_note_pickle(source)
        for split in SPLITS:
            for i, seq in enumerate(corpus[split]):
                name = f"{split}/{i:04d}"
                if len(seq) > max_steps:
                    skip(report, name, f"{len(seq)} steps, more than the cap of {max_steps}; "
                          f"raise --max-steps to keep it", strict)
                    continue
                try:
                    roll = notes_to_roll(seq, name=f"{source.name}:{name}")
                except DataError as err:
                    skip(report, name, err, strict)
                    continue
                if len(roll) == 0:
                    skip(report, name, "no notes", strict)
                    continue
                yield split, name, roll
        return
    members = list(_midi_members(source, report, strict))
    total = len(members)
    for done, (split, name, read) in enumerate(members, 1):
        try:
            roll, stats = midi_to_roll(read(), steps_per_beat, max_steps=max_steps, name=name)
        except DataError as err:
            skip(report, name, err, strict)
            continue
        finally:
            if progress:
                progress(source.name, done, total)
        if len(roll) == 0:
            skip(report, name, "no notes in the piano range", strict)
            continue
        for key in ("notes", "out_of_range", "drums", "unterminated", "zero_length"):
            setattr(report.notes, key, getattr(report.notes, key) + getattr(stats, key))
        yield split, name, roll


def _midi_members(source: Path, report: PreprocessReport, strict: bool):
    """Yield ``(split, name, read)`` for every MIDI file under a zip or folder, sorted."""
    if source.is_file() and (source.suffix.lower() == ".zip" or zipfile.is_zipfile(source)):
        archive, infos = open_zip(source, "download it again")
        report.sources[source.name] = sha256_of(source)
        found = []
        for info in infos:
            path = PurePosixPath(info.filename)
            if info.is_dir() or path.suffix.lower() not in MIDI_SUFFIXES:
                continue
            if unsafe_member(info):
                skip(report, info.filename, "unsafe path in zip (absolute or '..')", strict)
                continue
            if info.file_size > MAX_MIDI_BYTES:
                skip(report, info.filename, f"{info.file_size} bytes uncompressed, over the "
                      f"{MAX_MIDI_BYTES >> 20} MiB cap for a MIDI file", strict)
                continue
            split = _split_of(path.parts)
            if split:
                found.append((split, info.filename, member_reader(archive, info, source)))
        return sorted(found, key=lambda m: m[1])
    if source.is_dir():
        found = []
        digest = hashlib.sha256()
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() not in MIDI_SUFFIXES or not path.is_file():
                continue
            split = _split_of(path.relative_to(source).parts)
            if split and path.stat().st_size > MAX_MIDI_BYTES:
                skip(report, path.relative_to(source).as_posix(), f"{path.stat().st_size} bytes, over the "
                      f"{MAX_MIDI_BYTES >> 20} MiB cap for a MIDI file", strict)
            elif split:
                rel = path.relative_to(source).as_posix()
                found.append((split, rel, path.read_bytes))
                digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        report.sources[source.name + "/"] = digest.hexdigest()
        return found
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    raise DataError(f"{source}: not a zip, a folder of MIDI files or a .pickle")


def _split_of(parts: tuple[str, ...]) -> str | None:
    if len(parts) < 2:
        return None
    folder = parts[-2].lower()
    return folder if folder in SPLITS else None
