"""Configuration is read from regular files under a size cap (issue 23, break 3).

``seqvi train /dev/zero`` or ``extends: /dev/zero`` read without limit (RSS
23 GB, then the OOM killer). Every probe runs under RLIMIT_AS in the child
(``memory=``), so that before the fix it dies of MemoryError, never the machine.
"""

from __future__ import annotations

import pytest

from faults.conftest import MEMORY_CAP, assert_fault, copy_run, make_fifo, make_zero, run_seqvi


@pytest.mark.parametrize("kind", ["zero", "fifo", "large"])
def test_a_recipe_that_is_not_a_small_regular_file_is_one_line(tmp_path, kind):
    path = tmp_path / f"recipe.{kind}"
    if kind == "zero":
        make_zero(path)
    elif kind == "fifo":
        make_fifo(path)
    else:   # valid YAML, 2 MiB of it
        path.write_text("seed: 0\n" + ("# padding padding padding padding padding padding padding\n" * 36_000))
    needle = "larger than" if kind == "large" else "not a regular file"
    for recipe in (path, tmp_path / "extends.yaml"):
        (tmp_path / "extends.yaml").write_text(f"extends: {path}\nseed: 1\n")
        done = run_seqvi("train", recipe, "--run-dir", tmp_path / "run", memory=MEMORY_CAP, timeout=120)
        assert_fault(done, needle)
        assert str(path) in done.stdout
    assert not (tmp_path / "run").exists()


def test_a_run_config_that_is_a_fifo_is_refused_not_waited_on(tiny, tmp_path):
    run = copy_run(tiny.run, tmp_path / "run")
    (run / "config.yaml").unlink()
    make_fifo(run / "config.yaml")
    done = run_seqvi("train", tiny.recipe, "--run-dir", run, "--device", "cpu", memory=MEMORY_CAP, timeout=120)
    assert_fault(done, "FIFO")
