"""seqvi.testing's conformance check: every registered model and q passes it, and it catches what it names.

The loops run over the registries (seqvi's own and any installed plugin's) with each entry's own
TEST_CONFIG: no name lists, no guessed keyword names.
"""

import pytest
import torch
from torch import nn

from seqvi.models.vrnn import VRNN
from seqvi.nn import reference
from seqvi.testing import (build_model, check_inference, check_model, registered_inference, registered_models,
                           tiny_data)

MODELS = registered_models()
INFERENCE = registered_inference()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_passes_the_conformance_check(name):
    check_model(MODELS[name])


@pytest.mark.parametrize("name", sorted(INFERENCE))
def test_every_registered_inference_passes_the_conformance_check(name):
    check_inference(INFERENCE[name])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_declared_fast_hook_is_a_real_one(name):
    """``has("emission_grad")`` is true exactly when the model's emission_grad answers (not None) on plain
    inputs, and the reference switch turns it off; check_model then tests it against autograd."""
    model = build_model(MODELS[name])
    x, _ = tiny_data(model)
    state = model.condition(model.initial_state(x.shape[0]), None)
    z = model.prior(state).loc.detach()
    answers = model.emission_grad(z, state, x[:, 0]) is not None
    assert answers == model.has("emission_grad")
    with reference():
        assert model.emission_grad(z, state, x[:, 0]) is None


# ------------------------------------------------------------------ the check fails where it should


class MixingVRNN(VRNN):
    """A VRNN whose prior leaks across the batch (a batch mean): not batch-first."""

    def prior(self, state):
        p = super().prior(state)
        return torch.distributions.Normal(p.loc + p.loc.mean(0, keepdim=True), p.scale)


class WrongGradVRNN(VRNN):
    """Declares emission_grad but returns twice the gradient."""

    def emission_grad(self, z, state, x, value=True):
        out = super().emission_grad(z, state, x, value)
        return None if out is None else (out[0], 2 * out[1])


class ListState(VRNN):
    """Returns a list as its state (the contract asks for a tuple)."""

    def initial_state(self, batch_size):
        return list(super().initial_state(batch_size))


class Forgetful(VRNN):
    """Draws fresh weights for its emission on every load: resume cannot give the same numbers."""

    def load_state_dict(self, state, strict=True):
        out = super().load_state_dict(state, strict)
        for p in self.dec_net.parameters():
            nn.init.normal_(p)
        return out


def tiny(cls):
    return lambda: cls(x_dim=6, hidden_size=8, z_size=3, feature_size=8)


@pytest.mark.parametrize("cls,says", [(MixingVRNN, "not batch-first"), (WrongGradVRNN, "fast path's loss differs from the reference"),
                                      (ListState, "must return a tuple"), (Forgetful, "after save and load")])
def test_the_check_names_what_a_broken_model_gets_wrong(cls, says):
    with pytest.raises(AssertionError, match=says):
        check_model(tiny(cls))


def test_a_wrong_emission_gradient_by_hand_is_named():
    """Seen on its own too (the pass above finds it first through AVF's gradient input)."""
    from seqvi.testing import _emission_grad

    model = tiny(WrongGradVRNN)()
    with pytest.raises(AssertionError, match="dR/dz differs from autograd"):
        _emission_grad(model, tiny_data(model)[0])


def test_a_model_class_without_a_test_config_is_built_from_its_defaults():
    class Plain(VRNN):
        TEST_CONFIG = {}

    model = build_model(Plain)
    assert model.x_dim == 6 and model.z_dim == 32   # VRNN's default z_size


def test_data_of_the_wrong_frame_shape_is_refused():
    with pytest.raises(AssertionError, match="a frame of the data"):
        check_model(MODELS["vrnn"], data=torch.zeros(3, 5, 4))
