"""Breaks 9, 10 and 13 of issue 23: `seqvi runs` and `seqvi compare` over hostile run directories, and
the train.lock takeover race between real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess

import pytest
import yaml

from faults.conftest import assert_fault, assert_unchanged, hash_tree, make_fifo, seqvi_command
from faults.tiny_run import build_tiny

HANG = 60   # seconds: a safety net against a hang, not the assertion


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("listing"))


def run_or_hang(tiny, *args):
    """``seqvi ARGS`` as a real process; a hang (a reader blocked on a FIFO) fails the test."""
    try:
        return subprocess.run(seqvi_command(*args), env=tiny.env(), cwd=tiny.folder, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"seqvi {' '.join(map(str, args))} hung on a FIFO")


@pytest.mark.parametrize("name", ["metrics.jsonl", "history.jsonl", "eval/test.json"])
def test_a_fifo_in_a_run_is_skipped_and_named_by_runs_and_compare(tiny, name, tmp_path):
    runs = tmp_path / "runs"
    tiny.copy_run(runs / "good")
    bad = tiny.copy_run(runs / "fifo", seed=1)
    (bad / name).parent.mkdir(exist_ok=True)
    (bad / name).unlink(missing_ok=True)
    make_fifo(bad / name)
    before = hash_tree(runs)
    listing = run_or_hang(tiny, "runs", runs)
    assert listing.returncode == 0, listing.stdout
    if name != "eval/test.json":   # runs does not read eval results
        assert f"skipped {name.split('/')[-1]} (a FIFO" in " ".join(listing.stdout.split()), listing.stdout
    compared = run_or_hang(tiny, "compare", runs, "--plot", tmp_path / "curves.png")
    assert compared.returncode == 0, compared.stdout
    assert "(a FIFO, not a regular file)" in compared.stdout
    assert_unchanged(before, runs)


def status_of(run_dir):
    from seqvi.experiments.listing import run_status

    return run_status(run_dir)


def test_a_torn_last_metrics_line_keeps_the_epoch_and_the_best(tiny, tmp_path):
    run = tiny.copy_run(tmp_path / "torn")
    whole = status_of(run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["epoch"] == whole.epoch == 2 and "valid_nats_per_step" in last
    cut = lines[-1].index('"valid_seconds"')      # torn after the valid figures were written
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:cut])
    torn = status_of(run)
    assert (torn.epoch, torn.best_epoch, torn.best_valid) == (whole.epoch, whole.best_epoch, whole.best_valid)
    assert "last line torn" in torn.why and torn.status == "finished"
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])   # torn early: no fields
    assert status_of(run).epoch == 2                       # from the stop record, not the previous epoch


def test_a_run_whose_config_is_a_directory_is_listed_with_its_reason(tiny, tmp_path):
    runs = tmp_path / "runs"
    tiny.copy_run(runs / "good")
    bad = tiny.copy_run(runs / "dirconfig")
    (bad / "config.yaml").unlink()
    (bad / "config.yaml").mkdir()
    before = hash_tree(runs)
    listing = run_or_hang(tiny, "runs", runs)
    text = " ".join(listing.stdout.split())
    assert listing.returncode == 0 and "2 runs" in text, listing.stdout
    assert "dirconfig" in text and "config.yaml (a directory" in text
    assert_unchanged(before, runs)


def test_compare_refuses_copies_of_one_seed(tiny, tmp_path):
    runs = tmp_path / "runs"
    for name in ("a", "b", "c"):
        tiny.copy_run(runs / name)
    before = hash_tree(runs)
    done = run_or_hang(tiny, "compare", runs, "--plot", tmp_path / "curves.png")
    line = assert_fault(done, "with the same seed 0")
    assert all(str(runs / n) in line or f"runs/{n}" in line for n in ("a", "b", "c")), line
    assert_unchanged(before, runs)
    assert not (tmp_path / "curves.png").exists()


def test_runs_after_train_epochs_was_lowered_says_so(tiny, tmp_path):
    run = tiny.copy_run(tmp_path / "lowered")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    listing = run_or_hang(tiny, "runs", run)
    text = " ".join(listing.stdout.split())
    assert listing.returncode == 0 and "2/1" not in text, listing.stdout
    assert "2 (train.epochs now 1)" in text


# --------------------------------------------------------------------------- the lock race

ROUNDS, WORKERS = 400, 4


def _racer(run_dir: str, log: str, barrier, rounds: int) -> None:
    """One process: each round, race the others to take over the stale lock; log acquire/release."""
    from seqvi.engine.lifecycle import Lifecycle
    from seqvi.errors import SeqviError

    def note(what: str, k: int) -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.write(fd, f"{k} {what} {os.getpid()}\n".encode())
        os.close(fd)

    for k in range(rounds):
        barrier.wait()
        try:
            with Lifecycle(run_dir):
                note("acquire", k)
                os.sched_yield()
                note("release", k)
        except SeqviError:
            note("refused", k)
        barrier.wait()


def test_two_processes_never_hold_a_taken_over_stale_lock(tmp_path):
    """Each round leaves train.lock as a SIGKILLed trainer does (its file, a dead pid), then four real
    processes race to take it over. The O_APPEND log of acquire/release must never show two holders."""
    from seqvi.engine.lifecycle import LOCK

    run_dir, log = tmp_path / "run", tmp_path / "order.log"
    run_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0})
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WORKERS + 1)
    workers = [context.Process(target=_racer, args=(str(run_dir), str(log), barrier, ROUNDS))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(ROUNDS):
            (run_dir / LOCK).write_text(stale)            # a lock nobody holds, naming a dead process
            barrier.wait(timeout=HANG)
            barrier.wait(timeout=HANG)
    finally:
        for worker in workers:
            worker.join(timeout=HANG)
            if worker.is_alive():
                worker.kill()
    assert all(w.exitcode == 0 for w in workers)
    holders, overlaps, acquired = set(), [], set()
    for line in log.read_text().splitlines():
        k, what, pid = line.split()
        if what == "acquire":
            if holders:
                overlaps.append((k, pid, set(holders)))
            holders.add(pid)
            acquired.add(k)
        elif what == "release":
            holders.discard(pid)
    assert not overlaps, f"two processes held train.lock at once: {overlaps[:3]}"
    assert len(acquired) == ROUNDS                         # each round, the stale lock was taken over
