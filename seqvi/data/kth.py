"""Adapter for KTH human actions (Schuldt, Laptev & Caputo, ICPR 2004): AVIs -> 64x64 gray store.

Source, in the published layout: the six per-action zips (``walking.zip``,
``jogging.zip``, ``running.zip``, ``boxing.zip``, ``handwaving.zip``,
``handclapping.zip``) holding ``personXX_<action>_dY_uncomp.avi`` (160x120,
25 fps), and ``00sequences.txt`` giving four frame ranges per video::

    person01_boxing_d1		frames	1-95, 96-185, 186-245, 246-360

``source`` may be a folder holding the zips and/or the unpacked AVIs
(searched recursively) with ``00sequences.txt``, or one zip holding them
all (then ``00sequences.txt`` may also sit beside it). AVIs are read from the
zips in memory, one at a time, never extracted.

Each video is decoded to gray, area-resized to 64x64 (``seqvi.data.video``)
and cut into its sequences: 1-based inclusive ranges, clipped to the decoded
length (the published ranges sometimes run past the end; the count of
clipped ranges is stored as ``clipped_ranges``). Sequences are stored as
uint8 frames ``(T, 1, 64, 64)``; batches scale them by ``value_scale = 1/255``.
Memory holds one video at a time.

Splits are by person, from the manifest's ``splits`` (split -> person ids):
``seqvi/data/manifests/kth.yaml`` has the official split (train 11-18; valid 19, 20, 21,
23, 24, 25, 1, 4; test 22, 2, 3, 5-10), ``kth-denton.yaml`` SVG's
(train 1-20, test 21-25; Denton's code has no validation set, so valid holds
the test persons again). A manifest without ``splits`` gets the official one.

A video listed in ``00sequences.txt`` but absent (person13_handclapping_d3
in the published set), an undecodable file, a video without ranges or a
name outside the scheme is skipped, listed with its reason and counted; with
``strict`` the first one is fatal.
"""

from __future__ import annotations

import hashlib
import re
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from seqvi.data.manifest import Manifest
from seqvi.data.download import sha256_of
from seqvi.data.sources import PreprocessReport, member_reader, skip
from seqvi.data.store import SPLITS, StoreWriter
from seqvi.data.video import decode_gray
from seqvi.errors import DataError

ADAPTER_VERSION = "1"
SEQUENCES_FILE = "00sequences.txt"
FRAME_SIZE = (64, 64)
FPS = 25
KNOWN_SPLITS = {
    "official": {"train": list(range(11, 19)), "valid": [19, 20, 21, 23, 24, 25, 1, 4],
                 "test": [22, 2, 3, 5, 6, 7, 8, 9, 10]},
    "denton": {"train": list(range(1, 21)), "valid": list(range(21, 26)), "test": list(range(21, 26))},
}
Progress = Callable[[str, int, int | None], None]

_VIDEO = re.compile(r"(person(\d+)_([a-z]+)_d(\d+))_uncomp\.avi", re.IGNORECASE)
_LINE = re.compile(r"^\s*(person\d+_[a-z]+_d\d+)\s+frames\b(.*)$", re.IGNORECASE)
_RANGE = re.compile(r"(\d+)-(\d+)")


MAX_AVI_BYTES = 256 * 2**20     # a KTH AVI is 0.2-5 MB; 1,500 raw 160x120 RGB frames are 86 MB


