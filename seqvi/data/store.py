"""The processed corpus: one HDF5 file per data set, read lazily.

Layout of ``<root>/processed/NAME.h5``::

    /<split>/frames   (N_frames, *frame_shape)  all sequences of the split, concatenated
    /<split>/offsets  (N_seq + 1,) int64        sequence i is frames[offsets[i]:offsets[i+1]]
    /<split>/names    (N_seq,) utf-8            source member each sequence came from
    /<split>/inputs   (N_frames, A) float32     optional: per-step inputs u_t (actions a_{t-1}), row-aligned with frames
    /<split>/rewards  (N_frames,) float32       optional: per-step rewards r_t, row-aligned with frames
    attrs (file)      dataset, adapter, adapter_version, frame_shape, dtype,
                      likelihood ("bernoulli" | "gaussian"), resolution text,
                      steps_per_beat, sources (JSON: file -> sha256), skipped (JSON),
                      mean / std (per feature, from the training split),
                      value_scale (optional: batches multiply stored values by it,
                      e.g. 1/255 for uint8 video), input_dim (when the store has inputs)

``inputs`` and ``rewards`` are present in every split or in none (a writer
refuses a mix); a store written before they existed has neither and reads as
before. On open, a split whose inputs or rewards do not have one row per
frame, or whose inputs are not ``input_dim`` wide, is a DataError naming the
split. ``offsets`` and ``names`` are resizable so that ``seqvi.data.append``
can add sequences to a copy of the store without rewriting the rest.

The writer streams sequence by sequence into resizable chunked datasets, so
memory does not grow with the corpus, and writes under a temporary name that
is renamed only when complete: an interrupted preprocess leaves the previous
store intact. The reader keeps the file open and slices one sequence (or one
crop of it) at a time; nothing reads a whole split into memory.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from seqvi.data.atomic import NO_SPACE, default_mode, disk_full, fsync_dir
from seqvi.errors import DataError

SPLITS = ("train", "valid", "test")
CORRUPT = (KeyError, OSError, RuntimeError, ValueError)   # what h5py raises on damaged bytes


def lock_path(path: str | Path) -> Path:
    """``NAME.h5.lock`` beside the store: every writer of the store (preprocess, append) holds it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def store_lock(path: str | Path, wait: bool = True, doing: str = "write") -> Iterator[None]:
    """Hold the store's exclusive lock (``flock``: the kernel drops it when its process dies).

    ``wait=False`` refuses (DataError) while another process holds it, instead of waiting.
    """
    import fcntl   # POSIX only: imported here so that reading stores works everywhere

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise DataError(f"{path}: another seqvi process is writing this store (it holds {lock.name}); "
                            f"wait for it to finish, then {doing} again") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary stores killed writers left beside ``path``: ``NAME.h5.*.tmp`` (and ``NAME.h5.tmp`` of old).

    Only a holder of the store's lock may remove them: then no writer is using one.
    """
    path = Path(path)
    found = list(path.parent.glob(f"{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    legacy = path.with_name(path.name + ".tmp")
    return sorted(found + ([legacy] if legacy.exists() else []))


class _DiskGuard:
    """The file object h5py writes a new store through (its ``fileobj`` driver).

    HDF5 does not survive a failed write: after ENOSPC its cache is inconsistent and closing the
    file can crash the process (exit 139). So the first failed write is kept in ``error`` and every
    later write is dropped (reported as done): HDF5 never sees an error, the writer checks ``error``
    after each step, and the half-written file is deleted.
    """

    def __init__(self, path: Path):
        self.file = open(path, "w+b", buffering=0)
        self.error: OSError | None = None
        self.written = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                n = self.file.write(view[done:])
            except OSError as err:
                self.error = err
                break
            done += n or 0
            if not n:
                self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written = max(self.written, self.file.tell()) if self.error is None else self.written
        return len(view)

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def readinto(self, buffer) -> int:
        return self.file.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.file.truncate(size)
            except OSError as err:
                self.error = err
        return self.file.tell() if size is None else size

    def flush(self) -> None:
        pass   # unbuffered

    def sync(self) -> None:
        if self.error is None:
            try:
                os.fsync(self.file.fileno())
            except OSError as err:
                self.error = err

    def close(self) -> None:
        self.file.close()


class StoreWriter:
    """Stream sequences into a new store; ``close()`` makes it visible atomically.

    Each writer has a temporary file of its own (``NAME.h5.<random>.tmp``), so two writers never
    write into one file; ``seqvi.data.prepare.preprocess`` also holds the store's lock. A full disk
    is one line (``DiskFull``) naming the file system and what was written, with no temporary left.
    """

    def __init__(self, path: str | Path, frame_shape: tuple[int, ...], dtype: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        try:
            self.guard = _DiskGuard(self.tmp)
            self.file = h5py.File(self.guard, "w")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        self.counts: dict[str, int] = {}
        self._offsets: dict[str, list[int]] = {}
        self._names: dict[str, list[str]] = {}
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None
        self._n = 0
        self.input_dim: int | None = None        # fixed by the first add: inputs' width, or None
        self.has_rewards: bool | None = None     # fixed by the first add

    def add(self, split: str, name: str, frames: np.ndarray, inputs: np.ndarray | None = None,
            rewards: np.ndarray | None = None) -> None:
        """Append one sequence: frames (T, *frame_shape), optional inputs (T, A) and rewards (T,)."""
        frames = np.asarray(frames)
        if frames.shape[1:] != self.frame_shape:
            raise DataError(f"{name}: frame shape {frames.shape[1:]} != store's {self.frame_shape}")
        inputs, rewards = self._check_controls(name, len(frames), inputs, rewards)
        if split not in self._offsets:
            group = self.file.create_group(split)
            chunk = (max(1, min(4096, (1 << 16) // max(1, int(np.prod(self.frame_shape))))),)
            group.create_dataset(
                "frames", shape=(0, *self.frame_shape), maxshape=(None, *self.frame_shape),
                dtype=self.dtype, chunks=chunk + self.frame_shape, compression="lzf",
            )
            if self.input_dim is not None:
                group.create_dataset("inputs", shape=(0, self.input_dim), maxshape=(None, self.input_dim),
                                     dtype=np.float32, chunks=(4096, self.input_dim), compression="lzf")
            if self.has_rewards:
                group.create_dataset("rewards", shape=(0,), maxshape=(None,), dtype=np.float32,
                                     chunks=(4096,), compression="lzf")
            self._offsets[split] = [0]
            self._names[split] = []
        group = self.file[split]
        start = self._offsets[split][-1]
        for key, values in (("frames", frames.astype(self.dtype, copy=False)), ("inputs", inputs),
                            ("rewards", rewards)):
            if values is not None:
                group[key].resize(start + len(frames), axis=0)
                group[key][start:] = values
        self._check_disk()
        self._offsets[split].append(start + len(frames))
        self._names[split].append(name)
        if split == "train":
            flat = frames.reshape(len(frames), -1).astype(np.float64)
            if self._sum is None:
                self._sum = np.zeros(flat.shape[1])
                self._sumsq = np.zeros(flat.shape[1])
            self._sum += flat.sum(0)
            self._sumsq += (flat ** 2).sum(0)
            self._n += len(frames)

    def _check_controls(self, name: str, steps: int, inputs, rewards):
        """Inputs (T, A) and rewards (T,) as float32, the same presence and width for every sequence."""
        if inputs is not None:
            inputs = np.asarray(inputs, dtype=np.float32)
            if inputs.ndim != 2 or len(inputs) != steps:
                raise DataError(f"{name}: inputs have shape {inputs.shape}, expected ({steps}, A): one row per frame")
        if rewards is not None:
            rewards = np.asarray(rewards, dtype=np.float32)
            if rewards.shape != (steps,):
                raise DataError(f"{name}: rewards have shape {rewards.shape}, expected ({steps},): one per frame")
        width = None if inputs is None else inputs.shape[1]
        if self.has_rewards is None:     # the first sequence fixes what every sequence carries
            self.input_dim, self.has_rewards = width, rewards is not None
        if width != self.input_dim or (rewards is not None) != self.has_rewards:
            raise DataError(f"{name}: carries inputs of width {width} and {'' if rewards is not None else 'no '}"
                            f"rewards, earlier sequences of this store inputs of width {self.input_dim} and "
                            f"{'' if self.has_rewards else 'no '}rewards")
        return inputs, rewards

    def close(self, attrs: dict[str, Any]) -> Path:
        for split in SPLITS:
            if split not in self._offsets or len(self._names[split]) == 0:
                self.abort()
                skipped = attrs.get("skipped") or []
                why = (f" ({len(skipped)} files skipped; first: {skipped[0][0]}: "
                       f"{str(skipped[0][1]).removeprefix(str(skipped[0][0]) + ': ')})" if skipped else "")
                raise DataError(f"{self.path}: split '{split}' is empty after preprocessing{why}; "
                                f"the previous store, if any, is unchanged")
        for split, offsets in self._offsets.items():
            write_index(self.file[split], np.asarray(offsets, dtype=np.int64), self._names[split])
        mean = self._sum / max(self._n, 1)
        std = np.sqrt(np.maximum(self._sumsq / max(self._n, 1) - mean ** 2, 0.0))
        self.file.attrs["frame_shape"] = np.asarray(self.frame_shape, dtype=np.int64)
        self.file.attrs["dtype"] = self.dtype.name
        self.file.attrs["mean"] = mean.astype(np.float32)
        self.file.attrs["std"] = std.astype(np.float32)
        if self.input_dim is not None:
            self.file.attrs["input_dim"] = self.input_dim
        for key, value in attrs.items():
            self.file.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        self.file.flush()
        self.file.close()
        self.guard.sync()
        self._check_disk()
        self.guard.close()
        os.chmod(self.tmp, default_mode())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def _check_disk(self) -> None:
        """Raise the first failed write (a full disk: ``DiskFull``, one line) once HDF5 has returned."""
        err = self.guard.error
        if err is None:
            return
        if err.errno in NO_SPACE:
            raise disk_full(self.path, written=self.guard.written, what="the new store")
        raise DataError(f"{self.tmp}: write failed ({err.strerror or err}); the previous store is unchanged")

    def abort(self) -> None:
        try:
            if self.file.id.valid:
                self.file.close()
        except Exception:  # noqa: BLE001 - a store being thrown away: only its removal matters
            pass
        finally:
            self.guard.close()
            self.tmp.unlink(missing_ok=True)


def write_index(group: h5py.Group, offsets: np.ndarray, names: list[str]) -> None:
    """(Re)write a split's ``offsets`` and ``names``, resizable so that appends can grow them in place."""
    for key, values, dtype in (("offsets", offsets, np.int64), ("names", names, h5py.string_dtype())):
        if key in group and group[key].maxshape[0] is None:
            group[key].resize(len(values), axis=0)
            group[key][:] = np.asarray(values, dtype=object if key == "names" else np.int64)
            continue
        if key in group:     # a store written before indexes were resizable
            del group[key]
        group.create_dataset(key, data=np.asarray(values, dtype=object if key == "names" else np.int64),
                             dtype=dtype, maxshape=(None,), chunks=(1024,))


