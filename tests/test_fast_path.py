"""The speed paths compute the same numbers as the straightforward ones.

* the fast filtering loop (terms after the loop, on stacked states) against the eager loop,
  for every stackable model and every inference that fits it, values and gradients;
* IWAE with stacked log-weights against the per-step particle loop;
* the combiner's precomputed forward RNN against stepping its cell;
* AVF's hand-differentiated gradient input against autograd through F_t;
* SRNN's cell step against its nn.LSTM;
* bucketed batch orders: a pure function of (seed, epoch), every sequence once, less padding;
* noise under a whole-batch shard equals plain draws (so single-process runs keep their numbers).
"""

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from seqvi.data.batches import epoch_order
from seqvi.errors import RecipeError
from seqvi.free_energy import noise_shard, reparameterize, step_free_energy
from seqvi.inference import INFERENCE
from seqvi.inference.iterative import free_energy_gradient
from seqvi.models import MODELS
from seqvi.objectives import _filter_eager, filter_sequence, particle_bound, training_loss

B, T, D = 4, 9, 6
SMALL = {
    "vrnn": dict(hidden_size=8, z_size=3, feature_size=8),
    "srnn": dict(hidden_size=8, z_size=3, dense_size=6, decoder_layers=2),
    "dmm": dict(z_size=3, emission_size=6, transition_size=6),
}
INF = {"direct": dict(hidden_sizes=[6]), "avf": dict(hidden_size=16, iterations=2), "combiner": dict(rnn_size=6),
       "smoothing": dict(hidden_size=5, dense_size=6)}


def build(model_name, inf_name, seed=0):
    torch.manual_seed(seed)
    model = MODELS[model_name](x_dim=D, likelihood="bernoulli", **SMALL[model_name])
    try:
        return model, INFERENCE[inf_name](model, **INF[inf_name])
    except RecipeError as err:
        pytest.skip(str(err))


def data(seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((B, T, D), 0.3), generator=g)
    mask = torch.ones(B, T)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return x, mask


