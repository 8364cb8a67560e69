"""Atomic file writes that give the new file the mode the user's umask gives.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a
file written under a temporary name and renamed keeps 0600 unless it is
chmod-ed: sample MIDI files, WAVs and ``SHA256SUMS`` came out private where a
plain ``open`` gives ``0666 & ~umask`` (0644 under the usual umask 022).
``atomic_output`` writes to a temporary file in the destination folder,
fsyncs it, sets that mode and renames it over ``path``: a reader never sees
half a file, and an error leaves the previous file (if any) as it was.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but nothing else writes meanwhile)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yield a handle to a temporary file beside ``path``; on success it becomes ``path`` (umask mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
