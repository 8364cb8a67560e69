"""HTTP downloads with resume, sha256, mirrors and progress (urllib only, no torch).

Never a partial file under the final name. A file is streamed to
``<dest>.part`` in the same folder; only a complete body whose sha256 checks
out is fsynced and renamed to ``dest`` with ``os.replace``.

Resume. If a ``.part`` exists, the request asks for ``Range: bytes=N-``. A
``206`` whose ``Content-Range`` starts at N is appended; a ``200`` (the
server ignores ranges), a ``206`` for another offset or a ``416`` (the part
is longer than the file) restarts from zero. The sha256 is computed while
writing, after re-hashing the kept part.

Truncation. A body that ends before its ``Content-Length`` keeps the
``.part`` and fails with "truncated at N of M bytes"; rerunning resumes.

Mirrors. ``urls`` are tried in order. A host that does not answer (refused,
DNS failure, timeout), an HTTP error status or a truncated body moves on to
the next URL. The ``.part`` is carried over to the next mirror only when the
expected sha256 is known (the final check catches a bad splice); otherwise
the next mirror starts from zero. A sha256 mismatch deletes the ``.part`` and
stops at once. When every URL fails, one DownloadError lists each URL's
reason. A ``.part`` left by an earlier run is resumed from the first URL.

``fetch_files`` downloads a dataset manifest's files into a raw folder.
Without a sha256 in the manifest, the first successful download records the
file's hash in ``raw_dir/SHA256SUMS`` (``sha256sum`` format:
``<hex>  <name>``), and every later download or check must match it (trust
on first use).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from seqvi import __version__
from seqvi.data.atomic import atomic_output, fsync_dir
from seqvi.errors import DataError, DownloadError

Progress = Callable[[str, int, int | None], None]  # (file name, bytes done, total or None)

USER_AGENT = f"seqvi/{__version__}"
SUMS_FILE = "SHA256SUMS"


def source_hint(dataset: str | None = None) -> str:
    """The way round a failed download, naming the data set when it is known."""
    return f"or fetch the file yourself and run `seqvi preprocess {dataset or '<data set>'} --source PATH`"

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


class ChecksumMismatch(DownloadError):
    """A complete download whose sha256 differs from the expected one."""

    def __init__(self, message: str, *, url: str, expected: str, actual: str):
        super().__init__(message)
        self.url, self.expected, self.actual = url, expected, actual


class _MirrorFailed(Exception):
    """One URL failed; the message is a short reason for the combined error."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    return _hash_file(Path(path)).hexdigest()


def _hash_file(path: Path):
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher


