"""What every adapter shares: the preprocess report, skip-and-count, safe zip reading.

A bad member of a corpus is skipped, listed with its reason and counted in
the report; with ``strict`` the first one is fatal. A folder without split
folders is split by ``plain_split``: a stable hash of each file's relative
path (sha256: 80% train, 10% valid, 10% test). Zip members are read in
memory, never extracted; a member whose path is absolute or climbs out with
``..`` is refused (skipped and counted by the caller).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from seqvi.data.midi import RollStats
from seqvi.errors import DataError

PLAIN_SPLIT = (80, 10, 10)   # percent train, valid, test of a folder without split folders


@dataclass
class PreprocessReport:
    dataset: str
    path: Path | None = None
    sequences: dict = field(default_factory=dict)   # split -> count
    steps: dict = field(default_factory=dict)       # split -> total time steps
    skipped: list = field(default_factory=list)     # (member, reason)
    notes: RollStats = field(default_factory=RollStats)   # MIDI only: note statistics
    sources: dict = field(default_factory=dict)     # file -> sha256
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(self.sequences.values()) + len(self.skipped)


def skip(report: PreprocessReport, name: str, reason, strict: bool, error: DataError | None = None) -> None:
    """Record a skipped member, or raise with ``strict`` (``error`` if given, else one made from the reason)."""
    if strict:
        if error is not None:
            raise error
        raise reason if isinstance(reason, DataError) else DataError(f"{name}: {reason}")
    report.skipped.append((name, str(reason)))


def open_zip(source: Path, hint: str = "copy it again") -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a zip and list its members; a truncated or corrupt archive is one ``DataError``."""
    if not zipfile.is_zipfile(source):
        raise DataError(f"{source}: corrupt zip (no central directory: truncated or not a zip); {hint}")
    try:
        archive = zipfile.ZipFile(source)
        return archive, archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{source}: corrupt zip ({err})") from None


def unsafe_member(info: zipfile.ZipInfo) -> bool:
    """True when a member's path is absolute or would leave the extraction folder."""
    path = PurePosixPath(info.filename)
    return path.is_absolute() or ".." in path.parts or "\\" in info.filename


def member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: Path) -> Callable[[], bytes]:
    """A deferred read of one member whose failure names the archive and the member."""
    def read() -> bytes:
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise DataError(f"{source}:{info.filename}: corrupt zip member ({err})") from None
    return read


def plain_split(name: str) -> str:
    """Split of a file in a tree without split folders: sha256 of its relative path, 80/10/10."""
    bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % 100
    return "train" if bucket < PLAIN_SPLIT[0] else "valid" if bucket < sum(PLAIN_SPLIT[:2]) else "test"
