"""SRNN, DMM and LGSSM against the step contract; what each q may and may not read."""

import pytest
import torch
from torch.distributions import Normal

from seqvi.engine.sample import sample_sequences
from seqvi.errors import RecipeError, SeqviError
from seqvi.inference import INFERENCE
from seqvi.models import MODELS
from seqvi.models.srnn import ClippedLeakyReLU
from seqvi.objectives import filter_sequence, training_loss

B, T, D = 3, 7, 5
SMALL = {
    "srnn": dict(likelihood="bernoulli", hidden_size=8, z_size=3, dense_size=6, layers=1, decoder_layers=2),
    "dmm": dict(likelihood="bernoulli", z_size=3, emission_size=6, transition_size=6),
    "lgssm": dict(likelihood="gaussian", z_size=3),
}
PAIRS = [("srnn", "direct"), ("srnn", "smoothing"), ("srnn", "combiner"), ("dmm", "direct"),
         ("dmm", "combiner"), ("lgssm", "direct"), ("lgssm", "combiner")]
INF_KWARGS = {"direct": dict(hidden_sizes=[6]), "smoothing": dict(hidden_size=5, dense_size=6),
              "combiner": dict(rnn_size=6)}


def build(model_name, inf_name=None):
    torch.manual_seed(0)
    model = MODELS[model_name](x_dim=D, **SMALL[model_name])
    return model, (INFERENCE[inf_name](model, **INF_KWARGS[inf_name]) if inf_name else None)


def data(model_name, seed=0):
    g = torch.Generator().manual_seed(seed)
    if SMALL[model_name]["likelihood"] == "bernoulli":
        return torch.bernoulli(torch.full((B, T, D), 0.3), generator=g)
    return torch.randn(B, T, D, generator=g)


def run_q(model, inference, x, mask=None, seed=1):
    """q_z's loc at every step of one filtering pass, under a fixed sampling seed: (B, T, Z)."""
    torch.manual_seed(seed)
    state = model.initial_state(x.shape[0])
    q_state = inference.initial_state(x.shape[0], x) if mask is None else inference.initial_state(x.shape[0], x, mask)
    locs = []
    for t in range(x.shape[1]):
        p_z = model.prior(state)
        q = inference.posterior(model, x[:, t], state, p_z, q_state)
        locs.append(q.q_z.loc)
        state, q_state = model.advance(state, x[:, t], q.q_z.rsample()), q.q_state
    return torch.stack(locs, 1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_contract_shapes(name):
    model, _ = build(name)
    x = data(name)
    state = model.initial_state(B)
    for t in range(3):
        p_z = model.prior(state)
        assert isinstance(p_z, Normal) and p_z.loc.shape == (B, model.z_dim) == p_z.scale.shape
        z = p_z.rsample()
        assert model.emission(z, state).log_prob(x[:, t]).shape == (B, D)
        assert model.features(x[:, t], state).shape == (B, model.feature_size)
        new = model.advance(state, x[:, t], z)
        assert type(new) is type(state) and all(a.shape == b.shape for a, b in zip(new, state))
        torch.testing.assert_close(model.previous_z(new), z)
        state = new


@pytest.mark.parametrize("model_name,inf_name", PAIRS)
def test_pair_trains(model_name, inf_name):
    model, inference = build(model_name, inf_name)
    x = data(model_name)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    terms = filter_sequence(model, inference, x, mask)
    assert terms.recon.shape == (B, T) and torch.all(terms.recon[0, 4:] == 0) and torch.all(terms.kl >= 0)
    training_loss(terms).backward()
    for module in (model, inference):
        trainable = [p for p in module.parameters() if p.requires_grad]
        assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable) >= len(trainable) // 2


def test_srnn_deterministic_path_reads_only_the_past():
    model, _ = build("srnn")
    x = data("srnn")
    t = 3
    x2 = x.clone()
    x2[:, t] = 1 - x2[:, t]

    def stepped(x):
        state, ds = model.initial_state(B), []
        for k in range(T):
            ds.append(state.d)                               # d_k, before x_k is consumed
            state = model.advance(state, x[:, k], torch.zeros(B, model.z_dim))
        return torch.stack(ds, 1)

    d, d2 = stepped(x), stepped(x2)
    torch.testing.assert_close(d[:, :t + 1], d2[:, :t + 1], rtol=0, atol=0)   # d_{<=t} never saw x_t
    assert (d[:, t + 1] - d2[:, t + 1]).abs().max() > 1e-4                      # d_{t+1} did
    torch.testing.assert_close(model.deterministic_path(x), d)                  # one LSTM call = the steps
    # The first state is d_1 = LSTM(d_0 = 0, x_0 = 0), not zeros.
    assert model.initial_state(1).d.abs().sum() > 0


def test_smoothing_reads_the_future_and_direct_does_not():
    t = 2
    for inf_name, reads_future in (("smoothing", True), ("direct", False), ("combiner", False)):
        model, inference = build("srnn", inf_name)
        x = data("srnn")
        x2 = x.clone()
        x2[:, t + 2] = 1 - x2[:, t + 2]
        with torch.no_grad():
            q, q2 = run_q(model, inference, x), run_q(model, inference, x2)
        changed = bool((q[:, t] - q2[:, t]).abs().max() > 1e-5)
        assert changed == reads_future, inf_name
        if not reads_future:
            torch.testing.assert_close(q[:, :t + 2], q2[:, :t + 2], rtol=0, atol=0)


