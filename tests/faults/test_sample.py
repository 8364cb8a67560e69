"""``seqvi sample`` under faults (issue 23, break 7): a full disk, SIGTERM, SIGKILL.

A call is all or nothing: files are staged and moved in only when all are
written. Before: a full disk left a truncated ``samples.png`` (exit 1) and
files the next call kept; SIGTERM during many samples left unrecorded files
and a ``.tmp`` that later calls left in place.
"""

from __future__ import annotations

import json
import signal
import time

from faults.conftest import (assert_fault, assert_stopped, assert_unchanged, copy_run, fill, hash_tree, leftovers,
                             run_seqvi, start_seqvi)


def sample(run, out, *extra):
    return ["sample", "--checkpoint", run, "--out", out, "--device", "cpu", *map(str, extra)]


def listed(out) -> set:
    return {p.name for p in out.iterdir() if not p.name.startswith(".")}


def recorded(out) -> set:
    return set(json.loads((out / ".seqvi-samples.json").read_text())["files"])


def count_samples(out) -> int:
    return sum(1 for _ in out.rglob("sample_*.mid"))


def wait_for(condition, process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no evidence of writing"
        time.sleep(0.01)


def test_sample_on_a_full_disk_is_one_line_and_leaves_the_previous_samples(tiny, tmpfs):
    run = copy_run(tiny.run, tmpfs / "run")
    out = tmpfs / "samples"
    assert run_seqvi(*sample(run, out, "--num", 2, "--length", 16)).returncode == 0
    fill(tmpfs, free=24_000)                                    # MIDI files fit, the picture does not
    before = hash_tree(tmpfs)
    done = run_seqvi(*sample(run, out, "--num", 4, "--length", 64, "--seed", 1))
    assert_fault(done, "no space left on")
    assert assert_unchanged(before, tmpfs) == {}                # the previous call's files, byte for byte
    assert leftovers(tmpfs) == [] and not list(out.glob(".seqvi-samples.*.tmp"))
    (tmpfs / ".filler").unlink()
    assert run_seqvi(*sample(run, out, "--num", 4, "--length", 64, "--seed", 1)).returncode == 0
    assert listed(out) == recorded(out) == {f"sample_0{i}.mid" for i in range(1, 5)} | {"samples.png"}


def test_sigterm_during_many_samples_leaves_the_folder_as_it_was(tiny, tmp_path):
    out = tmp_path / "samples"
    assert run_seqvi(*sample(tiny.run, out, "--num", 2, "--length", 8)).returncode == 0
    before = hash_tree(out)
    process = start_seqvi(*sample(tiny.run, out, "--num", 3000, "--length", 8, "--seed", 1))
    wait_for(lambda: count_samples(out) >= 40, process)        # evidence: it is writing files
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    process.stdout = output
    assert_stopped(process, 75, "SIGTERM")
    assert assert_unchanged(before, out) == {}
    assert leftovers(out) == [] and count_samples(out) == 2


def test_a_call_after_a_killed_one_removes_its_leftovers(tiny, tmp_path):
    out = tmp_path / "samples"
    process = start_seqvi(*sample(tiny.run, out, "--num", 3000, "--length", 8))
    wait_for(lambda: out.is_dir() and count_samples(out) >= 40, process)
    process.kill()
    process.communicate(timeout=60)
    done = run_seqvi(*sample(tiny.run, out, "--num", 2, "--length", 8))
    assert done.returncode == 0, done.stdout
    assert listed(out) == recorded(out) == {"sample_01.mid", "sample_02.mid", "samples.png"}
    assert leftovers(out) == [] and count_samples(out) == 2
