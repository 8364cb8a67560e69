"""Re-running train on a run directory resumes it exactly; different configs are refused."""

import json

import pytest
import torch

from seqvi.config import recipe_from_dict
from seqvi.engine import checkpoint
from seqvi.engine.tally import WALL_CLOCK_KEYS
from seqvi.engine.train import train
from seqvi.errors import SeqviError
from seqvi.nn import reference

from conftest import tiny_recipe


def params(run_dir):
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    return {**state["model"], **{f"q.{k}": v for k, v in state["inference"].items()}}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metrics(run_dir):
    """metrics.jsonl without its wall-clock figures: everything else is a function of the recipe."""
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(WALL_CLOCK_KEYS & set(l) for l in lines)     # they are there, and left out here only
    return [{k: v for k, v in l.items() if k not in WALL_CLOCK_KEYS} for l in lines]


class Crash(Exception):
    pass


def crash_at(step):
    def events(kind, info):
        if kind == "step" and info["step"] == step:
            raise Crash
    return events


def test_resume_between_epochs_is_exact(tiny_store, tmp_path):
    full = recipe_from_dict(tiny_recipe(tiny_store, epochs=3))
    train(full, tmp_path / "a", device="cpu")
    train(recipe_from_dict(tiny_recipe(tiny_store, epochs=1)), tmp_path / "b", device="cpu")
    result = train(full, tmp_path / "b", device="cpu")  # extending epochs resumes
    assert result.resumed_step is not None and result.epoch == 3
    assert_same(params(tmp_path / "a"), params(tmp_path / "b"))
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")


def test_crash_mid_epoch_resumes_from_step_checkpoint(tiny_store, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tiny_store, epochs=2, checkpoint_every=1))
    train(recipe, tmp_path / "a", device="cpu")
    with pytest.raises(Crash):
        train(recipe, tmp_path / "b", device="cpu", events=crash_at(4))
    assert checkpoint.load(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 3
    result = train(recipe, tmp_path / "b", device="cpu")
    assert result.resumed_step == 3
    assert_same(params(tmp_path / "a"), params(tmp_path / "b"))
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 2  # +2: the two epoch lines
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")


def test_an_epoch_interrupted_mid_way_reports_its_figures_whole(tiny_store, tmp_path):
    """The epoch line of an epoch stopped after its first batch and resumed (loss, its recon and KL parts,
    gradient norms, time steps) is the uninterrupted one's: the running tally is in the checkpoint."""
    recipe = recipe_from_dict(tiny_recipe(tiny_store, epochs=2, checkpoint_every=1, log_every=2))
    train(recipe, tmp_path / "a", device="cpu")
    with pytest.raises(Crash):
        train(recipe, tmp_path / "b", device="cpu", events=crash_at(5))
    state = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["batch"]) == (4, 1, 1)   # mid-way through epoch 2
    assert train(recipe, tmp_path / "b", device="cpu").resumed_step == 4
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")


def test_different_config_refused_unless_force(tiny_store, tmp_path):
    train(recipe_from_dict(tiny_recipe(tiny_store, epochs=1)), tmp_path / "r", device="cpu")
    other = tiny_recipe(tiny_store, epochs=1, lr=0.5)
    with pytest.raises(SeqviError, match=r"different config \(train.lr: 0.01 -> 0.5\).*--force"):
        train(recipe_from_dict(other), tmp_path / "r", device="cpu")
    result = train(recipe_from_dict(other), tmp_path / "r", device="cpu", force=True)
    assert result.replaced == ["train.lr: 0.01 -> 0.5"] and result.resumed_step is None


@pytest.mark.parametrize("reference_path", [False, True])
@pytest.mark.parametrize("model,inference", [
    ({"name": "vrnn", "hidden_size": 8, "z_size": 3, "feature_size": 8},
     {"name": "avf", "iterations": 2, "hidden_size": 8}),                        # AVF's taped chain
    ({"name": "dmm", "z_size": 3, "emission_size": 6, "transition_size": 6},
     {"name": "combiner", "rnn_size": 6}),                                        # the combiner's whole path
    ({"name": "srnn", "hidden_size": 8, "z_size": 3, "dense_size": 6},
     {"name": "avf", "iterations": 1, "hidden_size": 8}),                        # the LSTM kernel, AVF(1)
])
def test_kernels_and_reference_path_resume_exactly(tiny_store, tmp_path, model, inference, reference_path):
    """Both paths (seqvi.nn's kernels, and the reference forced) are deterministic: a crash mid-epoch
    resumes bitwise; and the two paths train to the same parameters up to float rounding."""
    raw = tiny_recipe(tiny_store, epochs=2, checkpoint_every=1)
    raw["model"], raw["inference"] = model, inference
    recipe = recipe_from_dict(raw)
    with reference(reference_path):
        train(recipe, tmp_path / "a", device="cpu")
        with pytest.raises(Crash):
            train(recipe, tmp_path / "b", device="cpu", events=crash_at(4))
        assert train(recipe, tmp_path / "b", device="cpu").resumed_step == 3
    assert_same(params(tmp_path / "a"), params(tmp_path / "b"))
    with reference(not reference_path):
        train(recipe, tmp_path / "c", device="cpu")
    other = params(tmp_path / "c")
    for key, value in params(tmp_path / "a").items():
        torch.testing.assert_close(other[key], value, rtol=1e-3, atol=1e-4)


def test_avf_levers_resume_exactly(tiny_store, tmp_path):
    """AVF with every option (observation and error inputs, annealing, an encoder start), free bits, and
    q's own learning rate and clipping: a crash mid-epoch resumes bitwise."""
    raw = tiny_recipe(tiny_store, epochs=2, checkpoint_every=1, inference_lr=0.003, inference_clip_grad=0.5)
    raw["inference"] = {"name": "avf", "iterations": 2, "hidden_size": 8, "init": "encoder",
                        "inputs": ["gradients", "parameters", "observation", "errors"], "anneal": True}
    raw["objective"] = {"kl_anneal_epochs": 2, "free_bits": 0.2}
    recipe = recipe_from_dict(raw)
    train(recipe, tmp_path / "a", device="cpu")
    with pytest.raises(Crash):
        train(recipe, tmp_path / "b", device="cpu", events=crash_at(4))
    assert train(recipe, tmp_path / "b", device="cpu").resumed_step == 3
    assert_same(params(tmp_path / "a"), params(tmp_path / "b"))