def parse_sequences(text: str, name: str = SEQUENCES_FILE) -> tuple[dict[str, list[tuple[int, int]]], list]:
    """``{video key: [(first, last), ...]}`` (1-based, inclusive) and ``[(line, reason)]`` refused."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    refused = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        if not match:
            continue
        tokens = [t for t in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", match[2])) if t]
        spans = [_RANGE.fullmatch(t) for t in tokens]
        good = [(int(m[1]), int(m[2])) for m in spans if m and 1 <= int(m[1]) <= int(m[2])]
        if not good or len(good) != len(tokens):
            refused.append((f"{name}:{number}", f"malformed frame ranges {match[2].strip()!r}"))
        if good:
            ranges[match[1].lower()] = good
    if not ranges:
        raise DataError(f"{name}: no 'personXX_<action>_dY  frames a-b, ...' lines")
    return ranges, refused


def person_splits(manifest: Manifest) -> tuple[str, dict[int, list[str]]]:
    """The split's name ("official", "denton" or "custom") and person id -> splits."""
    splits = manifest.splits or KNOWN_SPLITS["official"]
    persons: dict[int, list[str]] = {}
    for split, ids in splits.items():
        if split not in SPLITS or not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise DataError(f"manifest '{manifest.name}': 'splits' must map train/valid/test to "
                            f"lists of person ids, got {split!r}: {ids!r}")
        for i in ids:
            persons.setdefault(i, []).append(split)
    canon = {k: sorted(v) for k, v in splits.items()}
    name = next((n for n, s in KNOWN_SPLITS.items() if {k: sorted(v) for k, v in s.items()} == canon), "custom")
    return name, persons


def preprocess_kth(manifest: Manifest, source: Path, out_path: Path, *, strict: bool = False,
                   max_steps: int = 100_000, progress: Progress | None = None) -> PreprocessReport:
    """Convert the KTH videos under ``source`` into the store at ``out_path``."""
    started = time.perf_counter()
    report = PreprocessReport(manifest.name)
    split_name, persons = person_splits(manifest)
    archives: list[zipfile.ZipFile] = []
    writer = None
    clipped = 0
    try:
        seq_text, videos = _find(Path(source), report, strict, archives)
        ranges, refused = parse_sequences(seq_text)
        for item in refused:
            skip(report, *item, strict)
        writer = StoreWriter(out_path, (1, *FRAME_SIZE), "uint8")
        keys = sorted(set(ranges) | set(videos))
        for done, key in enumerate(keys, 1):
            try:
                clipped += _one_video(key, ranges, videos, persons, max_steps, writer, report, strict)
            finally:
                if progress:
                    progress(Path(source).name, done, len(keys))
        report.path = writer.close({
            "dataset": manifest.name, "adapter": "kth", "adapter_version": ADAPTER_VERSION,
            "likelihood": "gaussian", "value_scale": 1.0 / 255.0, "fps": FPS,
            "resolution": f"{FRAME_SIZE[1]}x{FRAME_SIZE[0]} gray", "split": split_name,
            "persons": {s: sorted(p for p, ss in persons.items() if s in ss) for s in SPLITS},
            "clipped_ranges": clipped, "sources": report.sources,
            "skipped": [list(s) for s in report.skipped],
        })
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        for archive in archives:
            archive.close()
    report.seconds = time.perf_counter() - started
    return report


def _one_video(key, ranges, videos, persons, max_steps, writer, report, strict) -> int:
    """Decode one video and add its sequences; returns the number of clipped ranges."""
    if key not in videos:
        skip(report, key, f"missing video (listed in {SEQUENCES_FILE})", strict)
        return 0
    name, person, read = videos[key]
    if key not in ranges:
        skip(report, name, f"no frame ranges in {SEQUENCES_FILE}", strict)
        return 0
    if person not in persons:
        skip(report, name, f"person {person} is in no split of the manifest", strict)
        return 0
    try:
        frames = decode_gray(read(), name, FRAME_SIZE, max_frames=max_steps)  # (T, 64, 64)
    except DataError as err:
        skip(report, name, str(err).removeprefix(f"{name}: "), strict, error=err)
        return 0
    clipped = 0
    for i, (first, last) in enumerate(ranges[key], 1):
        if first > len(frames):
            skip(report, f"{key}/{i}", f"frames {first}-{last} start after the video's {len(frames)} frames",
                  strict=strict)
            continue
        clipped += last > len(frames)
        sequence = frames[first - 1:last, None]                          # (T, 1, 64, 64)
        for split in persons[person]:
            writer.add(split, f"{key}/{i}", sequence)
            report.sequences[split] = report.sequences.get(split, 0) + 1
            report.steps[split] = report.steps.get(split, 0) + len(sequence)
    return clipped


