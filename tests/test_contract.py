"""The step order's optional hooks (``observe``, ``transit``; seqvi.models.base): STORN runs its transition
once per step in every loop, VRNN's observed phi_x gives the numbers of the old cached step, and
VRNN's and SRNN's parameters keep their names (old checkpoints load)."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from seqvi.engine.sample import sample_sequences
from seqvi.free_energy import gaussian_kl, log_likelihood
from seqvi.inference import INFERENCE
from seqvi.models import MODELS
from seqvi.nn import reference
from seqvi.objectives import BOUNDS, bound, filter_sequence, training_loss

B, T, D = 3, 6, 5


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((B, T, D), 0.3), generator=g)
    mask = torch.ones(B, T)
    mask[2, 4:] = 0
    return x, mask


def storn(seed=0):
    torch.manual_seed(seed)
    return MODELS["storn"](x_dim=D, hidden_size=7, z_size=3, dense_size=6)


class Counter:
    """Counts the forward calls of a module (and the rows each saw)."""

    def __init__(self, module: nn.Module):
        self.rows: list[int] = []
        module.register_forward_hook(lambda m, args, out: self.rows.append(args[0].shape[0]))


# --------------------------------------------------------------------------- STORN: transit once per step


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("inf_name", ["recurrent", "direct"])
def test_storn_runs_its_transition_once_per_step_when_filtering(kernels, inf_name):
    model = storn()
    inference = INFERENCE[inf_name](model)
    calls = Counter(model.rnn)
    x, mask = data()
    with reference(not kernels):
        terms = filter_sequence(model, inference, x, mask)
        training_loss(terms).backward()
    assert calls.rows == [B] * T
    assert model.rnn.weight_hh.grad is not None and bool(model.rnn.weight_hh.grad.abs().sum() > 0)


@pytest.mark.parametrize("which", ["elbo", "iwae", "fivo"])
def test_storn_runs_its_transition_once_per_step_in_every_bound(which):
    model = storn()
    inference = INFERENCE["recurrent"](model)
    calls = Counter(model.rnn)
    x, mask = data()
    with torch.no_grad():
        bound(model, inference, x, mask, BOUNDS[which], particles=4)
    K = BOUNDS[which].num_particles(4)
    assert calls.rows == [K * B] * T


def test_storn_runs_its_transition_once_per_step_when_sampling():
    model = storn()
    inference = INFERENCE["recurrent"](model)
    calls = Counter(model.rnn)
    x, _ = data()
    out = sample_sequences(model, inference, 2, 7, prime=x[:2, :3])
    assert out.shape == (2, 7, D)
    assert calls.rows == [2] * 7
    assert torch.equal(out[:, :3], x[:2, :3])


def test_storn_free_energy_is_that_of_its_equations():
    """F from the loop equals F written out from the paper's equations: z_t ~ q, h_t = GRU([x_{t-1}, z_t],
    h_{t-1}), -log p(x_t | h_t) + KL(q || N(0, I)); the emission reads the state AFTER z_t's transition."""
    model = storn()
    inference = INFERENCE["recurrent"](model)
    x, mask = data()
    torch.manual_seed(7)
    terms = filter_sequence(model, inference, x, mask)
    torch.manual_seed(7)
    h, x_prev, q_state = torch.zeros(B, 7), torch.zeros(B, D), inference.initial_state(B)
    for t in range(T):
        q = inference.posterior(model, x[:, t], None, None, q_state)
        q_state = q.q_state
        z = q.q_z.loc + q.q_z.scale * torch.randn_like(q.q_z.loc)
        h = model.rnn(torch.cat([x_prev, z], -1), h)
        recon = -log_likelihood(model.dec_net(h), x[:, t])
        kl = gaussian_kl(q.q_z, Normal(torch.zeros_like(z), torch.ones_like(z)))
        torch.testing.assert_close(terms.recon[:, t], recon * mask[:, t])
        torch.testing.assert_close(terms.kl[:, t], kl * mask[:, t])
        x_prev = x[:, t]