def run(model, inference, x, mask, fast, seed=5):
    torch.manual_seed(seed)
    terms = filter_sequence(model, inference, x, mask, fast=fast)
    loss = training_loss(terms, kl_weight=0.7)
    if terms.aux is not None:
        loss = loss + terms.aux.sum()
    params = [p for p in list(model.parameters()) + list(inference.parameters()) if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return terms, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("model_name", sorted(SMALL))
@pytest.mark.parametrize("inf_name", sorted(INF))
def test_fast_loop_equals_eager_loop(model_name, inf_name):
    model, inference = build(model_name, inf_name)
    assert model.stack_steps
    x, mask = data()
    eager, g_eager = run(model, inference, x, mask, fast=False)
    fast, g_fast = run(model, inference, x, mask, fast=True)
    for name in ("recon", "kl", "aux"):
        a, b = getattr(eager, name), getattr(fast, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert torch.all(fast.recon[mask == 0] == 0) and torch.all(fast.kl[mask == 0] == 0)
    for a, b in zip(g_eager, g_fast):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_fast_loop_under_no_grad_and_default_choice():
    model, inference = build("vrnn", "direct")
    x, mask = data()
    with torch.no_grad():
        torch.manual_seed(1)
        default = filter_sequence(model, inference, x, mask)
        torch.manual_seed(1)
        eager = filter_sequence(model, inference, x, mask, fast=False)
    torch.testing.assert_close(default.free_energy, eager.free_energy, rtol=1e-5, atol=1e-5)
    # A model that does not promise row-wise prior/emission (here the LGSSM) runs the eager loop.
    torch.manual_seed(0)
    lgssm = MODELS["lgssm"](x_dim=D, z_size=2)
    q = INFERENCE["direct"](lgssm, hidden_sizes=[6])
    xs = torch.randn(B, T, D)
    torch.manual_seed(2)
    a = filter_sequence(lgssm, q, xs, mask)
    torch.manual_seed(2)
    b = _filter_eager(lgssm, q, xs, mask)
    assert not lgssm.stack_steps and torch.equal(a.recon, b.recon) and torch.equal(a.kl, b.kl)


@pytest.mark.parametrize("inf_name", ["direct", "combiner", "avf"])
@pytest.mark.parametrize("k", [1, 5])
def test_stacked_iwae_equals_particle_loop(inf_name, k):
    """IWAE with log-weights computed after the loop = the per-step particle loop, values and gradients."""
    model, inference = build("dmm" if inf_name == "combiner" else "vrnn", inf_name)
    x, mask = data()
    runs = []
    for fast in (True, False):
        torch.manual_seed(11)
        bound = particle_bound(model, inference, x, mask, k, resample=False, fast=fast)
        grads = torch.autograd.grad(bound.log_p_hat.sum(), list(model.parameters()), allow_unused=True)
        runs.append((bound, grads))
    (stacked, g_stacked), (loop, g_loop) = runs
    torch.testing.assert_close(stacked.increments, loop.increments, rtol=1e-5, atol=1e-4)
    assert torch.all(stacked.increments[mask == 0] == 0) and torch.all(stacked.resampled == 0)
    for a, b in zip(g_stacked, g_loop):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # with gradients recorded, the stacked path is the default
    torch.manual_seed(11)
    default = particle_bound(model, inference, x, mask, k)
    torch.testing.assert_close(default.increments, stacked.increments)


@pytest.mark.parametrize("cell", ["relu", "tanh", "gru"])
def test_combiner_precomputed_rnn_equals_its_cell(cell):
    torch.manual_seed(0)
    model = MODELS["dmm"](x_dim=D, **SMALL["dmm"])
    combiner = INFERENCE["combiner"](model, rnn_size=6, cell=cell)
    x, _ = data()
    ahead = combiner.initial_state(B, x).ahead
    assert len(ahead) == T
    h = combiner.h_0.expand(B, -1)
    for t in range(T):
        h = combiner.rnn(x[:, t], h)
        torch.testing.assert_close(ahead[t], h, rtol=1e-5, atol=1e-6)
    # Past its end, or without x, the posterior steps the cell itself.
    state = model.initial_state(B)
    post = combiner.posterior(model, x[:, 0], state, None, combiner.initial_state(B))
    torch.testing.assert_close(post.q_state.h, combiner.rnn(x[:, 0], combiner.h_0.expand(B, -1)))


@pytest.mark.parametrize("model_name", ["vrnn", "srnn"])
def test_avf_gradient_input_equals_autograd(model_name):
    """The hand-differentiated KL and reparameterization give autograd's grad_lambda F_t."""
    model, _ = build(model_name, "direct")
    x, _ = data()
    state = model.initial_state(B)
    p_z = model.prior(state)
    torch.manual_seed(4)   # a point away from the prior, where the KL's gradient is not zero
    loc = (p_z.loc + 0.3 * torch.randn_like(p_z.loc)).detach()
    logvar = (2 * p_z.scale.log() + 0.5 * torch.randn_like(p_z.loc)).detach()
    torch.manual_seed(9)
    g_loc, g_logvar, _ = free_energy_gradient(model, x[:, 0], state, p_z, loc, logvar)
    loc_, logvar_ = loc.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    torch.manual_seed(9)
    terms = step_free_energy(model, Normal(loc_, (0.5 * logvar_).exp()), p_z, x[:, 0], state)
    a_loc, a_logvar = torch.autograd.grad((terms.recon + terms.kl).sum(), (loc_, logvar_))
    torch.testing.assert_close(g_loc, a_loc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_logvar, a_logvar, rtol=1e-4, atol=1e-5)


def test_srnn_cell_step_equals_its_lstm():
    torch.manual_seed(0)
    model = MODELS["srnn"](x_dim=D, **SMALL["srnn"])
    x, _ = data()
    d, c = torch.randn(B, 8), torch.randn(B, 8)
    _, (d_ref, c_ref) = model.rnn(x[:, :1], (d.unsqueeze(0), c.unsqueeze(0)))
    d_new, c_new = model._step(x[:, 0], d, c)
    torch.testing.assert_close(d_new, d_ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_new, c_ref[0], rtol=1e-5, atol=1e-6)
    # the whole-sequence path (used by smoothing) agrees with stepping
    state, ds = model.initial_state(B), []
    for t in range(T):
        ds.append(state.d)
        state = model.advance(state, x[:, t], state.z)
    torch.testing.assert_close(model.deterministic_path(x), torch.stack(ds, 1), rtol=1e-5, atol=1e-5)


class _Split:
    def __init__(self, lengths):
        self.lengths = np.asarray(lengths)


def test_bucketed_order_is_pure_covers_everything_and_pads_less():
    rng = np.random.default_rng(0)
    split = _Split(rng.integers(10, 300, size=203))
    plain = epoch_order(split, 20, seed=3, epoch=0)
    # bucket=False is the order it always was: a permutation cut into batches
    perm = np.random.default_rng([3, 0, 0]).permutation(203)
    assert [b.tolist() for b in plain] == [perm[i:i + 20].tolist() for i in range(0, 203, 20)]
    a = epoch_order(split, 20, seed=3, epoch=0, bucket=True)
    b = epoch_order(split, 20, seed=3, epoch=0, bucket=True)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]                      # pure function
    assert sorted(np.concatenate(a).tolist()) == list(range(203))                   # each once
    other = epoch_order(split, 20, seed=3, epoch=1, bucket=True)
    assert [x.tolist() for x in a] != [x.tolist() for x in other]                   # changes with epoch
    loop_steps = lambda order: sum(int(split.lengths[i].max()) for i in order)      # noqa: E731
    assert loop_steps(a) < 0.7 * loop_steps(plain)
    assert epoch_order(split, 20, 3, 0, min_length=100, bucket=True)[0].size > 0
    assert all(split.lengths[i].min() >= 100 for i in epoch_order(split, 20, 3, 0, min_length=100, bucket=True))


def test_whole_batch_noise_shard_draws_like_plain_randn():
    q = Normal(torch.zeros(6, 3), torch.ones(6, 3))
    torch.manual_seed(0)
    plain = reparameterize(q)
    torch.manual_seed(0)
    with noise_shard(torch.arange(6), 6):
        sharded = reparameterize(q)
    assert torch.equal(plain, sharded)
    # a real shard still takes its rows of the global draw
    torch.manual_seed(0)
    with noise_shard(torch.tensor([1, 3, 5]), 6):
        half = reparameterize(Normal(torch.zeros(3, 3), torch.ones(3, 3)))
    assert torch.equal(half, plain[[1, 3, 5]])


VJP_CASES = ([(m, lik, "relu") for m in sorted(SMALL) for lik in ("bernoulli", "gaussian")]
             + [("srnn", lik, act) for act in ("clipped_leaky_relu", "tanh", "elu") for lik in ("bernoulli", "gaussian")])


@pytest.mark.parametrize("model_name,likelihood,activation", VJP_CASES)
def test_emission_gradient_by_hand_equals_autograd(model_name, likelihood, activation):
    """seqvi.models.vjp: -log p(x | z, h) and its z-gradient by hand equal autograd's
    (activation: the SRNN's; the other models use ReLU)."""
    torch.manual_seed(0)
    extra = {"activation": activation} if model_name == "srnn" else {}
    model = MODELS[model_name](x_dim=D, likelihood=likelihood, **SMALL[model_name], **extra)
    x, _ = data()
    x_t = x[:, 0] if likelihood == "bernoulli" else torch.randn(B, D) * 2
    state = model.initial_state(B)
    z = (3 * torch.randn(B, model.z_dim)).requires_grad_(True)   # wide: clipped units too
    recon = -model.emission(z, state).log_prob(x_t).sum(1)
    (grad_z,) = torch.autograd.grad(recon.sum(), z)
    by_hand = model.emission_recon_grad(z.detach(), state, x_t)
    assert by_hand is not None
    torch.testing.assert_close(by_hand[0], recon.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_hand[1], grad_z, rtol=1e-4, atol=1e-5)
    assert not by_hand[1].requires_grad


def test_emission_gradient_by_hand_declines_unknown_layers():
    """A module seqvi.models.vjp cannot differentiate makes the model fall back to autograd."""
    torch.manual_seed(0)
    model = MODELS["dmm"](x_dim=D, **SMALL["dmm"])
    model.emitter[0].append(torch.nn.Softsign())
    z = torch.randn(B, model.z_dim)
    assert model.emission_recon_grad(z, model.initial_state(B), torch.zeros(B, D)) is None


@pytest.mark.parametrize("model_name", sorted(SMALL))
@pytest.mark.parametrize("iterations,layers,update", [(1, 2, "highway"), (1, 1, "sgd"), (3, 2, "highway")])
def test_deferred_avf_update_gives_the_same_gradients(model_name, iterations, layers, update):
    """AVF in training with ``defer``: the update chain runs without a graph in the loop and is
    back-propagated once, batched, after the loss (K = 1: by hand through the kept activations,
    seqvi.inference.avf_trace; K > 1: recomputed, with the earlier iterates' free energies):
    every parameter's gradient equals the engine's per-step path, where theta learns from the
    final iterate and phi from every iterate."""
    grads = {}
    for defer in (False, True):
        torch.manual_seed(0)
        model = MODELS[model_name](x_dim=D, likelihood="bernoulli", **SMALL[model_name])
        avf = INFERENCE["avf"](model, hidden_size=16, iterations=iterations, layers=layers, update=update)
        x, mask = data()
        torch.manual_seed(5)
        terms = filter_sequence(model, avf, x, mask, defer=defer)
        loss = training_loss(terms, kl_weight=0.7)
        norm = float(mask.sum())
        if defer:
            assert terms.aux is None and terms.deferred is not None
            loss.backward(retain_graph=terms.deferred.retain_graph)
            assert all(p.grad is None for p in avf.parameters())   # phi is not in the loop's graph
            terms.deferred.backward(1.0 / norm)
        else:
            assert terms.deferred is None and (terms.aux is not None) == (iterations > 1)
            loss.backward(retain_graph=True)
            if terms.aux is not None:
                (terms.aux.sum() / norm).backward(inputs=list(avf.parameters()))
        params = list(model.parameters()) + list(avf.parameters())
        grads[defer] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        assert all(g.abs().sum() > 0 for g in grads[defer][-4:])   # the output layers of phi learn
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_deferred_update_is_off_where_it_does_not_apply():
    """Evaluation mode, no gradients, or an inference without it: the loop runs as usual."""
    torch.manual_seed(0)
    model = MODELS["vrnn"](x_dim=D, **SMALL["vrnn"])
    x, mask = data()
    for train, grad in ((False, True), (True, False)):
        avf = INFERENCE["avf"](model, hidden_size=16, iterations=2).train(train)
        with torch.set_grad_enabled(grad):
            assert filter_sequence(model, avf, x, mask, defer=True).deferred is None
    assert filter_sequence(model, INFERENCE["direct"](model), x, mask, defer=True).deferred is None


def test_linear_without_graph_matches_nn_linear_and_follows_weight_changes():
    """seqvi.models.linear.Linear: the cached W^T product equals nn.Linear's, before and after the
    weight changes in place (an optimizer step) or by load_state_dict; with a graph it is nn.Linear."""
    from seqvi.models.linear import Linear

    torch.manual_seed(0)
    ours, ref = Linear(7, 5), torch.nn.Linear(7, 5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(16, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
        assert ours._transposed is not None
        ours.weight.add_(1.0)
        ref.weight.add_(1.0)
        torch.testing.assert_close(ours(x), ref(x))
    state = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    ours.load_state_dict(state)
    ref.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
        torch.testing.assert_close(ours(x.unsqueeze(0)), ref(x.unsqueeze(0)))   # not a matrix: nn.Linear
    y = ours(x)
    assert y.requires_grad
    y.sum().backward()
    torch.testing.assert_close(ours.weight.grad, torch.ones(5, 16) @ x)
    assert "_transposed" not in ours.__getstate__() and ours.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_elman_rnn_equals_torch_rnn_values_and_gradients(nonlinearity):
    """seqvi.inference.elman: the hand-written BPTT gives torch.rnn_relu/tanh's outputs and the
    gradients of every weight, h_0 and x, for an upstream gradient on every step."""
    from seqvi.inference.elman import elman_rnn

    torch.manual_seed(0)
    cell = torch.nn.RNNCell(D, 7, nonlinearity=nonlinearity)
    x = torch.randn(B, T, D, requires_grad=True)
    h_0 = torch.randn(B, 7, requires_grad=True)
    upstream = torch.randn(B, T, 7)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    results = []
    for ours in (True, False):
        if ours:
            h = elman_rnn(x, h_0, *weights, nonlinearity=nonlinearity)
        else:
            run = torch.rnn_relu if nonlinearity == "relu" else torch.rnn_tanh
            h, _ = run(x, h_0.unsqueeze(0), weights, True, 1, 0.0, True, False, True)
        grads = torch.autograd.grad((h * upstream).sum(), [x, h_0, *weights])
        results.append((h.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        elman_rnn(x, h_0, *weights, nonlinearity="gru")


def test_dmm_transition_without_graph_equals_with_graph():
    """The DMM's graph-free transition (fused first layers, lerp) gives the recorded one's prior,
    also after its weights change."""
    torch.manual_seed(0)
    model = MODELS["dmm"](x_dim=D, **SMALL["dmm"])
    z = torch.randn(B, model.z_dim) * 2
    for _ in range(2):
        ref = model.transition(z)
        with torch.no_grad():
            fast = model.transition(z)
        torch.testing.assert_close(fast.loc, ref.loc.detach())
        torch.testing.assert_close(fast.scale, ref.scale.detach())
        with torch.no_grad():
            model.transition.gate[0].weight.add_(0.3)
            model.transition.z_to_loc.bias.add_(0.3)


def test_lstm_step_equals_lstm_cell_values_and_gradients():
    """seqvi.models.lstm: a sequence of steps gives torch.lstm_cell's states and the same gradients
    for x, h_0, c_0 and every weight (formed once, at the first step), with the last output unused
    and a state re-indexed mid-sequence (a new tape); a pass that stops early leaves no residue."""
    from seqvi.models.lstm import lstm_step

    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(D, 5)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    xs = [torch.randn(B, D, requires_grad=True) for _ in range(T)]
    h_0, c_0 = torch.randn(B, 5, requires_grad=True), torch.randn(B, 5, requires_grad=True)
    upstream = torch.randn(T, B, 5)
    results = []
    for ours in (True, False):
        h, c, loss = h_0, c_0, 0.0
        for t in range(T):
            if t == 4:   # a particle re-index: new tensors, a new tape
                h, c = h[torch.arange(B)], c[torch.arange(B)]
            h, c = lstm_step(cell, xs[t], h, c, *weights) if ours else torch.lstm_cell(xs[t], (h, c), *weights)
            if t < T - 1:
                loss = loss + (h * upstream[t]).sum() + 0.5 * c.sum()
        if ours:   # a pass that asks for x_6 only stops before the tape's first step (t = 4): no residue
            torch.autograd.grad(loss, xs[6], retain_graph=True)
        inputs = [*xs, h_0, c_0, *weights]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        results.append((h.detach(), c.detach(), [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs)]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
