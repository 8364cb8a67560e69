"""``preprocess`` under faults (issue 23, breaks 1 and 4): two writers at once, and a full disk.

* Two real ``python -m seqvi preprocess`` processes of one data set: the first
  is stopped (SIGSTOP) while it holds the store, the second runs meanwhile.
  The second is refused in one line; the first, continued, writes a store equal
  to a clean one. (Before: both wrote ``NAME.h5.tmp``; the loser died with a
  ``BlockingIOError`` traceback and the winner could rename a mixed store.)
* A 3 MB tmpfs as the data root, filled to 150 kB free: one line naming the
  disk, exit 2, no temporary left, the old store byte for byte. (Before: exit
  139, ~100 lines of h5py errors, ``tiny.h5.tmp`` left.)
"""

from __future__ import annotations

import signal
import time

import numpy as np

from seqvi.data.prepare import preprocess
from seqvi.data.store import SPLITS, Store, StoreWriter

from conftest import make_corpus
from faults.conftest import (assert_fault, assert_unchanged, big_corpus, fill, hash_tree, leftovers, run_seqvi,
                             start_seqvi)


def contents(path) -> dict:
    """Every split's frames, offsets and names: what a reader of the store gets."""
    with Store(path) as store:
        out = {}
        for split in SPLITS:
            group = store.file[split]
            out[split] = (group["frames"][:], group["offsets"][:], [n.decode() if isinstance(n, bytes) else n
                                                                     for n in group["names"][:]])
        return out


def assert_same_store(a, b) -> None:
    left, right = contents(a), contents(b)
    for split in SPLITS:
        assert np.array_equal(left[split][0], right[split][0]), split
        assert np.array_equal(left[split][1], right[split][1]), split
        assert left[split][2] == right[split][2], split


def wait_until(condition, process, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited ({process.returncode}) before {what}: {process.stdout.read()}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


def test_a_second_preprocess_of_the_same_store_is_refused_and_the_store_is_whole(manifests, tmp_path):
    source = big_corpus(tmp_path / "big")
    clean = tmp_path / "clean"
    preprocess("tiny", str(clean), source)                       # the reference, alone
    root = tmp_path / "data"
    processed = root / "processed"

    first = start_seqvi("preprocess", "tiny", "--source", source, "--root", root)
    try:
        # evidence that it holds the store: its temporary store exists (made after the lock is taken)
        wait_until(lambda: processed.is_dir() and any(processed.glob("tiny.h5*.tmp")), first, "temporary store")
        first.send_signal(signal.SIGSTOP)                       # the first writer is mid-write, holding the store
        second = run_seqvi("preprocess", "tiny", "--source", source, "--root", root)
    finally:
        first.send_signal(signal.SIGCONT)
    output = first.communicate(timeout=300)[0]

    assert_fault(second, "another seqvi process is writing this store")
    assert first.returncode == 0, output
    assert_same_store(processed / "tiny.h5", clean / "processed" / "tiny.h5")
    assert leftovers(processed) == []


def test_two_writers_of_one_store_never_share_a_temporary_file(tmp_path):
    path = tmp_path / "s.h5"
    a, b = StoreWriter(path, (2,), "float32"), StoreWriter(path, (2,), "float32")
    assert a.tmp != b.tmp
    for writer, value in ((a, 1.0), (b, 2.0)):
        for split in SPLITS:
            writer.add(split, f"{split}_{value}", np.full((3, 2), value, np.float32))
    a.close({"dataset": "s"})
    b.close({"dataset": "s"})                                   # the last to finish wins, whole
    with Store(path) as store:
        assert all(np.all(store.split(s).read(0) == 2.0) for s in SPLITS)
    assert leftovers(tmp_path) == []


def test_preprocess_on_a_full_disk_is_one_line_and_keeps_the_old_store(manifests, tmpfs, tmp_path):
    make_corpus(tmpfs / "raw" / "tiny")
    preprocess("tiny", str(tmpfs))                               # the old store, small
    source = big_corpus(tmp_path / "big")                        # a new one needs ~280 kB
    fill(tmpfs, free=150_000)
    before = hash_tree(tmpfs)

    done = run_seqvi("preprocess", "tiny", "--source", source, "--root", tmpfs)

    line = assert_fault(done, "no space left on")
    assert str(tmpfs) in line and "needs" in line and "tiny.h5" in line
    assert assert_unchanged(before, tmpfs) == {}                # nothing new, nothing changed
    assert leftovers(tmpfs) == []
    with Store(tmpfs / "processed" / "tiny.h5") as store:
        assert len(store.split("train")) == 8                    # the old store still reads