def _open(opener, url: str, timeout: float, offset: int):
    """The response for ``url`` from byte ``offset``; None for a refused range (416)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            return None
        raise _MirrorFailed(f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, str):
            raise _MirrorFailed(f"cannot open ({e.reason})") from e
        raise _MirrorFailed(f"host did not answer ({e.reason})") from e
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad status lines
        raise _MirrorFailed(f"host did not answer ({e or type(e).__name__})") from e
    except ValueError as e:
        raise _MirrorFailed(f"not a valid URL ({e})") from e


def _start(opener, url: str, part: Path, timeout: float):
    """Open ``url``, resuming ``part`` if the server allows: (response, offset, total)."""
    offset = part.stat().st_size if part.exists() else 0
    response = _open(opener, url, timeout, offset) if offset else None
    if response is not None:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        status = getattr(response, "status", None) or 200
        if status == 206 and match and int(match[1]) == offset:
            total = int(match[3]) if match[3] != "*" else None
            return response, offset, total
        if status != 206:  # 200: the server ignored Range and sends the whole file
            return response, 0, _content_length(response)
        response.close()
    response = _open(opener, url, timeout, 0)  # never None: no Range header, no 416
    return response, 0, _content_length(response)


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.strip().isdigit() else None


def _fetch(opener, url, part: Path, expected, progress, timeout, chunk_size, dataset=None) -> str:
    """Stream ``url`` into ``part``; return its sha256 once complete and checked."""
    name = part.name[: -len(".part")]
    response, offset, total = _start(opener, url, part, timeout)
    with response:
        hasher = _hash_file(part) if offset else hashlib.sha256()
        done, cut = offset, None
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    try:
                        chunk = response.read(chunk_size)
                    except (OSError, http.client.HTTPException) as e:   # the network's fault
                        cut = e
                        break
                    if not chunk:
                        break
                    f.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(name, done, total)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:   # writing failed: the disk's fault (full, quota, read-only), not the network's
            raise _write_failed(part, e, done, total) from None
    if cut is not None or (total is not None and done < total):
        raise _MirrorFailed(f"truncated at {done} of {total if total is not None else '?'} bytes, rerunning resumes")
    digest = hasher.hexdigest()
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{name}: sha256 of {url} is {digest}, expected {expected}; the file changed upstream or was "
            f"corrupted (the partial download was deleted); try a mirror {source_hint(dataset)}",
            url=url, expected=expected, actual=digest,
        )
    return digest


def _write_failed(part: Path, err: OSError, done: int, total: int | None) -> DownloadError:
    """One line naming the disk a download could not be written to, its free space and what is needed."""
    try:
        vfs = os.statvfs(part.parent)
        free = f"{vfs.f_bavail * vfs.f_frsize:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"; it needs {total - done:,} more bytes" if total is not None and total > done else ""
    return DownloadError(f"{part}: cannot write the download to disk ({err.strerror or err}) after {done:,} of "
                         f"{total if total is None else format(total, ',')} bytes; {free} on {_mount_of(part.parent)}"
                         f"{need}: make room there (or use another --root / $SEQVI_DATA) and rerun, which resumes")


def _mount_of(folder: Path) -> Path:
    """The mount point that holds ``folder`` (the disk a write went to)."""
    folder = Path(os.path.abspath(folder))
    try:
        device = folder.stat().st_dev
        while folder.parent != folder and folder.parent.stat().st_dev == device:
            folder = folder.parent
    except OSError:
        pass
    return folder


def download_file(
    urls: list[str],
    dest: Path,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
    chunk_size: int = 1 << 16,
    dataset: str | None = None,
) -> str:
    """Download the first URL that works to ``dest``; return the file's hex sha256.

    Raises DownloadError (one line) when every URL fails, naming each URL's reason
    (and ``dataset`` in the hint to preprocess a copy fetched by hand).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    expected = sha256.lower() if sha256 else None
    if not urls:
        raise DownloadError(f"{dest.name}: no URL to download it from; {source_hint(dataset).removeprefix('or ')}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener()  # reads proxy settings from the environment now
    reasons = []
    for i, url in enumerate(urls):
        if i > 0 and expected is None:
            part.unlink(missing_ok=True)  # another mirror's bytes could not be checked
        try:
            digest = _fetch(opener, url, part, expected, progress, timeout, chunk_size, dataset)
        except _MirrorFailed as e:
            reasons.append(f"{url}: {e}")
            continue
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return digest
    raise DownloadError(f"{dest.name}: download failed ({'; '.join(reasons)}); check the network and rerun, {source_hint(dataset)}")


def read_sums(raw_dir: str | Path) -> dict[str, str]:
    """``{name: hex}`` from ``raw_dir/SHA256SUMS``; empty when the file is absent."""
    path = Path(raw_dir) / SUMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the checksum file ({e}); fix or delete it") from e
    sums = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SUMS_LINE.fullmatch(line)
        if match is None:
            raise DataError(f"{path}: line {number} is not '<64 hex digits>  <file name>'; fix or delete the line")
        sums[match[2]] = match[1].lower()
    return sums


def _write_sums(raw_dir: Path, sums: dict[str, str]) -> None:
    with atomic_output(raw_dir / SUMS_FILE, "w", encoding="utf-8") as f:
        f.writelines(f"{digest}  {name}\n" for name, digest in sums.items())


def _plain_name(name) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\n\r\0"):
        raise DownloadError(f"manifest file name {name!r} must be a plain file name without folders")
    return name


def fetch_files(
    files: list[dict],
    raw_dir: Path,
    *,
    progress: Progress | None = None,
    timeout: float = 30.0,
    dataset: str | None = None,
) -> dict[str, str]:
    """Make every manifest file present and verified in ``raw_dir``; return ``{name: sha256}``.

    ``files`` holds ``{"name", "urls", "sha256" (hex or None)}`` entries. A file
    already present with the expected hash (the manifest's, else the recorded
    one) is not downloaded again.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    sums = read_sums(raw_dir)
    digests = {}
    for entry in files:
        name = _plain_name(entry.get("name"))
        from_manifest = (entry.get("sha256") or "").lower() or None
        expected = from_manifest or sums.get(name)
        dest = raw_dir / name
        if expected is not None and dest.is_file() and sha256_of(dest) == expected:
            digests[name] = expected
            continue
        try:
            digest = download_file(
                list(entry.get("urls") or []), dest, sha256=expected, progress=progress, timeout=timeout,
                dataset=dataset,
            )
        except ChecksumMismatch as e:
            if from_manifest is not None:
                raise
            raise DownloadError(
                f"{name}: downloaded sha256 {e.actual} differs from {e.expected} recorded in "
                f"{raw_dir / SUMS_FILE} by the first download from {e.url}; if the upstream file really "
                "changed, delete its line there and rerun"
            ) from e
        if from_manifest is None and sums.get(name) != digest:
            sums[name] = digest
            _write_sums(raw_dir, sums)
        digests[name] = digest
    return digests
