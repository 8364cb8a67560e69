"""Stopping a training keeps the work: Ctrl-C (a real SIGINT to a real process), a second Ctrl-C,
the time budget, patience, and what ``seqvi runs`` says about each run afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.config import recipe_from_dict
from seqvi.engine import checkpoint
from seqvi.engine.lifecycle import HISTORY, LOCK
from seqvi.experiments.listing import run_status
from seqvi.engine.train import train

from conftest import REPO, make_corpus, tiny_recipe

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def seqvi_process(*args) -> subprocess.Popen:
    env = dict(os.environ, SEQVI_THREADS="1", PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "seqvi", *[str(a) for a in args]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def logged_steps(run_dir: Path) -> int:
    try:
        return sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    except FileNotFoundError:
        return 0


def stops(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / HISTORY).read_text().splitlines()
            if json.loads(line)["event"] == "stop"]


def test_ctrl_c_finishes_the_step_checkpoints_says_how_to_resume_and_exits_130(tiny_store, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=100000)))
    run_dir = tmp_path / "run"
    process = seqvi_process("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    wait_for(lambda: logged_steps(run_dir) >= 5, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.match(r"stopped: Ctrl-C (at step \d+ \(epoch \d+\)|after epoch \d+ \(step \d+\)): checkpoint ",
                    lines[0]), lines[0]
    assert "rerun the same command to resume" in lines[0] and "stopped by" not in lines[0]
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert re.search(rf"\bstep {state['step']}\b", lines[0]) and state["step"] >= 5
    assert not (run_dir / "preempted").exists() and not (run_dir / LOCK).exists()   # nothing to requeue

    status = run_status(run_dir)
    assert status.status == "stopped" and "Ctrl-C" in status.why and f"step {state['step']}" in status.why
    result = run("runs", tmp_path)
    assert result.exit_code == 0 and "stopped" in result.output and "Ctrl-C" in result.output

    epochs = state["epoch"] + 1                               # train.epochs may change on resume
    result = run("train", recipe, f"train.epochs={epochs}", "--run-dir", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"resuming {run_dir} at step {state['step']}" in result.output
    assert run_status(run_dir).status == "finished"
    assert [s["reason"] for s in stops(run_dir)] == ["interrupt", "finished"]


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_last_checkpoint(tmp_path, manifests):
    from seqvi.data.prepare import preprocess

    root = tmp_path / "data"
    make_corpus(root / "raw" / "tiny", counts=(6, 250, 2))       # a long validation to press Ctrl-C in
    preprocess("tiny", str(root))
    raw = tiny_recipe(root, epochs=1000)
    raw["data"]["eval_batch_size"] = 1
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    process = seqvi_process("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    wait_for(lambda: logged_steps(run_dir) >= 2, process)        # 2 batches per epoch: validation has begun
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert process.poll() is None                               # still validating: the first Ctrl-C waits for it
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["aborted: Ctrl-C (a run keeps its last checkpoint; rerun to resume)"]
    # Order, not wall time: the abort came before the validation finished (no valid record for epoch 1)
    # and so before the epoch's checkpoint.
    assert not any("valid_nats_per_step" in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert not (run_dir / LOCK).exists() and stops(run_dir)[-1]["reason"] == "abort"
    assert run_status(run_dir).status in ("empty", "stopped")


def test_time_budget_stops_like_a_signal_but_exits_0_and_a_rerun_continues(tiny_store, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=100000, max_minutes=0.02)))
    run_dir = tmp_path / "run"
    result = run("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "time budget of 0.02 min used at epoch" in result.output and "rerun the same command" in result.output
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] >= 1 and f"(step {state['step']})" in result.output
    status = run_status(run_dir)
    assert status.status == "stopped" and "time budget" in status.why
    assert not (run_dir / "preempted").exists()

    again = train(recipe_from_dict(tiny_recipe(tiny_store, epochs=100000, max_minutes=0.005)), run_dir,
                  device="cpu")                                 # the budget may change: it is per call
    assert again.resumed_step == state["step"] and again.stop == "budget" and again.step > state["step"]
    assert [s["reason"] for s in stops(run_dir)] == ["budget", "budget"]


def test_patience_stops_after_n_epochs_without_improvement_and_a_rerun_says_so(tiny_store, tmp_path):
    raw = tiny_recipe(tiny_store, epochs=20, lr=0.0, patience=2)  # lr 0: the validation never gets lower
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    result = run("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "stopped early at epoch 3" in result.output and "2 epochs without a better valid" in result.output
    status = run_status(run_dir)
    assert status.status == "finished" and "early stop" in status.why and status.epoch == 3
    assert stops(run_dir)[-1]["reason"] == "patience"

    again = run("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    assert again.exit_code == 0 and "already stopped early at epoch 3" in again.output
    assert "raise train.patience" in again.output
    more = run("train", recipe, "train.patience=3", "--run-dir", run_dir, "--device", "cpu")
    assert more.exit_code == 0 and "stopped early at epoch 4" in more.output


def test_runs_lists_every_status(tiny_store, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tiny_store, epochs=1))
    base = tmp_path / "sweep"
    train(recipe, base / "finished", device="cpu")
    for name in ("killed", "running", "preempted"):
        train(recipe, base / name, device="cpu")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (base / "running" / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (base / "killed" / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
        (base / "preempted" / "preempted").write_text("3\n")
        (base / "empty").mkdir()
        (base / "empty" / "config.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
        (base / "not_a_run").mkdir()
        expect = {"finished": "finished", "killed": "failed", "running": "running", "preempted": "preempted",
                  "empty": "empty"}
        for name, status in expect.items():
            assert run_status(base / name).status == status, name
        assert "killed" in run_status(base / "killed").why
        assert run_status(base / "finished").epoch == 1 and run_status(base / "finished").epochs == 1
        result = run("runs", base)
        assert result.exit_code == 0, result.output
        assert "5 runs" in result.output and "not_a_run" not in result.output
        for status in expect.values():
            assert status in result.output
        assert f"pid {sleeper.pid}" in result.output
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run("runs", tmp_path / "nowhere").exit_code == 2


def test_a_run_being_trained_is_not_trained_twice(tiny_store, tmp_path):
    run_dir = tmp_path / "run"
    recipe = recipe_from_dict(tiny_recipe(tiny_store, epochs=1))
    train(recipe, run_dir, device="cpu")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        result = run("train", tmp_path / "nothing.yaml", "--run-dir", run_dir)   # the recipe is checked first
        assert result.exit_code == 2
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=2)))
        result = run("train", tmp_path / "r.yaml", "--run-dir", run_dir, "--device", "cpu")
        assert result.exit_code == 2 and f"already being trained by process {sleeper.pid}" in result.output
        assert (run_dir / LOCK).exists()                      # the other process's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    result = run("train", tmp_path / "r.yaml", "--run-dir", run_dir, "--device", "cpu")   # its owner is gone
    assert result.exit_code == 0, result.output and not (run_dir / LOCK).exists()