def test_storn_trains_with_avf_through_its_transition():
    """AVF differentiates the emission through ``transit`` (autograd): its iterates move q off the prior,
    and the model's transition weights get a gradient."""
    model = storn()
    avf = INFERENCE["avf"](model, hidden_size=8, iterations=2)
    x, mask = data()
    terms = filter_sequence(model, avf, x, mask)
    training_loss(terms).backward()
    assert bool(terms.kl.sum() > 0)
    assert bool(model.rnn.weight_ih.grad.abs().sum() > 0)


# --------------------------------------------------------------------------- VRNN: observe, no cache


def old_vrnn_pass(model, inference, x, mask, seed):
    """The VRNN step as it was before ``observe`` (phi_x computed for the encoder and again in advance,
    the emission on the state before the step), written out with the model's own modules and
    nn.LSTMCell: F's terms (B, T)."""
    torch.manual_seed(seed)
    h = c = torch.zeros(x.shape[0], model.hidden_size)
    recon, kl = [], []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        p_z = model.prior_net(h)
        q_z = inference.net(torch.cat([model.phi_x(x_t), h], -1))
        z = q_z.loc + q_z.scale * torch.randn_like(q_z.loc)
        recon.append(-log_likelihood(model.dec_net(model.phi_z(z), h), x_t))
        kl.append(gaussian_kl(q_z, p_z))
        h, c = model.rnn(torch.cat([model.phi_x(x_t), model.phi_z(z)], -1), (h, c))
    return torch.stack(recon, 1) * mask, torch.stack(kl, 1) * mask


@pytest.mark.parametrize("kernels", [True, False])
def test_vrnn_observed_step_gives_the_old_steps_free_energy_and_gradients(kernels):
    torch.manual_seed(0)
    model = MODELS["vrnn"](x_dim=D, hidden_size=8, z_size=3, feature_size=6)
    inference = INFERENCE["direct"](model, hidden_sizes=[5])
    x, mask = data()
    params = list(model.parameters()) + list(inference.parameters())
    with reference(not kernels):
        torch.manual_seed(3)
        terms = filter_sequence(model, inference, x, mask)
        new = torch.autograd.grad(training_loss(terms, kl_weight=0.6), params)
    recon, kl = old_vrnn_pass(model, inference, x, mask, seed=3)
    old = torch.autograd.grad(((recon + 0.6 * kl).sum()) / mask.sum(), params)
    torch.testing.assert_close(terms.recon, recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-5, atol=1e-5)
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_vrnn_holds_no_per_step_cache():
    """The model object is the same before and after a filtering pass (nothing cached on it), so copies
    and pickles need no special handling."""
    torch.manual_seed(0)
    model = MODELS["vrnn"](x_dim=D, hidden_size=8, z_size=3, feature_size=6)
    before = set(vars(model))
    x, mask = data()
    filter_sequence(model, INFERENCE["direct"](model), x, mask)
    assert set(vars(model)) == before
    assert not hasattr(type(model), "__getstate__") or type(model).__getstate__ is nn.Module.__getstate__
    clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    assert clone.state_dict().keys() == model.state_dict().keys()


# The parameter names of VRNN and SRNN before the hooks (old checkpoints' state_dict keys).
OLD_KEYS = {
    "vrnn": ["phi_x.0.weight", "phi_x.0.bias", "phi_z.0.weight", "phi_z.0.bias", "prior_net.0.0.weight",
             "prior_net.0.0.bias", "prior_net.1.loc.weight", "prior_net.1.loc.bias", "prior_net.1.scale.weight",
             "prior_net.1.scale.bias", "dec_net.0.0.weight", "dec_net.0.0.bias", "dec_net.1.logits.weight",
             "dec_net.1.logits.bias", "rnn.weight_ih", "rnn.weight_hh", "rnn.bias_ih", "rnn.bias_hh"],
    "srnn": ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "prior_net.0.0.weight",
             "prior_net.0.0.bias", "prior_net.1.loc.weight", "prior_net.1.loc.bias", "prior_net.1.scale.weight",
             "prior_net.1.scale.bias", "dec_net.0.0.weight", "dec_net.0.0.bias", "dec_net.1.logits.weight",
             "dec_net.1.logits.bias"],
}


@pytest.mark.parametrize("name", sorted(OLD_KEYS))
def test_vrnn_and_srnn_keep_their_parameter_names(name):
    model = MODELS[name](x_dim=D, hidden_size=8, z_size=3)
    assert list(model.state_dict()) == OLD_KEYS[name]
