"""``seqvi eval``: figures that do not depend on what else is asked, checkpoints named, tables labelled."""

import json

import pytest
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.config import recipe_from_dict
from seqvi.engine.train import train

from conftest import tiny_recipe

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def avf_run(tiny_store, tmp_path):
    raw = tiny_recipe(tiny_store, epochs=2)
    raw["inference"] = {"name": "avf", "iterations": 2, "hidden_size": 8}
    train(recipe_from_dict(raw), tmp_path / "run", device="cpu")
    return tmp_path / "run"


def test_the_free_energy_does_not_change_with_other_flags(avf_run):
    def figures(*flags):
        run("eval", "--checkpoint", avf_run, "--seed", "3", *flags)
        return json.loads((avf_run / "eval" / "test.json").read_text())

    plain = figures()
    bounds = figures("--bound", "all", "--particles", "3")
    refined = figures("--refine", "2")
    assert bounds["nats_per_step"] == plain["nats_per_step"]
    assert refined["nats_per_step"] == pytest.approx(plain["nats_per_step"], rel=1e-6)   # per-step loop: rounding
    again = figures("--bound", "iwae", "--particles", "3")
    assert again["columns"]["-IWAE(3)"] == bounds["columns"]["-IWAE(3)"]   # a bound's own stream too
    assert figures("--seed", "4")["nats_per_step"] != plain["nats_per_step"]


def test_each_checkpoint_keeps_its_results_and_is_named(avf_run):
    best = run("eval", "--checkpoint", avf_run)
    last = run("eval", "--checkpoint", avf_run / "checkpoints" / "last.pt")
    assert f"checkpoint: {avf_run / 'checkpoints' / 'best.pt'}" in best and "last.pt" in last
    files = {path.name for path in (avf_run / "eval").iterdir()}
    assert {"test-best.json", "test-last.json", "test.json", "test-best.png", "test-last.png"} <= files
    assert json.loads((avf_run / "eval" / "test-best.json").read_text())["checkpoint_name"] == "best"
    assert json.loads((avf_run / "eval" / "test.json").read_text())["checkpoint_name"] == "last"
    assert "trained with 2 iterations per step" in best
    caption = " ".join(best.split())   # the caption wraps
    assert "averaged over the same 4 noise draws per step" in caption
    assert "advances with a sample of its last iterate (5)" in caption and "differs slightly from the F column" in caption
    assert json.loads((avf_run / "eval" / "test-best.json").read_text())["iteration_curve_samples"] == 4


def test_the_table_keeps_counts_out_of_the_numeric_columns(avf_run):
    out = run("eval", "--checkpoint", avf_run)
    per_sequence = next(line for line in out.splitlines() if "per sequence" in line)
    assert "steps" not in per_sequence
    report = json.loads((avf_run / "eval" / "test.json").read_text())
    assert f"{report['num_sequences']} sequences, {report['num_steps']} steps" in out
