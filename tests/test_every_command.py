"""Every command on every kind of run gives a result or one line with exit code 2.

Kinds: MIDI (piano rolls), speech (the TIMIT adapter on generated SPHERE files),
video (KTH-shaped AVIs), and the synthetic linear-Gaussian corpus; each built
through the real adapters and trained for one epoch. States: ``finished``;
``empty`` (a run directory with its config but no checkpoint yet); ``preempted``
(a real SIGTERM delivered to this process mid-epoch: ``last.pt`` and the
``preempted`` marker, no ``best.pt``). Commands: train (resume), eval, sample,
predict, compare, runs, plan, collect. The table says which answers are errors and what they
must name; everything else must succeed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.config import recipe_from_dict
from seqvi.experiments.listing import run_status
from seqvi.engine.train import Preempted, train

from conftest import REPO, TINY_MANIFEST, make_corpus
from test_kth import H, W, write_avi
from test_timit import make_timit

runner = CliRunner()
KINDS = ("midi", "speech", "video", "lgssm")
STATES = ("finished", "empty", "preempted")
COMMANDS = {
    "train": lambda k: ["train", k.recipe, "--run-dir", k.run, "--device", "cpu"],
    "eval": lambda k: ["eval", "--checkpoint", k.run, "--device", "cpu"],
    "sample": lambda k: ["sample", "--checkpoint", k.run, "--num", 2, "--length", 4, "--device", "cpu"],
    "predict": lambda k: ["predict", "--checkpoint", k.run, "--context", 2, "--horizon", 2, "--samples", 2,
                          "--device", "cpu"],
    "compare": lambda k: ["compare", k.run, "--plot", k.run.parent / "compare.png"],
    "runs": lambda k: ["runs", k.run],
    "plan": lambda k: ["plan", "--checkpoint", k.run, "--episodes", 1, "--candidates", 8, "--top-k", 2,
                       "--device", "cpu"],
    "collect": lambda k: ["collect", "--checkpoint", k.run, "--episodes", 1, "--candidates", 8, "--top-k", 2,
                          "--device", "cpu"],
}
NOT_VIDEO = "predict scores video frames (C, H, W)"
NO_CHECKPOINT = "run directory has no checkpoints/best.pt or last.pt"
NO_ACTIONS = "planning needs a run trained on interaction data (actions and rewards)"   # tests/test_world_models.py: a control run
# (kind or "*", state or "*", command) -> needle of the one error line; anything not listed must succeed.
ERRORS = {("midi", "*", "predict"): NOT_VIDEO, ("speech", "*", "predict"): NOT_VIDEO,
          ("lgssm", "*", "predict"): NOT_VIDEO, ("*", "empty", "eval"): NO_CHECKPOINT,
          ("*", "empty", "sample"): NO_CHECKPOINT, ("*", "empty", "predict"): NO_CHECKPOINT,
          ("*", "empty", "plan"): NO_CHECKPOINT, ("*", "empty", "collect"): NO_CHECKPOINT,
          **{(kind, "*", command): NO_ACTIONS for kind in KINDS for command in ("plan", "collect")}}


def expected_error(kind: str, state: str, command: str) -> str | None:
    for key in ((kind, state, command), ("*", state, command), (kind, "*", command)):   # no checkpoint comes first
        if key in ERRORS:
            return ERRORS[key]
    return None


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


# --------------------------------------------------------------------------- corpora and recipes


def build_midi(root, base):
    make_corpus(root / "raw" / "tiny")
    ok("preprocess", "tiny", "--root", root)
    return {"data": {"dataset": "tiny", "batch_size": 3, "crop_length": 6, "eval_batch_size": 4},
            "model": {"name": "vrnn", "hidden_size": 8, "z_size": 2, "feature_size": 8},
            "inference": {"name": "direct", "hidden_sizes": [8]}}


def build_speech(root, base):
    make_timit(base / "timit_src", train_speakers=4, test_speakers=1)
    ok("preprocess", "timit", "--source", base / "timit_src", "--root", root)
    return {"data": {"dataset": "timit", "batch_size": 6, "crop_length": 4, "eval_batch_size": 8},
            "model": {"name": "vrnn", "hidden_size": 8, "z_size": 2, "feature_size": 8},
            "inference": {"name": "direct", "hidden_sizes": [8]}}


def build_video(root, base):
    src, lines = base / "kth_src", []
    rng = np.random.default_rng(0)
    for person, action in [(11, "walking"), (12, "boxing"), (19, "walking"), (22, "boxing"), (2, "walking")]:
        frames = np.clip(rng.normal(128, 40, (1, H, W)) + np.arange(12)[:, None, None] * 3, 0, 255).astype(np.uint8)
        write_avi(src / action / f"person{person:02d}_{action}_d1_uncomp.avi", frames)
        lines.append(f"person{person:02d}_{action}_d1\t\tframes\t1-6, 7-12")
    (src / "00sequences.txt").write_text("\n".join(lines) + "\n")
    ok("preprocess", "kth", "--source", src, "--root", root)
    return {"data": {"dataset": "kth", "batch_size": 2, "crop_length": 5, "eval_batch_size": 4},
            "model": {"name": "svg", "backbone": "dcgan", "channels": 2, "g_dim": 4, "z_size": 2, "rnn_size": 4,
                      "predictor_layers": 1, "skip_frames": 2},
            "inference": {"name": "svg_posterior", "rnn_size": 4}}


def build_lgssm(root, base):
    ok("download", "lgssm", "--root", root, "--limit", 12)
    ok("preprocess", "lgssm", "--root", root)
    return {"data": {"dataset": "lgssm", "batch_size": 6, "crop_length": 0, "eval_batch_size": 12},
            "model": {"name": "lgssm", "z_size": 2, "system": "learned"},
            "inference": {"name": "direct", "hidden_sizes": [8]}}


BUILDERS = {"midi": build_midi, "speech": build_speech, "video": build_video, "lgssm": build_lgssm}


def preempt_at_first_step(kind, info):
    """A real SIGTERM to this process after the first step: the loop's handler checkpoints and stops."""
    if kind == "step" and info["step"] == 1:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """kind -> {state: run directory}, plus each kind's recipe file."""
    base = tmp_path_factory.mktemp("kinds")
    manifests = base / "manifests"
    manifests.mkdir()
    for path in (REPO / "seqvi" / "data" / "manifests").glob("*.yaml"):
        shutil.copy(path, manifests)
    (manifests / "tiny.yaml").write_text(TINY_MANIFEST)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQVI_MANIFESTS", str(manifests))
        root = base / "data"
        for kind, build in BUILDERS.items():
            raw = build(root, base)
            raw["data"]["root"] = str(root)
            raw["train"] = {"epochs": 1, "lr": 0.003, "log_every": 1}
            recipe = base / f"{kind}.yaml"
            recipe.write_text(yaml.safe_dump(raw))
            runs = base / "runs" / kind
            train(recipe_from_dict(raw), runs / "finished", device="cpu")
            with pytest.raises(Preempted, match=r"^SIGTERM at step 1 \(epoch 1\): checkpoint \S+last\.pt written; "
                                                r"rerun the same command to resume$"):
                train(recipe_from_dict(raw), runs / "preempted", device="cpu", events=preempt_at_first_step)
            (runs / "empty").mkdir()
            shutil.copy(runs / "finished" / "config.yaml", runs / "empty" / "config.yaml")
            out[kind] = {"recipe": recipe, **{s: runs / s for s in STATES}}
        yield manifests, out


