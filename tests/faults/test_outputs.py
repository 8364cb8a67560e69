"""Outputs never replace what a path names (issue 23, break 2): symlinks, FIFOs, device nodes, stdout.

Real symlinks, a real FIFO and nodes like /dev/null and /dev/full made here
with ``os.mknod`` (the machine's /dev is never touched). Before: ``--csv
/dev/full`` exited 0 and made the node a regular file; a symlinked ``--csv``
became a plain file and its target kept stale content.
"""

from __future__ import annotations

import os

import pytest

from seqvi.data.atomic import atomic_output
from seqvi.errors import DiskFull

from faults.conftest import (assert_fault, assert_unchanged, copy_run, describe, fill, hash_tree, leftovers,
                             make_fifo, make_full, make_null, run_seqvi)


def test_csv_through_a_symlink_replaces_the_target_and_keeps_the_link(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "runs" / "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "table.csv").write_text("stale\n")
    os.symlink(elsewhere / "table.csv", tmp_path / "link.csv")
    done = run_seqvi("compare", run, "--csv", tmp_path / "link.csv", "--plot", tmp_path / "c.png")
    assert done.returncode == 0, done.stdout
    assert os.path.islink(tmp_path / "link.csv")
    text = (elsewhere / "table.csv").read_text()
    assert text != "stale\n" and "," in text.splitlines()[0]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["fifo", "null", "full", "folder"])
def test_csv_and_json_onto_a_special_file_are_refused_and_it_stays(tiny, tmp_path, kind):
    run = copy_run(tiny.run, tmp_path / "runs" / "a")
    target = tmp_path / f"out.{kind}"
    {"fifo": make_fifo, "null": make_null, "full": make_full, "folder": os.mkdir}[kind](target)
    node = describe(target)
    before = hash_tree(tmp_path)
    for args in (["compare", run, "--csv", target, "--plot", tmp_path / "c.png"],
                 ["eval", "--checkpoint", run, "--json", target, "--device", "cpu"]):
        done = run_seqvi(*args, timeout=120)
        assert_fault(done, "not a regular file")
        assert describe(target) == node                         # still the FIFO / device / folder
        assert assert_unchanged(before, tmp_path) == {}         # refused before anything was written


def test_a_symlink_to_a_fifo_is_refused_naming_the_target(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "runs" / "a")
    make_fifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", tmp_path / "link.csv")
    done = run_seqvi("compare", run, "--csv", tmp_path / "link.csv", "--plot", tmp_path / "c.png", timeout=120)
    assert_fault(done, "FIFO")
    assert os.path.islink(tmp_path / "link.csv") and describe(tmp_path / "pipe") == "fifo"


def test_csv_dash_is_stdout(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "runs" / "a")
    done = run_seqvi("compare", run, "--csv", "-", "--plot", tmp_path / "c.png", cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert not (tmp_path / "-").exists()
    assert any(line.startswith("recipe,") or line.count(",") > 3 for line in done.stdout.splitlines())


def test_a_write_that_fills_the_disk_leaves_no_temporary_and_the_old_file(tmpfs):
    path = tmpfs / "table.csv"
    path.write_text("old\n")
    fill(tmpfs, free=50_000)
    with pytest.raises(DiskFull, match="no space left on"):
        with atomic_output(path) as handle:                      # size not known beforehand
            handle.write(b"x" * 400_000)
    assert path.read_text() == "old\n" and leftovers(tmpfs) == []
