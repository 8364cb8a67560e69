"""`seqvi download` / `seqvi preprocess` of interaction data through the CLI: the happy path and
every bad input answered with exit code 2 and one line (no traceback)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from seqvi.cli import app

from conftest import one_line_error

runner = CliRunner()

MANIFEST = """\
name: {name}
title: t
adapter: control
download: gymnasium
env: {env}
seed: 0
episode_steps: {steps}
action_repeat: {repeat}
splits: {splits}
files: []
{extra}"""


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def manifest(folder, name="bad", env="Pendulum-v1", steps=10, repeat=2,
             splits="{train: 1, valid: 1, test: 1}", extra=""):
    (folder / f"{name}.yaml").write_text(MANIFEST.format(name=name, env=env, steps=steps, repeat=repeat,
                                                        splits=splits, extra=extra))
    return name


def test_download_then_preprocess_pendulum(tmp_path, manifests):
    root = tmp_path / "data"
    result = run("download", "pendulum", "--root", root, "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "generated train 1, valid 1, test 1 episodes of Pendulum-v1 (303 stored steps)" in result.output
    result = run("download", "pendulum", "--root", root, "--limit", "1")
    assert result.exit_code == 0 and "already generated" in result.output
    result = run("preprocess", "pendulum", "--root", root)
    assert result.exit_code == 0, result.output
    assert "skipped 0 unreadable files" in result.output and (root / "processed" / "pendulum.h5").exists()


@pytest.mark.parametrize("case", [
    "no raw files", "source is a file", "source missing", "pixels without frames", "strict",
    "nothing readable", "unfinished download",
])
def test_preprocess_bad_input_is_one_line(tmp_path, manifests, case):
    root = tmp_path / "data"
    if case in ("pixels without frames", "unfinished download"):
        assert run("download", "pendulum", "--root", root, "--limit", "1").exit_code == 0
    folder = tmp_path / "mine" / "train"
    folder.mkdir(parents=True)
    (folder / "broken.npz").write_text("no zip")
    args = {
        "no raw files": ([], "no raw files for 'pendulum'; run `seqvi download pendulum`"),
        "source is a file": (["--source", folder / "broken.npz"], "expected a folder of .npz episodes"),
        "source missing": (["--source", tmp_path / "nope"], "nope: no such file or folder (--source)"),
        "pixels without frames": (["--pixels"], "these episodes have no frames; run `seqvi download pendulum --pixels`"),
        "strict": (["--source", folder.parent, "--strict"], "train/broken.npz: not an .npz file (no zip signature)"),
        "nothing readable": (["--source", folder.parent], "no readable episodes (1 skipped; first: train/broken.npz"),
        "unfinished download": ([], "generation did not finish; run `seqvi download pendulum` again"),
    }[case]
    if case == "unfinished download":
        info = root / "raw" / "pendulum" / "EPISODES.json"
        info.write_text(json.dumps({**json.loads(info.read_text()), "complete": False}))
    one_line_error(run("preprocess", "pendulum", "--root", root, *args[0]), args[1])


@pytest.mark.parametrize("case", [
    "unknown env", "discrete actions", "repeat below 1", "split missing", "steps not a multiple",
    "longer than the time limit", "unknown key", "pixels for music", "pixels for a synthetic store",
])
def test_download_bad_input_is_one_line(tmp_path, manifests, case):
    fields, needle = {     # manifest fields (None: a repository manifest with --pixels) and the expected line
        "unknown env": ({"env": "Nope-v0"}, "environment 'Nope-v0': Environment `Nope` doesn't exist"),
        "discrete actions": ({"env": "CartPole-v1"}, "environment 'CartPole-v1': action space Discrete(2) is not a 1-D box"),
        "repeat below 1": ({"repeat": 0}, "'action_repeat' must be at least 1, got 0"),
        "split missing": ({"splits": "{train: 1, test: 1}"}, "'splits.valid' must be a positive number of episodes, got None"),
        "steps not a multiple": ({"steps": 9}, "'episode_steps' must be a positive multiple of 'action_repeat' (2), got 9"),
        "longer than the time limit": ({"steps": 400}, "'episode_steps' 400 is longer than Pendulum-v1's time limit of 200"),
        "unknown key": ({"extra": "envv: x\n"}, "malformed manifest"),
        "pixels for music": ("bach-chorales", "--pixels does not apply to 'bach-chorales' (download kind 'music21')"),
        "pixels for a synthetic store": ("lgssm", "--pixels does not apply to 'lgssm' (download kind 'synthetic')"),
    }[case]
    if isinstance(fields, str):
        one_line_error(run("download", fields, "--root", tmp_path / "data", "--pixels"), needle)
    else:
        one_line_error(run("download", manifest(manifests, **fields), "--root", tmp_path / "data"), needle)


def test_preprocess_pixels_for_a_synthetic_store_is_one_line(tmp_path, manifests):
    one_line_error(run("preprocess", "lgssm", "--root", tmp_path, "--pixels"),
                   "--pixels does not apply to 'lgssm' (adapter 'synthetic')")


def test_missing_gymnasium_names_the_extra(tmp_path, manifests, monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)      # `import gymnasium` now fails as if not installed
    one_line_error(run("download", "pendulum", "--root", tmp_path),
                   "interaction data needs gymnasium, which is not installed: pip install 'seqvi[control]'")


def test_preprocess_reports_skipped_files(tmp_path, manifests):
    source = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        (source / split).mkdir(parents=True)
        action, reward = rng.normal(size=(6, 1)), rng.normal(size=6)
        action[0], reward[0] = 0, 0
        np.savez(source / split / "good.npz", obs=rng.normal(size=(6, 3)), action=action, reward=reward)
    (source / "train" / "bad.npz").write_text("no")
    result = run("preprocess", "pendulum", "--root", tmp_path / "data", "--source", source)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable files" in result.output and "train/bad.npz: not an .npz file" in result.output
