"""Safe writes: every file seqvi writes (tables, JSON, plots, samples, checkpoints) goes through here.

``atomic_output(path)`` yields a handle to a temporary file of its own (a
unique name, so two writers never share one) in the folder of the file that
``path`` names, fsyncs it, gives it its mode and renames it over that file,
then fsyncs the folder: a reader never sees half a file, and an error (a
full disk, a signal, a bug) removes the temporary file and leaves the
previous file as it was.

What ``path`` names (``output_target``):

* a symlink is followed to its final target, and the write replaces the
  target, atomically in the target's folder: the link stays a link and
  points at the new content (renaming over the link itself would turn it
  into a plain file and leave the target stale);
* a FIFO, character or block device, socket or directory is refused in one
  line (``SeqviError``): a rename over it would replace the machine's
  ``/dev/full`` or a user's pipe with a regular file;
* a regular file keeps its mode; a new file gets the mode ``open(path, "w")``
  would give (``0o666 & ~umask``: ``mkstemp`` alone makes 0600 files).

A full disk (ENOSPC, EDQUOT) is one line naming the file, the file system's
mount point, the space free there and the space needed (``DiskFull``):
``needed`` when the caller knows it, else more than what fitted. The check
``ensure_space(path, needed)`` refuses before anything is written.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from seqvi.errors import DiskFull, SeqviError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


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


def special_kind(path: str | Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file (links followed), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None


def output_target(path: str | Path) -> Path:
    """The file a write to ``path`` replaces: symlinks followed; a special file or folder is refused."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    kind = special_kind(real)
    if kind:
        via = f" (the target of the link {path})" if real != path else ""
        raise SeqviError(f"{real}{via}: is {kind}, not a regular file; seqvi writes only regular files "
                         f"(give another path{', or - for stdout' if kind != 'a folder' else ''})")
    return real


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing folder)."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def free_space(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system (-1 when unknown)."""
    try:
        st = os.statvfs(mount_point(path))
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_full(path: str | Path, needed: int | None = None, written: int | None = None,
              what: str = "", free: int | None = None) -> DiskFull:
    """The one-line error for a full file system while writing ``path`` (``free``: before the write)."""
    free = free_space(path) + (written or 0) if free is None else free
    want = (f"needs {size_text(needed)}" if needed else
            f"needs more than {size_text(written)}" if written else "needs more space")
    return DiskFull(f"{path}: no space left on {mount_point(path)} ({size_text(max(free, 0))} free; "
                    f"{what or 'writing it'} {want}); free some space and rerun (nothing was replaced)")


def ensure_space(path: str | Path, needed: int, what: str = "") -> None:
    """Refuse (``DiskFull``) before writing ``needed`` bytes at ``path`` where fewer are free."""
    free = free_space(path)
    if 0 <= free < needed:
        raise disk_full(path, needed=needed, what=what)


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it: libraries wrap the OSError) is a full disk or quota."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def fsync_dir(folder: str | Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse a folder fsync
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb", encoding: str | None = None, *,
                  needed: int | None = None, what: str = "") -> Iterator[IO]:
    """Yield a handle to a new temporary file beside ``path``'s target; on success it becomes that file.

    ``needed`` (bytes, when known) is checked against the free space first.
    """
    dest = output_target(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if needed:
        ensure_space(dest, needed, what)
    try:
        keep = stat.S_IMODE(os.stat(dest).st_mode)
    except OSError:
        keep = default_mode()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, keep)
        os.replace(tmp, dest)
        tmp = None
        fsync_dir(dest.parent)
    except BaseException as err:
        written = _size(tmp)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and not isinstance(err, DiskFull) and is_no_space(err):
            raise disk_full(dest, needed, written, what, free=free_space(dest)) from None   # tmp gone: free as before
        raise


def _size(path: str | None) -> int | None:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_output``); returns the file written."""
    data = text.encode("utf-8")
    with atomic_output(path, needed=len(data)) as handle:
        handle.write(data)
    return output_target(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_output(path, needed=len(data)) as handle:
        handle.write(data)
    return output_target(path)
