"""What a training shows and records: the epoch lines, metrics.jsonl's figures and their identities,
TensorBoard's event stream (read back, across a crash and a resume), and the progress lines that replace
Rich's bar when output is not a terminal (CliRunner's is not)."""

from __future__ import annotations

import json
import math
import re
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.config import recipe_from_dict
from seqvi.engine import checkpoint
from seqvi.engine.train import train

from conftest import make_corpus, tiny_recipe

runner = CliRunner()
PROGRESS = re.compile(r"^(?P<task>.+): (?P<pct>\d+)% \((?P<done>[\d,]+)/(?P<total>[\d,]+)\)(?P<rest>.*)$")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_metrics(run_dir):
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if "loss" in l], [l for l in lines if "valid_nats_per_step" in l]


def progress_lines(output: str, task: str) -> list[re.Match]:
    found = [PROGRESS.match(line) for line in output.splitlines()]
    return [m for m in found if m and m["task"] == task]


def assert_tenths(lines: list[re.Match], updates: int) -> None:
    """At most one line per tenth (however many updates), rising, the last one 100% with its time."""
    assert 1 <= len(lines) <= min(10, updates)
    pcts = [int(m["pct"]) for m in lines]
    assert pcts == sorted(set(pcts)) and pcts[-1] == 100
    tenths = [int(m["done"].replace(",", "")) * 10 // int(m["total"].replace(",", "")) for m in lines]
    assert len(set(tenths)) == len(tenths)
    assert "done in" in lines[-1]["rest"]
    assert all(re.search(r"\d+:\d\d elapsed, (about \d+:\d\d left|ETA unknown)", m["rest"]) for m in lines[:-1])


def test_epoch_lines_and_metrics_figures(tiny_store, tmp_path):
    raw = tiny_recipe(tiny_store, epochs=3, lr_decay=0.5, inference_lr=0.005)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    result = run("train", recipe, "--run-dir", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    steps, epochs = read_metrics(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]

    # one line per epoch, not a terminal or not
    lines = [l for l in result.output.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 3
    for line, e in zip(lines, epochs):
        assert line.startswith(f"epoch {e['epoch']}/3  train {e['train_loss']:.3f} (recon {e['train_recon']:.3f}, "
                               f"KL {e['train_kl']:.3f}, β {e['kl_weight']:.2f})  valid "
                               f"{e['valid_nats_per_step']:.4f} (KL {e['valid_kl_per_step']:.3f})")
        assert f"|grad| {e['grad_norm_mean']:.3g} mean, {e['grad_norm_max']:.3g} max" in line
        assert f"lr p {e['lr']:.3g} q {e['lr_q']:.3g}" in line and re.search(r"s, [\d,]+ steps/s", line)
        assert ("posterior collapse" in line) == (e["valid_kl_per_step"] < 0.01)

    # the epoch's figures are its step lines' (log_every 1), weighted by their real time steps
    for e in epochs:
        mine = [s for s in steps if s["epoch"] == e["epoch"]]
        n = sum(s["time_steps"] for s in mine)
        assert e["time_steps"] == n
        for key in ("loss", "recon", "kl"):
            assert e[f"train_{key}"] == pytest.approx(sum(s[key] * s["time_steps"] for s in mine) / n)
        assert e["grad_norm_mean"] == pytest.approx(sum(s["grad_norm"] for s in mine) / len(mine))
        assert e["grad_norm_max"] == max(s["grad_norm"] for s in mine)
        # the rates the epoch trained with (decay after it), p's and q's
        assert {(s["lr"], s["lr_q"]) for s in mine} == {(e["lr"], e["lr_q"])}
        assert e["lr"] == pytest.approx(0.01 * 0.5 ** (e["epoch"] - 1))
        assert e["lr_q"] == pytest.approx(0.005 * 0.5 ** (e["epoch"] - 1))
        assert e["valid_recon_per_step"] + e["valid_kl_per_step"] == pytest.approx(e["valid_nats_per_step"])
        assert e["steps_per_second"] == pytest.approx(n / (e["epoch_seconds"] - e["valid_seconds"]), rel=1e-3)
    for s in steps:
        assert s["loss"] == pytest.approx(s["recon"] + s["kl_weight"] * s["kl"])
        assert s["finite"] is True and s["grad_norm"] > 0

    # the last validation is what `seqvi eval` says of last.pt on the same split and seed
    checkpoint_file = run_dir / "checkpoints" / "last.pt"
    result = run("eval", "--checkpoint", checkpoint_file, "--split", "valid", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval" / "valid-last.json").read_text())
    assert report["recon_per_step"] == pytest.approx(epochs[-1]["valid_recon_per_step"])
    assert report["kl_per_step"] == pytest.approx(epochs[-1]["valid_kl_per_step"])


@pytest.fixture
def eager_progress(monkeypatch):
    """Progress lines from the first second: the tiny runs here end before Bar.QUIET."""
    from seqvi.report import Bar

    monkeypatch.setattr(Bar, "QUIET", 0.0)


def test_train_progress_in_a_log_is_a_line_every_tenth(tiny_store, tmp_path, eager_progress):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=8, log_every=5)))   # 3 steps an epoch: 24
    result = run("train", recipe, "--run-dir", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = progress_lines(result.output, "train")
    assert_tenths(lines, 24)
    assert all(re.search(r"  epoch \d+  loss [\d.]+  ", m["rest"]) for m in lines)
    assert sum(l.startswith("epoch ") for l in result.output.splitlines()) == 8


def test_the_collapse_note_on_the_epoch_line(tiny_store, tmp_path):
    from seqvi.report import epoch_line

    train(recipe_from_dict(tiny_recipe(tiny_store, epochs=1)), tmp_path / "run", device="cpu")
    _, (record,) = read_metrics(tmp_path / "run")
    assert record["valid_kl_per_step"] >= 0.01 and "collapse" not in epoch_line(record)
    collapsed = {**record, "valid_kl_per_step": 0.004}
    assert "posterior collapse: z unused (KL 0.0040 nats/step)" in epoch_line(collapsed, 10)
    iwae = {**record, "train_recon": None, "train_kl": None}     # a particle bound has no parts
    assert f"train {record['train_loss']:.3f}  valid" in epoch_line(iwae)


# --------------------------------------------------------------------------- TensorBoard

STEP_TAGS = {"loss": "train/loss", "recon": "train/recon", "kl": "train/kl", "kl_weight": "train/kl_weight",
             "lr": "train/lr", "lr_q": "train/lr_q", "grad_norm": "train/grad_norm", "time_steps": "train/time_steps"}
EPOCH_TAGS = {"epoch": "epoch/epoch", "train_loss": "epoch/train_loss", "train_recon": "epoch/train_recon",
              "train_kl": "epoch/train_kl", "kl_weight": "epoch/kl_weight", "lr": "epoch/lr", "lr_q": "epoch/lr_q",
              "grad_norm_mean": "epoch/grad_norm_mean", "grad_norm_max": "epoch/grad_norm_max",
              "time_steps": "epoch/time_steps", "steps_per_second": "epoch/steps_per_second",
              "epoch_seconds": "epoch/epoch_seconds", "valid_seconds": "valid/seconds",
              "valid_nats_per_step": "valid/nats_per_step", "valid_nats_per_sequence": "valid/nats_per_sequence",
              "valid_recon_per_step": "valid/recon_per_step", "valid_kl_per_step": "valid/kl_per_step"}


class Crash(Exception):
    pass


def test_tensorboard_events_match_metrics_across_a_crash_and_a_resume(tiny_store, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

    from seqvi.report import free_energy_figure

    def crash_at_5(kind, info):
        if kind == "step" and info["step"] == 5:
            raise Crash

    # 3 steps an epoch, a checkpoint every 3: the crash at step 5 leaves step 4 logged after the last checkpoint
    recipe = recipe_from_dict(tiny_recipe(tiny_store, epochs=3, tensorboard=True, checkpoint_every=3))
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        train(recipe, run_dir, device="cpu", events=crash_at_5, picture=free_energy_figure)
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 3
    first = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={SCALARS: 0})
    first.Reload()
    assert [e.step for e in first.Scalars("train/loss")] == [1, 2, 3, 4]     # step 4: on disk before the resume
    assert train(recipe, run_dir, device="cpu", picture=free_energy_figure).resumed_step == 3

    board = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={SCALARS: 0, IMAGES: 0})
    board.Reload()
    steps, epochs = read_metrics(run_dir)
    assert [s["step"] for s in steps] == list(range(1, 10)) and [e["step"] for e in epochs] == [3, 6, 9]
    expected = {}
    for lines, tags in ((steps, STEP_TAGS), (epochs, EPOCH_TAGS)):
        assert set(tags) <= set(lines[0])
        for key, tag in tags.items():
            expected[tag] = [(l["step"], float(l[key])) for l in lines]
    assert set(board.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        events = board.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in points], tag            # once each: no duplicates
        assert [e.value for e in events] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [e.wall_time for e in board.Scalars("valid/nats_per_step")] == pytest.approx([e["time"] for e in epochs])
    images = board.Images("valid/free_energy_per_step")
    assert [i.step for i in images] == [3, 6, 9] and all(i.width > 100 and i.height > 100 for i in images)

    # turning TensorBoard off (or on) changes what is recorded, not what a step computes: the run resumes
    off = recipe_from_dict(tiny_recipe(tiny_store, epochs=4, tensorboard=False, checkpoint_every=3))
    assert train(off, run_dir, device="cpu").resumed_step == 9
    assert len(list((run_dir / "tensorboard").iterdir())) == 2          # no new event file


def test_tensorboard_missing_is_one_line_before_training(tiny_store, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)        # what an environment without it gives: ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=1)))
    result = run("train", recipe, "train.tensorboard=true", "--run-dir", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: train.tensorboard: true needs the tensorboard package: pip install 'seqvi[tensorboard]' (or set "
        "train.tensorboard=false)"]
    assert not (tmp_path / "run").exists()                        # nothing started, nothing written
    result = run("sweep", recipe, "train.tensorboard=true,false", "--runs", tmp_path / "sweeps", "--device", "cpu")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "seqvi[tensorboard]" in result.output
    assert not (tmp_path / "sweeps").exists()                     # refused before the first point trains


# --------------------------------------------------------------------------- progress of other long steps


def test_progress_bar_prints_tenths_when_not_a_terminal(capsys, monkeypatch):
    from seqvi.report import Bar, progress_bar

    with progress_bar() as bar:
        assert bar.plain                                          # pytest's captured stdout is not a terminal
        quick = bar.add_task("quick", total=10, info="")
        for done in range(1, 11):
            bar.update(quick, completed=done)                     # over within Bar.QUIET: says nothing
        monkeypatch.setattr(Bar, "QUIET", 0.0)
        whole = bar.add_task("files", total=1000, info="")
        for done in range(1, 1001):
            bar.update(whole, completed=done)
        resumed = bar.add_task("resumed", total=200, completed=150, info="")
        for _ in range(50):
            bar.advance(resumed)
        unknown = bar.add_task("unknown", total=None, info="")
        bar.update(unknown, completed=5)
        late = bar.add_task("late", total=10, info="", since=time.monotonic() - 100)   # work began 100 s ago
        bar.update(late, completed=5)
    out = capsys.readouterr().out
    lines = progress_lines(out, "files")
    assert_tenths(lines, 1000)
    assert [int(m["pct"]) for m in lines] == list(range(10, 101, 10))
    assert [int(m["pct"]) for m in progress_lines(out, "resumed")] == [80, 90, 100]
    assert not progress_lines(out, "unknown") and "unknown" not in out and "quick" not in out
    assert [m["rest"] for m in progress_lines(out, "late")] == ["  1:40 elapsed, about 1:40 left"]


def test_eval_progress_in_a_log(tmp_path, manifests, eager_progress):
    from seqvi.data.prepare import preprocess

    root = tmp_path / "data"
    make_corpus(root / "raw" / "tiny", counts=(6, 2, 14))
    preprocess("tiny", str(root))
    raw = tiny_recipe(root, epochs=1)
    raw["inference"] = {"name": "avf", "iterations": 1, "hidden_size": 8}
    raw["data"]["eval_batch_size"] = 1                            # 14 updates per pass
    train(recipe_from_dict(raw), tmp_path / "run", device="cpu")
    result = run("eval", "--checkpoint", tmp_path / "run", "--bound", "iwae", "--particles", "2", "--refine", "1",
                 "--iterations", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_tenths(progress_lines(result.output, "test: free energy, -IWAE(2), gap (1 refinement step)"), 14)
    assert_tenths(progress_lines(result.output, "test: AVF curve, 2 iterations"), 14)
    every = [m for m in map(PROGRESS.match, result.output.splitlines()) if m]
    assert len(every) <= 20 and all(m["total"] == "14" for m in every)
    assert not math.isnan(json.loads((tmp_path / "run" / "eval" / "test.json").read_text())["nats_per_step"])


def test_music21_export_progress_in_a_log(tmp_path, eager_progress):
    pytest.importorskip("music21")
    result = run("download", "bach-chorales", "--root", tmp_path, "--limit", "12")
    assert result.exit_code == 0, result.output
    assert_tenths(progress_lines(result.output, "music21 corpus"), 12)
