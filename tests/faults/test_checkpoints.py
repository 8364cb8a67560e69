"""Checkpoints under faults (issue 23, breaks 5 and 6): a foreign ``last.pt``, a full disk.

* A ``last.pt`` copied from another run is refused on resume in one line naming
  what differs: the config keys (another recipe), or the run ids (the same
  recipe trained elsewhere). Before: resumed with exit 0 on the other run's
  settings and "best". A checkpoint from before run ids (no ``run_id`` /
  ``config_hash``) still resumes.
* A run directory on a full 3 MB tmpfs: the next checkpoint is refused in one
  line naming the free space needed, nothing partial (no temporary), ``last.pt``
  and ``best.pt`` byte for byte; with space again the same command resumes.
  Before: exit 1 with a traceback and a partial ``last.pt.tmp``.
"""

from __future__ import annotations

import shutil

import torch

from faults.conftest import (assert_fault, assert_unchanged, copy_run, fill, hash_tree, leftovers, run_seqvi)

LOGS = ("metrics.jsonl", "history.jsonl")   # append-only: a failed call may add lines, never change old ones


def train(recipe, run, *extra):
    return run_seqvi("train", recipe, *extra, "--run-dir", run, "--device", "cpu", merge=False)  # errors: stderr


def test_a_last_pt_of_another_config_is_refused_naming_the_keys(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "run")
    shutil.copyfile(tiny.other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = hash_tree(run)
    done = train(tiny.recipe, run)
    line = assert_fault(done, "trained with another config")
    assert "train.lr: 0.003 -> 0.01" in line
    assert assert_unchanged(before, run) == {}


def test_a_last_pt_of_another_run_of_the_same_recipe_is_refused_naming_the_runs(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "run")
    shutil.copyfile(tiny.twin / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = hash_tree(run)
    done = train(tiny.recipe, run)
    assert_fault(done, "belongs to another run")
    assert assert_unchanged(before, run) == {}


def test_a_checkpoint_from_before_run_ids_still_resumes(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["run_id"], state["config_hash"]
    torch.save(state, last)
    (run / "run.json").unlink()
    done = train(tiny.recipe, run, "train.epochs=3")
    assert done.returncode == 0, done.stderr
    assert torch.load(last, weights_only=True)["epoch"] == 3 and (run / "run.json").exists()


def test_a_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_old_ones(tiny, tmpfs):
    run = copy_run(tiny.run, tmpfs / "run")
    shutil.rmtree(run / "eval")
    fill(tmpfs, free=40_000)                                    # a checkpoint needs ~68 kB; the logs fit
    before = hash_tree(tmpfs)
    done = train(tiny.recipe, run, "train.epochs=3")
    line = assert_fault(done, "no space left on")
    assert str(tmpfs) in line and "needs" in line and "last.pt" in line
    after = hash_tree(tmpfs)
    for name, digest in before.items():
        if name.split("/")[-1] not in LOGS + ("config.yaml",):   # config.yaml: rewritten with train.epochs=3
            assert after.get(name) == digest, name               # checkpoints, run.json: byte for byte
    for name in LOGS:
        old = (tiny.run / name).read_bytes()
        assert (run / name).read_bytes().startswith(old)         # old lines kept, whole
    assert leftovers(tmpfs) == [] and not (run / "train.lock").exists()
    (tmpfs / ".filler").unlink()
    done = train(tiny.recipe, run, "train.epochs=3")            # space again: the same command resumes
    assert done.returncode == 0, done.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
