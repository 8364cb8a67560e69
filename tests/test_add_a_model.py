"""Adding a model is one file: a model defined here, outside seqvi/, registered, trained with its direct
encoder and with AVF (kernels on), evaluated, and its kernels checked against the reference path.

README, "Add a model", walks through this file.
"""

from typing import NamedTuple

import pytest
import torch
from torch import nn

from seqvi.config import recipe_from_dict
from seqvi.engine.evaluate import evaluate_run
from seqvi.engine.run import load_run
from seqvi.engine.train import train
from seqvi.inference import INFERENCE
from seqvi.models import MODELS
from seqvi.models.base import GaussianHead, MLPEmission, SequentialModel, mlp
from seqvi.nn import reference
from seqvi.objectives import filter_sequence, training_loss

from conftest import tiny_recipe


class GRUState(NamedTuple):
    h: torch.Tensor   # (B, H) h_{t-1}


class GRUSSM(SequentialModel):
    """A small state-space model on a GRU (p only)::

        p(z_t | h_{t-1})       = N(MLP(h_{t-1}))                       prior
        p(x_t | z_t, h_{t-1})  = Bernoulli / N(MLP([z_t, h_{t-1}]))    emission (MLPEmission: z columns first)
        h_t                    = GRU(h_{t-1}, [x_t, z_t])              transition
    """

    rowwise = True   # prior and emission are row-wise in (z, state): the stacked pass may batch them over time

    def __init__(self, x_dim: int, likelihood: str = "bernoulli", hidden_size: int = 8, z_size: int = 3):
        super().__init__()
        self.x_dim, self.z_dim, self.feature_size = x_dim, z_size, x_dim + hidden_size
        self.prior_net = nn.Sequential(mlp([hidden_size, 8]), GaussianHead(8, z_size))       # p(z_t | h_{t-1})
        self.decoder = MLPEmission(z_size, hidden_size, [8], x_dim, likelihood)             # p(x_t | z_t, h_{t-1})
        self.cell = nn.GRUCell(x_dim + z_size, hidden_size)                                 # h_t = f(h_{t-1}, x_t, z_t)
        self.hidden_size = hidden_size

    def initial_state(self, batch_size):
        return GRUState(torch.zeros(batch_size, self.hidden_size, device=self.device))

    def prior(self, state):
        return self.prior_net(state.h)

    def emission(self, z, state):
        return self.decoder(z, state.h)

    def emission_grad(self, z, state, x, value=True):   # optional: AVF's gradient input by hand
        return self.decoder.recon_grad(z, state.h, x, value)

    def advance(self, state, x, z):
        return GRUState(self.cell(torch.cat([x, z], -1), state.h))

    def features(self, x, state):   # what the direct encoder q(z_t | x_t, h_{t-1}) sees
        return torch.cat([x, state.h], -1)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODELS, "gru_ssm", GRUSSM)


@pytest.mark.parametrize("inference", [{"name": "direct", "hidden_sizes": [8]},
                                       {"name": "avf", "iterations": 2, "hidden_size": 16}])
def test_a_model_defined_outside_seqvi_trains_and_evaluates(registered, tiny_store, tmp_path, inference):
    raw = tiny_recipe(tiny_store, epochs=2)
    raw["model"], raw["inference"] = {"name": "gru_ssm", "hidden_size": 8, "z_size": 3}, inference
    result = train(recipe_from_dict(raw), tmp_path / "run", device="cpu")
    assert result.epoch == 2 and result.best_valid < float("inf")
    out = evaluate_run(load_run(tmp_path / "run", "cpu"), "test", bound="all", particles=4)
    columns = out["payload"]["columns"]
    assert {"-ELBO", "-IWAE(4)", "-FIVO(4)"} <= set(columns)
    assert columns["-IWAE(4)"]["nats_per_step"] <= columns["-ELBO"]["nats_per_step"] + 0.5
    assert (out["curve"] is not None) == (inference["name"] == "avf")


@pytest.mark.parametrize("inf_name", ["direct", "avf"])
def test_its_kernels_agree_with_the_reference_path(inf_name):
    torch.manual_seed(0)
    model = GRUSSM(x_dim=5)
    q = INFERENCE[inf_name](model, **({"iterations": 2, "hidden_size": 16} if inf_name == "avf" else {}))
    x = torch.bernoulli(torch.full((3, 7, 5), 0.4))
    mask = torch.ones(3, 7)
    mask[2, 4:] = 0
    runs = []
    for reference_path in (False, True):
        with reference(reference_path):
            torch.manual_seed(1)
            terms = filter_sequence(model, q, x, mask)
            params = list(model.parameters()) + list(q.parameters())
            runs.append((terms.free_energy.detach(), torch.autograd.grad(training_loss(terms), params)))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    z = torch.randn(3, 3, requires_grad=True)
    state = model.initial_state(3)
    recon = -model.emission(z, state).log_prob(x[:, 0]).sum(1)
    by_hand = model.emission_grad(z.detach(), state, x[:, 0])
    torch.testing.assert_close(by_hand[1], torch.autograd.grad(recon.sum(), z)[0], rtol=1e-4, atol=1e-6)