def test_smoothing_ignores_padding():
    """A sequence's q is the same alone or padded to a longer batch (the backward pass starts at its end)."""
    model, inference = build("srnn", "smoothing")
    x = data("srnn")
    padded = torch.cat([x[:1, :4], torch.ones(1, 3, D)], 1)     # 4 real steps, then padding that is not zeros
    mask = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        alone = run_q(model, inference, x[:1, :4])
        padded_q = run_q(model, inference, padded, mask)
        unmasked_q = run_q(model, inference, padded)
    torch.testing.assert_close(padded_q[:, :4], alone)
    assert (unmasked_q[:, :4] - alone).abs().max() > 1e-5      # without the mask the padding would leak in


def test_smoothing_free_energy_ignores_padding():
    model, inference = build("srnn", "smoothing")
    x = data("srnn")
    padded = torch.cat([x[:1, :4], torch.ones(1, 3, D)], 1)
    with torch.no_grad():
        torch.manual_seed(1)
        a = filter_sequence(model, inference, padded, torch.tensor([[1.0, 1, 1, 1, 0, 0, 0]]))
        torch.manual_seed(1)
        b = filter_sequence(model, inference, x[:1, :4], torch.ones(1, 4))
    torch.testing.assert_close(a.free_energy[:, :4], b.free_energy)


def test_smoothing_state_is_consumed_one_step_at_a_time():
    model, inference = build("srnn", "smoothing")
    x = data("srnn")
    q_state = inference.initial_state(B, x)
    assert q_state[0].shape == (B, T, 5)
    state = model.initial_state(B)
    for t in range(T):
        post = inference.posterior(model, x[:, t], state, model.prior(state), q_state)
        assert post.q_state[0].shape == (B, T - t - 1, 5)
        state, q_state = model.advance(state, x[:, t], post.q_z.rsample()), post.q_state
    with pytest.raises(SeqviError, match="whole sequence"):
        inference.posterior(model, x[:, 0], state, model.prior(state), q_state)
    # Primed sampling reads only the prime: fine; unprimed sampling has nothing to smooth.
    prime = x[:2, :3]
    assert sample_sequences(model, inference, 2, 5, prime=prime).shape == (2, 5, D)


def test_refusals_name_the_missing_method():
    vrnn = MODELS["vrnn"](x_dim=D, hidden_size=4, z_size=2, feature_size=4)
    with pytest.raises(RecipeError, match="deterministic_path"):
        INFERENCE["smoothing"](vrnn)
    with pytest.raises(RecipeError, match="deterministic_path"):
        INFERENCE["smoothing"](build("dmm")[0])
    with pytest.raises(RecipeError, match="previous_z"):
        INFERENCE["combiner"](vrnn)
    with pytest.raises(ValueError, match="activation"):
        MODELS["srnn"](x_dim=D, activation="swish")


def test_smoothing_does_not_own_the_model():
    model, inference = build("srnn", "smoothing")
    q_ids = {id(p) for p in inference.parameters()}
    assert not q_ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith("_model") for k in inference.state_dict())


def test_combiner_state_is_its_forward_rnn():
    model, inference = build("dmm", "combiner")
    x = data("dmm")
    q_state = inference.initial_state(B, x)
    torch.testing.assert_close(q_state[0], inference.h_0.expand(B, -1))
    state = model.initial_state(B)
    torch.testing.assert_close(model.previous_z(state), model.z_0.expand(B, -1))
    for t in range(3):
        post = inference.posterior(model, x[:, t], state, model.prior(state), q_state)
        torch.testing.assert_close(post.q_state[0], inference.rnn(x[:, t], q_state[0]))
        assert not torch.equal(post.q_state[0], q_state[0])
        # The combiner: loc = W_loc * 0.5 (tanh(W z_{t-1} + b) + h_t) + b_loc.
        h_c = 0.5 * (torch.tanh(inference.z_to_hidden(state.z)) + post.q_state[0])
        torch.testing.assert_close(post.q_z.loc, inference.loc(h_c))
        state, q_state = model.advance(state, x[:, t], post.q_z.rsample()), post.q_state


def test_dmm_gated_transition_starts_near_identity_mean():
    """z_to_loc starts at the identity: with the gate closed, the prior mean is z_{t-1}."""
    model, _ = build("dmm")
    tr = model.transition
    torch.testing.assert_close(tr.z_to_loc.weight, torch.eye(3))
    with torch.no_grad():
        tr.gate[-1].bias.fill_(-1e4)                         # sigmoid -> 0
    z = torch.randn(4, 3)
    torch.testing.assert_close(tr(z).loc, z)


def test_clipped_leaky_relu():
    x = torch.tensor([-12.0, -6.0, -3.0, 0.0, 2.0, 3.0, 5.0])
    torch.testing.assert_close(ClippedLeakyReLU()(x), torch.tensor([-3.0, -2.0, -1.0, 0.0, 2.0, 3.0, 3.0]))