class SplitData:
    """One split of an open store: lengths up front, frames (and inputs, rewards) read on demand."""

    def __init__(self, group: h5py.Group, path: Path, split: str, value_scale: float = 1.0,
                 frame_shape: tuple[int, ...] | None = None, input_dim: int | None = None):
        self.value_scale = float(value_scale)  # multiplies stored values when batches are made
        self.path, self.split = path, split
        try:
            self.frames = group["frames"]
            self.offsets = np.asarray(group["offsets"][:], dtype=np.int64)
            self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in group["names"][:]]
            self.inputs = group["inputs"] if "inputs" in group else None
            self.rewards = group["rewards"] if "rewards" in group else None
        except (KeyError, OSError, ValueError, TypeError, AttributeError, RuntimeError) as err:
            raise DataError(f"{path}: split '{split}' is incomplete or corrupt ({err}); rebuild it with "
                            f"`seqvi preprocess {path.name.removesuffix('.h5')}`") from None
        if frame_shape is not None and tuple(self.frames.shape[1:]) != tuple(frame_shape):
            raise DataError(f"{path}: split '{split}' frames have shape {tuple(self.frames.shape[1:])}, "
                            f"the store's frame_shape attribute says {tuple(frame_shape)}")
        if (self.offsets.ndim != 1 or len(self.offsets) != len(self.names) + 1 or self.offsets[0] != 0
                or np.any(np.diff(self.offsets) < 0) or self.offsets[-1] != self.frames.shape[0]):
            raise DataError(f"{path}: split '{split}' offsets do not match its frames")
        self._check_controls(input_dim)
        self.lengths = np.diff(self.offsets)

    def _check_controls(self, input_dim: int | None) -> None:
        rows = self.frames.shape[0]
        where = f"{self.path}: split '{self.split}'"
        if input_dim is not None and self.inputs is None:
            raise DataError(f"{where} has no inputs, but the store's input_dim is {input_dim}; "
                            f"run `seqvi preprocess` again")
        if self.inputs is not None:
            if self.inputs.ndim != 2 or self.inputs.shape[0] != rows:
                raise DataError(f"{where} inputs have shape {self.inputs.shape}, expected ({rows}, A): "
                                f"one row per frame; run `seqvi preprocess` again")
            if input_dim is not None and self.inputs.shape[1] != input_dim:
                raise DataError(f"{where} inputs are {self.inputs.shape[1]} wide, the store's input_dim "
                                f"is {input_dim}; run `seqvi preprocess` again")
        if self.rewards is not None and self.rewards.shape != (rows,):
            raise DataError(f"{where} rewards have shape {self.rewards.shape}, expected ({rows},): "
                            f"one per frame; run `seqvi preprocess` again")

    @property
    def has_inputs(self) -> bool:
        return self.inputs is not None

    @property
    def has_rewards(self) -> bool:
        return self.rewards is not None

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` of sequence ``i`` (clipped to its length)."""
        return self._slice(self.frames, i, start, stop)

    def read_inputs(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Inputs ``start:stop`` of sequence ``i``, (T, A) float32: row t is u_t, aligned with frame t."""
        if self.inputs is None:
            raise DataError(f"{self.path}: split '{self.split}' has no inputs (the data set has no actions)")
        return self._slice(self.inputs, i, start, stop)

    def read_rewards(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rewards ``start:stop`` of sequence ``i``, (T,) float32: r_t, received with frame t."""
        if self.rewards is None:
            raise DataError(f"{self.path}: split '{self.split}' has no rewards")
        return self._slice(self.rewards, i, start, stop)

    def _slice(self, data: h5py.Dataset, i: int, start: int, stop: int | None) -> np.ndarray:
        length = int(self.lengths[i])
        stop = length if stop is None else min(stop, length)
        base = int(self.offsets[i])
        try:
            return data[base + start: base + stop]
        except (OSError, KeyError, RuntimeError) as err:  # a corrupt chunk: h5py reads lazily, so it shows only here
            raise DataError(f"{self.path}: split '{self.split}' sequence {i} ({self.names[i]}) is unreadable "
                            f"({' '.join(str(err).split())[:160]}); run `seqvi preprocess` again") from None


class Store:
    """An open ``NAME.h5``; use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            name = self.path.name.removesuffix(".h5")
            raise DataError(f"{self.path}: no processed store; run `seqvi download {name}` and `seqvi preprocess "
                            f"{name}` first (or point data.root / $SEQVI_DATA at the data root that has it)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 store ({err})") from None
        try:
            self.attrs = {k: _decode_attr(v) for k, v in self.file.attrs.items()}
            self.frame_shape = tuple(int(s) for s in self.attrs["frame_shape"])
        except (KeyError, OSError, ValueError, RuntimeError) as err:
            self.file.close()
            raise DataError(f"{self.path}: store attributes are missing or corrupt ({err}); rebuild it with "
                            f"`seqvi preprocess {self.path.name.removesuffix('.h5')}`") from None
        self._splits: dict[str, SplitData] = {}

    @property
    def likelihood(self) -> str:
        return str(self.attrs.get("likelihood", "gaussian"))

    @property
    def splits(self) -> list[str]:
        try:
            return [s for s in self.file.keys()]
        except CORRUPT as err:
            raise self.corrupt(err) from None

    def split(self, name: str) -> SplitData:
        if name not in self._splits:
            try:
                if name not in self.file:
                    raise DataError(f"{self.path}: no split '{name}' (has: {', '.join(self.splits)})")
                group = self.file[name]
            except CORRUPT as err:   # h5py tells a damaged object header or heap as KeyError/RuntimeError
                raise self.corrupt(err) from None
            input_dim = self.attrs.get("input_dim")
            self._splits[name] = SplitData(group, self.path, name,
                                           float(self.attrs.get("value_scale", 1.0)), self.frame_shape,
                                           None if input_dim is None else int(input_dim))
        return self._splits[name]

    def corrupt(self, err: BaseException) -> DataError:
        """The one-line error for a store whose HDF5 structure is damaged."""
        name = self.path.name.removesuffix(".h5")
        why = " ".join(str(err).strip("'\"").split())[:160]
        return DataError(f"{self.path}: the store is corrupt ({why}); rebuild it with `seqvi preprocess {name}`")

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
