"""Shared parts of the fault-injection suite: real faults, real processes, no mocks.

* ``tmpfs``: a fresh 3 MiB tmpfs (``mount -t tmpfs -o size=3m``) for disk-full
  faults; skipped, naming why, where we are not root or the mount fails, and
  always unmounted afterwards. ``fill(folder, free)`` fills its file system
  until ``free`` bytes are left.
* ``read_only(mountpoint)``: ``mount -o remount,ro`` for the block, then back
  to read-write (use it on a ``tmpfs``, never on a real disk).
* ``hash_tree(folder)`` / ``assert_unchanged(before, folder)``: every file
  under a folder before and after a fault (content hashes, symlink targets,
  file types), so that a test proves nothing written earlier changed.
* ``run_seqvi(*args)``: ``python -m seqvi`` as a real subprocess (stdout and
  stderr merged), optionally under ``RLIMIT_AS`` so that a probe can never take
  the machine down; ``assert_fault(proc, needle)``: exit 2, one ``error:`` line
  containing ``needle``, no traceback (tests/conftest.py's ``one_line_error``).
* ``make_fifo`` / ``make_null`` / ``make_full``: a FIFO and character devices
  made like ``/dev/null`` (1,3) and ``/dev/full`` (1,7) with ``os.mknod`` in a
  test folder; the machine's ``/dev`` is never touched.

This folder is a package (``tests/faults/__init__.py``) so that this file is
``faults.conftest`` and ``from conftest import ...`` keeps meaning
tests/conftest.py everywhere. Import helpers as ``from faults.conftest import ...``.
"""

from __future__ import annotations

import hashlib
import os
import resource
import stat
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, one_line_error

TMPFS_SIZE = "3m"
MEMORY_CAP = 4 << 30  # RLIMIT_AS for probes that could read without limit (torch alone maps ~1.5 GiB)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def mount_tmpfs(target: Path, size: str = TMPFS_SIZE) -> None:
    """Mount a fresh tmpfs of ``size`` on ``target``; skip the test, naming why, when that cannot be done."""
    if not is_root():
        pytest.skip("disk-full faults need root to mount a tmpfs")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {target}: {done.stderr.strip() or done.returncode}")


def unmount(target: Path) -> None:
    """Unmount ``target``; lazily if something still holds it, so that a failed test never leaves a mount."""
    done = subprocess.run(["umount", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    """A mounted, empty 3 MiB tmpfs (disk-full faults); unmounted in a finally."""
    target = tmp_path / "tmpfs"
    mount_tmpfs(target)
    try:
        yield target
    finally:
        unmount(target)


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, free: int = 150_000, name: str = ".filler") -> Path:
    """Write ``folder/name`` until about ``free`` bytes are left on ``folder``'s file system."""
    filler = Path(folder) / name
    with open(filler, "ab") as handle:
        left = free_bytes(folder) - free
        chunk = b"\0" * (1 << 16)
        while left > 0:
            try:
                left -= handle.write(chunk[: min(left, len(chunk))])
                handle.flush()
            except OSError:  # ENOSPC: the file system was already fuller than asked
                break
    return filler


@contextmanager
def read_only(mountpoint: Path) -> Iterator[Path]:
    """``mount -o remount,ro`` a mount (a ``tmpfs``) for the block, then back to read-write."""
    done = subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount {mountpoint} read-only: {done.stderr.strip() or done.returncode}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], capture_output=True, text=True)


def describe(path: Path) -> str:
    """One path's identity: a regular file's sha256, a symlink's target, or the kind of a special file."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"symlink -> {os.readlink(path)}"
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"file {digest.hexdigest()}"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return f"device {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "other"


def hash_tree(folder: Path, skip: tuple[str, ...] = (".filler",)) -> dict[str, str]:
    """``{relative path: describe(path)}`` for everything under ``folder`` except directories and ``skip`` names."""
    folder = Path(folder)
    tree = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if name in skip:
                continue
            path = Path(dirpath) / name
            tree[str(path.relative_to(folder))] = describe(path)
    return tree


def assert_unchanged(before: dict[str, str], folder: Path, skip: tuple[str, ...] = (".filler",)) -> dict[str, str]:
    """Every entry of ``before`` is still there and the same; returns what is new (``{path: describe}``)."""
    after = hash_tree(folder, skip)
    changed = {p: (d, after.get(p, "missing")) for p, d in before.items() if after.get(p) != d}
    assert not changed, f"changed by the fault: {changed}"
    return {p: d for p, d in after.items() if p not in before}


def leftovers(folder: Path) -> list[str]:
    """Temporary files left anywhere under ``folder`` (``*.tmp``, ``.*.tmp``, ``*.tmp.*``)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")
                  if p.name.endswith(".tmp") or ".tmp." in p.name)


def seqvi_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, SEQVI_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)