def _find(source: Path, report: PreprocessReport, strict: bool, archives: list) -> tuple[str, dict]:
    """The sequence file's text and ``{video key: (name, read)}`` under a folder or a zip."""
    if source.is_dir():
        seq_files = sorted(p for p in source.rglob("*") if p.name.lower() == SEQUENCES_FILE and p.is_file())
        loose = sorted(p for p in source.rglob("*") if p.suffix.lower() == ".avi" and p.is_file())
        zips = sorted(p for p in source.rglob("*") if p.suffix.lower() == ".zip" and p.is_file())
        if loose:
            digest = hashlib.sha256()
            for path in loose:
                digest.update(path.relative_to(source).as_posix().encode() + b"\0" + sha256_of(path).encode())
            report.sources[source.name + "/*.avi"] = digest.hexdigest()
        entries = [(p.relative_to(source).as_posix(), _file_reader(p)) for p in loose]
        for path in zips:
            entries += _zip_entries(path, report, archives, strict)
        text = None
        if seq_files:
            report.sources[seq_files[0].name] = sha256_of(seq_files[0])
            text = _read_text(seq_files[0].read_bytes())
    elif source.is_file() and zipfile.is_zipfile(source):
        entries = _zip_entries(source, report, archives, strict)
        text = _zip_sequences(archives[-1])
        beside = source.parent / SEQUENCES_FILE
        if text is None and beside.is_file():
            report.sources[beside.name] = sha256_of(beside)
            text = _read_text(beside.read_bytes())
    elif source.is_file() and source.suffix.lower() == ".zip":
        raise DataError(f"{source}: corrupt zip (no readable zip directory)")
    else:
        raise DataError(f"{source}: not a folder or a zip of KTH videos (with {SEQUENCES_FILE})")
    if text is None:
        raise DataError(f"{source}: no {SEQUENCES_FILE} (the frame ranges; `seqvi download kth` fetches it)")
    videos: dict[str, tuple[str, int, Callable[[], object]]] = {}
    for name, read in entries:
        match = _VIDEO.fullmatch(PurePosixPath(name.rsplit(":", 1)[-1]).name)
        if not match:
            skip(report, name, "name is not personXX_<action>_dY_uncomp.avi", strict)
        elif match[1].lower() in videos:
            skip(report, name, f"duplicate of {videos[match[1].lower()][0]}", strict)
        else:
            videos[match[1].lower()] = (name, int(match[2]), read)
    if not videos:
        raise DataError(f"{source}: no personXX_<action>_dY_uncomp.avi videos (in zips or unpacked)")
    return text, videos


def _zip_entries(path: Path, report: PreprocessReport, archives: list,
                 strict: bool = False) -> list[tuple[str, Callable[[], bytes]]]:
    """The AVI members of one zip, as deferred reads; members over MAX_AVI_BYTES are skipped
    (a KTH video is a few MB; an oversized member is a zip bomb or not KTH)."""
    report.sources[path.name] = sha256_of(path)
    try:
        archive = zipfile.ZipFile(path)
        archives.append(archive)
        infos = [i for i in archive.infolist() if not i.is_dir() and i.filename.lower().endswith(".avi")]
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: corrupt zip ({err})") from None
    entries = []
    for info in sorted(infos, key=lambda i: i.filename):
        name = f"{path.name}:{info.filename}"
        if info.file_size > MAX_AVI_BYTES:    # zipfile never inflates past file_size
            skip(report, name, f"{info.file_size} bytes uncompressed, over the {MAX_AVI_BYTES} limit", strict)
        else:
            entries.append((name, member_reader(archive, info, path)))
    return entries


def _zip_sequences(archive: zipfile.ZipFile) -> str | None:
    for info in archive.infolist():
        if PurePosixPath(info.filename).name.lower() == SEQUENCES_FILE:
            try:
                return _read_text(archive.read(info))
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
                raise DataError(f"{archive.filename}:{info.filename}: corrupt zip member ({err})") from None
    return None


def _file_reader(path: Path) -> Callable[[], Path]:
    return lambda: path


def _read_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
