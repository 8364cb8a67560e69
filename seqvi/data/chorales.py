"""Export the Bach chorales bundled with music21 to MIDI: the embedded default corpus.

``seqvi download bach-chorales`` needs no network: music21 (the ``chorales``
extra) ships several hundred chorale encodings (MusicXML, Humdrum). Each is
parsed and written as one MIDI file into ``raw/bach-chorales/<split>/``.
Duplicates are removed by their note content (onset, pitch, duration of every
note), keeping the first file name in sorted order. The split is fixed by a
stable hash of the file stem: sha256(stem) mod 10 -> 0-5 train, 6-7 valid,
8-9 test (about 60/20/20), so it never depends on music21's file order.
Files music21 cannot parse or export are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from seqvi.errors import SeqviError

SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")
EXPORT_VERSION = "1"
Progress = Callable[[str, int, int | None], None]


@dataclass
class ExportReport:
    written: dict = field(default_factory=dict)     # split -> count
    duplicates: int = 0
    skipped: list = field(default_factory=list)     # (file, reason)
    already_done: bool = False


def split_of(stem: str) -> str:
    bucket = int(hashlib.sha256(stem.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "valid" if bucket < 8 else "test"


def export_bach_chorales(raw_dir: Path, *, workers: int = 2, limit: int | None = None,
                         progress: Progress | None = None) -> ExportReport:
    """Write ``raw_dir/{train,valid,test}/<stem>.mid``; a finished export is not redone."""
    marker = raw_dir / "EXPORT.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("version") == EXPORT_VERSION and info.get("limit") == limit:
            return ExportReport(written=info["written"], duplicates=info["duplicates"],
                                skipped=[tuple(s) for s in info["skipped"]], already_done=True)
    paths = chorale_paths()
    if limit:
        paths = paths[:limit]
    report = ExportReport()
    seen: set[str] = set()
    jobs = [(str(p), str(raw_dir / split_of(out_stem(p)))) for p in paths]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (path, result) in enumerate(zip(paths, pool.map(_export_one, jobs, chunksize=4)), 1):
            if progress:
                progress("music21 corpus", done, len(paths))
            kind, value = result
            if kind == "error":
                report.skipped.append((path.name, value))
                continue
            out, digest = value
            if digest in seen:
                Path(out).unlink(missing_ok=True)
                report.duplicates += 1
                continue
            seen.add(digest)
            split = Path(out).parent.name
            report.written[split] = report.written.get(split, 0) + 1
    marker.write_text(json.dumps({"version": EXPORT_VERSION, "limit": limit, "written": report.written,
                                  "duplicates": report.duplicates, "skipped": report.skipped}))
    return report


def out_stem(path: Path) -> str:
    """File stem of the exported MIDI; encodings other than .mxl keep their format in the name."""
    return path.stem if path.suffix.lower() == ".mxl" else f"{path.stem}-{path.suffix[1:].lower()}"


def chorale_paths() -> list[Path]:
    try:
        from music21 import corpus
    except ImportError:
        raise SeqviError(
            "bach-chorales needs music21: pip install 'seqvi[chorales]' (or `make demo`)"
        ) from None
    paths = [Path(p) for p in corpus.getComposer("bach")]
    return sorted((p for p in paths if p.suffix.lower() in SUFFIXES), key=lambda p: p.name)


def _export_one(job: tuple[str, str]) -> tuple[str, object]:
    """Parse one encoding and write its MIDI file; runs in a worker process."""
    src, out_dir = job
    try:
        from music21 import converter

        score = converter.parse(src)
        notes = sorted(
            (float(n.offset), p.midi, float(n.duration.quarterLength))
            for n in score.flatten().notes for p in n.pitches
        )
        if not notes:
            return "error", "no notes"
        digest = hashlib.sha256(repr(notes).encode()).hexdigest()
        out = Path(out_dir) / (out_stem(Path(src)) + ".mid")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        score.write("midi", fp=str(tmp))
        os.replace(tmp, out)
        return "ok", (str(out), digest)
    except Exception as err:  # music21 raises many types; every failure is a skip
        return "error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