def _cap_memory(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def seqvi_command(*args) -> list[str]:
    return [sys.executable, "-m", "seqvi", *map(str, args)]


def run_seqvi(*args, memory: int | None = None, timeout: float = 300, env: dict | None = None,
              stdin=subprocess.DEVNULL, cwd=None, merge: bool = True) -> subprocess.CompletedProcess:
    """``python -m seqvi ARGS`` as a real process, stdout and stderr merged into ``.stdout``.

    ``memory`` caps the address space (``RLIMIT_AS``) in the child only. ``merge=False`` keeps
    stderr apart (``.stderr``): for commands such as ``train`` that report progress on stdout
    before a fault; ``assert_fault`` then reads stderr.
    """
    return subprocess.run(seqvi_command(*args), env=env or seqvi_env(), stdin=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge else subprocess.PIPE, text=True, timeout=timeout,
                          cwd=cwd, preexec_fn=_cap_memory(memory) if memory else None)


def start_seqvi(*args, memory: int | None = None, env: dict | None = None, **popen) -> subprocess.Popen:
    """``python -m seqvi ARGS`` started in the background (stdout and stderr merged into a pipe by default)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(seqvi_command(*args), env=env or seqvi_env(), stdin=subprocess.DEVNULL, text=True,
                            preexec_fn=_cap_memory(memory) if memory else None, **popen)


@dataclass
class Outcome:
    """A finished process in the shape ``one_line_error`` reads (``exit_code``, ``output``)."""

    exit_code: int
    output: str


def assert_fault(proc, needle: str = "") -> str:
    """A real process's answer to a fault: exit 2, one ``error:`` line containing ``needle``, no traceback.

    Reads stderr where it was kept apart (``run_seqvi(..., merge=False)``), else the merged output.
    """
    stream = proc.stderr if getattr(proc, "stderr", None) is not None else proc.stdout
    output = stream if isinstance(stream, str) else (stream or b"").decode(errors="replace")
    one_line_error(Outcome(proc.returncode, output), needle)
    return output.strip()


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_char_device(path: Path, major: int, minor: int) -> Path:
    """A character device node like the machine's ``/dev`` ones, made here (root only; skip otherwise)."""
    if not is_root():
        pytest.skip("making a device node needs root")
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except OSError as error:
        pytest.skip(f"cannot make a device node at {path}: {error}")
    return path


def make_null(path: Path) -> Path:
    """A node like ``/dev/null`` (1,3): writes vanish, reads give nothing."""
    return make_char_device(path, 1, 3)


def make_full(path: Path) -> Path:
    """A node like ``/dev/full`` (1,7): every write fails with ENOSPC."""
    return make_char_device(path, 1, 7)


def make_zero(path: Path) -> Path:
    """A node like ``/dev/zero`` (1,5): endless zero bytes."""
    return make_char_device(path, 1, 5)


# --------------------------------------------------------------------------- data and runs


def big_corpus(folder: Path, counts=(800, 100, 100), seed: int = 1) -> Path:
    """A thousand MIDI files (six distinct 40-beat pieces, copied): seconds of preprocessing, ~280 kB of store."""
    import numpy as np

    from conftest import random_piece, write_midi

    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(6):
        path = folder / f"piece{i}.mid"
        write_midi(path, random_piece(rng, 40))
        pieces.append(path.read_bytes())
        path.unlink()
    for split, count in zip(("train", "valid", "test"), counts):
        (folder / split).mkdir(parents=True)
        for j in range(count):
            (folder / split / f"{split}_{j:04d}.mid").write_bytes(pieces[j % len(pieces)])
    return folder


@contextmanager
def environ(**values: str) -> Iterator[None]:
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Trained:
    """Runs trained once per session on the tiny corpus: copy them (``copy_run``) before changing anything."""

    manifests: Path     # $SEQVI_MANIFESTS holding ``tiny``
    root: Path          # data root with processed/tiny.h5
    run: Path           # 2 epochs, lr 0.01, evaluated on test
    other: Path         # the same recipe with lr 0.003 (another run, another config)
    twin: Path          # the same recipe as ``run`` trained into its own directory (same config, another run)
    recipe: Path        # the recipe of ``run`` (and ``twin``)


def write_recipe(path: Path, root: Path, **train) -> Path:
    import yaml

    from conftest import tiny_recipe

    path.write_text(yaml.safe_dump(tiny_recipe(root, **train)))
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    from typer.testing import CliRunner

    from conftest import TINY_MANIFEST, make_corpus
    from seqvi.cli import app

    base = tmp_path_factory.mktemp("trained")
    manifests = base / "manifests"
    manifests.mkdir()
    for path in (REPO / "seqvi" / "data" / "manifests").glob("*.yaml"):
        (manifests / path.name).write_text(path.read_text())
    (manifests / "tiny.yaml").write_text(TINY_MANIFEST)
    root = base / "data"
    make_corpus(root / "raw" / "tiny")
    recipe = write_recipe(base / "tiny.yaml", root)
    other = write_recipe(base / "other.yaml", root, lr=0.003)
    runner = CliRunner()
    with environ(SEQVI_MANIFESTS=str(manifests)):
        for args in (["preprocess", "tiny", "--root", str(root)],
                     ["train", str(recipe), "--run-dir", str(base / "run"), "--device", "cpu"],
                     ["eval", "--checkpoint", str(base / "run"), "--split", "test", "--device", "cpu"],
                     ["train", str(other), "--run-dir", str(base / "other"), "--device", "cpu"],
                     ["train", str(recipe), "--run-dir", str(base / "twin"), "--device", "cpu"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
    return Trained(manifests, root, base / "run", base / "other", base / "twin", recipe)


@pytest.fixture
def tiny(trained, monkeypatch) -> Trained:
    """``trained``, with $SEQVI_MANIFESTS set for this test (and the processes it starts)."""
    monkeypatch.setenv("SEQVI_MANIFESTS", str(trained.manifests))
    return trained


def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, symlinks=True)
    return dest


def assert_stopped(proc, exit_code: int, needle: str = "") -> str:
    """A real process stopped by a signal it handled: ``exit_code``, one ``stopped:`` line, no traceback."""
    output = proc.stdout if isinstance(proc.stdout, str) else (proc.stdout or b"").decode(errors="replace")
    lines = output.strip().splitlines()
    assert proc.returncode == exit_code, output
    assert len(lines) == 1 and lines[0].startswith("stopped:"), output
    assert "Traceback" not in output and needle in lines[0], output
    return lines[0]
