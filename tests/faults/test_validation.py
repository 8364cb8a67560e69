"""Breaks 8 and 13 of issue 23: hostile seeds and numbers in recipes, and a sweep that meets them.

Each probe is a real ``seqvi`` process: exit 2, one line, no traceback, and every file written before
(the data root, the trained run, the recipes) hashes the same afterwards.
"""

from __future__ import annotations

import json

import pytest
import yaml

from faults.conftest import assert_fault, assert_unchanged, hash_tree
from faults.tiny_run import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("validation"), train=False)


@pytest.mark.parametrize("override, needle", [
    ("seed=-1", "'seed' must be at least 0"),
    (f"seed={2**64 + 1}", "'seed' must be at most"),
    ("train.lr=-0.01", "'train.lr' must be at least 0"),
])
def test_bad_seed_or_rate_override_is_one_line(tiny, override, needle):
    before = hash_tree(tiny.folder)
    done = tiny.seqvi("train", tiny.recipe, override, "--run-dir", tiny.folder / "runs" / "bad", "--device", "cpu")
    assert needle in assert_fault(done, f"override '{override}'")
    assert_unchanged(before, tiny.folder)
    assert not (tiny.folder / "runs" / "bad").exists()


@pytest.mark.parametrize("section, key, value, needle", [
    ("train", "lr", -0.01, "must be at least 0"),
    ("train", "clip_grad", float("nan"), "must be a finite number"),
    ("train", "max_minutes", float("nan"), "must be a finite number"),
    ("train", "lr", float("inf"), "must be a finite number"),
    (None, "seed", -1, "must be at least 0"),
    (None, "seed", 2**64 + 1, "must be at most"),
])
def test_bad_value_in_a_recipe_file_is_refused_like_the_override(tiny, section, key, value, needle):
    raw = yaml.safe_load(tiny.recipe.read_text())
    (raw[section] if section else raw)[key] = value
    recipe = tiny.folder / f"hostile_{key}.yaml"
    recipe.write_text(yaml.safe_dump(raw))          # writes .nan / .inf, as a person would
    before = hash_tree(tiny.folder)
    done = tiny.seqvi("train", recipe, "--run-dir", tiny.folder / "runs" / "hostile", "--device", "cpu")
    path = f"{section}.{key}" if section else key
    line = assert_fault(done, f"'{path}' {needle}")
    assert str(recipe) in line                        # names the file
    assert_unchanged(before, tiny.folder)
    assert not (tiny.folder / "runs" / "hostile").exists()


def test_sweep_with_a_negative_seed_is_refused_before_any_training(tiny):
    runs = tiny.folder / "sweeps-bad"
    before = hash_tree(tiny.folder)
    done = tiny.seqvi("sweep", tiny.recipe, "--seeds", "-1", "0", "--runs", runs, "--device", "cpu")
    assert_fault(done, "--seeds: -1")
    assert_unchanged(before, tiny.folder)
    assert not runs.exists()                          # nothing trained, nothing half-recorded


def test_sweep_records_a_failing_run_and_goes_on(tiny):
    """A point whose training fails with an error that is no SeqviError (here: its metrics.jsonl is a
    directory, IsADirectoryError) is recorded in sweep.json, the next seed still trains, and the sweep
    ends with one line and exit 2."""
    runs = tiny.folder / "sweeps"
    broken = runs / tiny.recipe.stem / "seed0"
    (broken / "metrics.jsonl").mkdir(parents=True)
    before = hash_tree(tiny.folder)
    done = tiny.seqvi("sweep", tiny.recipe, "--seeds", "0", "1", "--runs", runs, "--device", "cpu")
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stdout
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: 1 of 2 runs failed (table above); rerun the same command to retry them"], done.stdout
    record = json.loads((runs / tiny.recipe.stem / "sweep.json").read_text())
    assert record["runs"]["seed0"]["action"] == "failed"
    assert record["runs"]["seed1"]["status"] == "finished"
    assert (runs / tiny.recipe.stem / "seed1" / "checkpoints" / "best.pt").is_file()
    assert_unchanged(before, tiny.folder)