def test_the_states_are_what_they_say(kinds):
    _, built = kinds
    for kind in KINDS:
        for state in STATES:
            assert run_status(built[kind][state]).status == state, (kind, state)
        assert not (built[kind]["preempted"] / "checkpoints" / "best.pt").exists()
        assert (built[kind]["preempted"] / "checkpoints" / "last.pt").exists()


class Case:
    pass


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_on_every_kind_of_run(kinds, tmp_path, monkeypatch, kind, state, command):
    manifests, built = kinds
    monkeypatch.setenv("SEQVI_MANIFESTS", str(manifests))
    case = Case()
    case.recipe = built[kind]["recipe"]
    case.run = tmp_path / "runs" / state
    shutil.copytree(built[kind][state], case.run)
    result = run(*COMMANDS[command](case))
    needle = expected_error(kind, state, command)
    assert "Traceback" not in result.output
    if needle is None:
        assert result.exit_code == 0, result.output
        check_result(kind, state, command, case, result.output)
    else:
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def check_result(kind: str, state: str, command: str, case, output: str) -> None:
    """What a successful answer must have left or said."""
    run_dir = case.run
    if command == "train":
        assert run_status(run_dir).status == "finished"
        expect = {"finished": "already trained to epoch 1", "empty": "trained to epoch 1",
                  "preempted": f"resuming {run_dir} at step 1"}[state]
        assert expect in output
        assert not (run_dir / "preempted").exists()
    elif command == "eval":
        report = json.loads((run_dir / "eval" / "test.json").read_text())
        assert np.isfinite(report["nats_per_step"]) and report["num_sequences"] > 0
    elif command == "sample":
        written = [p for p in (run_dir / "samples").iterdir() if not p.name.startswith(".")]
        assert len(written) >= 2 and all(p.stat().st_size > 0 for p in written)
        umask = os.umask(0)
        os.umask(umask)
        for path in written:
            if path.suffix in (".mid", ".wav"):         # written atomically: the umask's mode, not 0600
                assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    elif command == "predict":
        report = json.loads((run_dir / "eval" / "predict_test.json").read_text())
        assert report["num_sequences"] > 0 and report["horizons"] == [2]
    elif command == "compare":
        assert "1 runs, 1 rows" in output and (run_dir.parent / "compare.png").exists()
    elif command == "runs":
        assert "1 runs" in output and f" {state} " in output
