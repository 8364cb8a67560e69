"""The model and inference contracts, for every registry entry; free-energy identities."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from seqvi.errors import RecipeError
from seqvi.free_energy import gaussian_kl
from seqvi.objectives import filter_sequence, kl_weight, training_loss
from seqvi.testing import build_model, registered_inference, registered_models, tiny_data

MODELS, INFERENCE = registered_models(), registered_inference()

B, T, D = 3, 5, 6   # D: the tiny VRNN's x_dim (its TEST_CONFIG)


def small(name):
    """The registry entry's own tiny configuration (TEST_CONFIG)."""
    return build_model(MODELS[name])


# The contract itself, for every registered model: tests/test_conformance.py (seqvi.testing.check_model).


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("inf_name", sorted(INFERENCE))
def test_every_inference_trains_every_model(model_name, inf_name):
    torch.manual_seed(0)
    model = small(model_name)
    try:
        inference = INFERENCE[inf_name](model, **INFERENCE[inf_name].TEST_CONFIG)
    except RecipeError as err:   # e.g. SRNN's smoothing q on another model; refusals tested in test_srnn_dmm.py
        pytest.skip(str(err))
    x, mask = tiny_data(model)   # sequence 1 ends after 3 steps
    terms = filter_sequence(model, inference, x, mask)
    assert terms.recon.shape == mask.shape and terms.kl.shape == mask.shape
    assert torch.all(terms.recon[1, 3:] == 0) and torch.all(terms.kl >= 0)
    loss = training_loss(terms)
    loss.backward()
    grads = [p.grad for p in list(model.parameters()) + list(inference.parameters())]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= len(grads) // 2


def test_gaussian_kl_matches_torch():
    torch.manual_seed(0)
    q = Normal(torch.randn(4, 6), torch.rand(4, 6) + 0.1)
    p = Normal(torch.randn(4, 6), torch.rand(4, 6) + 0.1)
    torch.testing.assert_close(gaussian_kl(q, p), kl_divergence(q, p).sum(-1))
    assert torch.allclose(gaussian_kl(q, q), torch.zeros(4), atol=1e-6)


def test_padding_does_not_change_real_steps():
    """A sequence's terms are the same alone or padded in a batch with a longer one."""
    torch.manual_seed(0)
    model = small("vrnn")
    inference = INFERENCE["direct"](model)
    x = torch.bernoulli(torch.full((2, T, D), 0.4))
    mask = torch.ones(2, T)
    mask[1, 2:] = 0
    torch.manual_seed(1)
    both = filter_sequence(model, inference, x, mask)
    torch.manual_seed(1)
    alone = filter_sequence(model, inference, x, torch.ones(2, T))
    torch.testing.assert_close(both.recon[1, :2], alone.recon[1, :2])
    torch.testing.assert_close(both.recon[0], alone.recon[0])
    assert float(training_loss(both)) * float(mask.sum()) == pytest.approx(float((both.recon + both.kl).sum()), rel=1e-5)


def test_kl_annealing_schedule():
    assert kl_weight(0, 0, 10, 0) == 1.0
    assert kl_weight(0, 0, 10, 4) == 0.0
    assert kl_weight(1, 5, 10, 4) == pytest.approx(1.5 / 4)
    assert kl_weight(9, 0, 10, 4) == 1.0
    assert kl_weight(0, 0, 10, 2, start=0.5) == 0.5
