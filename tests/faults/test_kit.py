"""The suite's own parts do what they say: a real tmpfs fills up, a remount is read-only, hashes see changes."""

from __future__ import annotations

import errno
import os

import pytest

from faults.conftest import assert_unchanged, fill, free_bytes, hash_tree, leftovers, make_fifo, make_null, read_only


def test_tmpfs_fills_and_refuses_writes(tmpfs):
    fill(tmpfs, free=150_000)
    assert 100_000 <= free_bytes(tmpfs) <= 200_000
    with pytest.raises(OSError) as error:
        (tmpfs / "big").write_bytes(b"x" * 400_000)
    assert error.value.errno == errno.ENOSPC


def test_read_only_remount_refuses_then_restores(tmpfs):
    with read_only(tmpfs):
        with pytest.raises(OSError) as error:
            (tmpfs / "f").write_text("x")
        assert error.value.errno == errno.EROFS
    (tmpfs / "f").write_text("x")


def test_hash_tree_sees_content_links_and_special_files(tmp_path):
    (tmp_path / "a").write_text("1")
    os.symlink("a", tmp_path / "link")
    make_fifo(tmp_path / "fifo")
    make_null(tmp_path / "null")
    before = hash_tree(tmp_path)
    assert before["link"] == "symlink -> a" and before["fifo"] == "fifo" and before["null"] == "device 1,3"
    assert assert_unchanged(before, tmp_path) == {}
    (tmp_path / "b.tmp").write_text("new")
    assert assert_unchanged(before, tmp_path) == {"b.tmp": hash_tree(tmp_path)["b.tmp"]}
    assert leftovers(tmp_path) == ["b.tmp"]
    (tmp_path / "a").write_text("2")
    with pytest.raises(AssertionError):
        assert_unchanged(before, tmp_path)
