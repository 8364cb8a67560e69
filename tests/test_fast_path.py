"""The speed kernels compute the reference path's numbers, values and gradients (seqvi.nn's switch).

* the whole filtering pass (stacked rows, the combiner's kernel, AVF's taped chain, the LSTM and
  Elman kernels, graph-free products) against the reference path, for every model and inference;
* the particle bounds (stacked IWAE against the per-step loop);
* each kernel against its reference: Linear/Fused, the LSTM step, the Elman RNN, the highway
  network (forward, replay from kept activations, backward by hand), the MLP input gradient;
* AVF's gradient input (by hand) against autograd; the emission's z-gradient against autograd
  for every registered model that declares it (whether a declared hook is real, and every model's
  own check: tests/test_conformance.py, through seqvi.testing);
* the switch itself: SEQVI_REFERENCE=1 and ``reference()``;
* bucketed batch orders and whole-batch noise shards (no change of numbers).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from seqvi.data.batches import epoch_order
from seqvi.errors import RecipeError
from seqvi.free_energy import free_energy_at, free_energy_gradient, noise_shard, reparameterize
from seqvi.inference import INFERENCE
from seqvi.nn import reference, reference_forced
from seqvi.objectives import filter_sequence, particle_bound, training_loss
from seqvi.testing import build_model, registered_models

B, T, D = 4, 9, 6
MODELS = registered_models()   # seqvi's and any installed plugin's


def small(name, **extra):
    """The registry entry's own tiny configuration (TEST_CONFIG), on this file's D-dimensional data."""
    return build_model(MODELS[name], x_dim=D, **extra)


# Every model with a fast hook (stacked rows or the emission's gradient by hand) whose frames are vectors.
FAST = sorted(n for n, c in MODELS.items()
              if (c.rowwise or c.has("emission_grad")) and len(c.TEST_CONFIG.get("frame_shape", (D,))) == 1)
EMISSION_GRAD = sorted(n for n in FAST if MODELS[n].has("emission_grad"))
INF = {"direct": ("direct", dict(hidden_sizes=[6])),
       "avf1": ("avf", dict(hidden_size=16, iterations=1)),
       "avf3": ("avf", dict(hidden_size=16, iterations=3)),
       "avf2-sgd-1layer": ("avf", dict(hidden_size=16, iterations=2, layers=1, update="sgd")),
       "combiner": ("combiner", dict(rnn_size=6)),
       "smoothing": ("smoothing", dict(hidden_size=5, dense_size=6))}


def build(model_name, inf_key, seed=0):
    torch.manual_seed(seed)
    model = small(model_name, likelihood="bernoulli")
    name, kwargs = INF[inf_key]
    try:
        return model, INFERENCE[name](model, **kwargs)
    except RecipeError as err:
        pytest.skip(str(err))


def data(seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((B, T, D), 0.3), generator=g)
    mask = torch.ones(B, T)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return x, mask


def run(model, inference, x, mask, reference_path, seed=5):
    """Training loss (free energy, KL weight 0.7, q's aux) and every parameter's gradient."""
    with reference(reference_path):
        torch.manual_seed(seed)
        terms = filter_sequence(model, inference, x, mask)
        params = [p for p in list(model.parameters()) + list(inference.parameters()) if p.requires_grad]
        grads = torch.autograd.grad(training_loss(terms, kl_weight=0.7), params, allow_unused=True)
    return terms, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("model_name", FAST)
@pytest.mark.parametrize("inf_key", sorted(INF))
def test_kernels_equal_the_reference_path(model_name, inf_key):
    model, inference = build(model_name, inf_key)
    assert model.rowwise
    x, mask = data()
    ref, g_ref = run(model, inference, x, mask, True)
    fast, g_fast = run(model, inference, x, mask, False)
    for name in ("recon", "kl", "aux"):
        a, b = getattr(ref, name), getattr(fast, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert (fast.aux is not None) == (inf_key == "avf3" or inf_key.startswith("avf2"))
    assert torch.all(fast.recon[mask == 0] == 0) and torch.all(fast.kl[mask == 0] == 0)
    for a, b in zip(g_ref, g_fast):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert all(bool(g.abs().sum() > 0) for g in g_fast[-4:])   # q's last layers learn


def test_no_graph_filtering_and_models_that_are_not_rowwise():
    model, inference = build("vrnn", "direct")
    x, mask = data()
    with torch.no_grad():
        fast, ref = (run_no_grad(model, inference, x, mask, r) for r in (False, True))
    torch.testing.assert_close(fast.free_energy, ref.free_energy, rtol=1e-5, atol=1e-5)
    # A model that does not promise row-wise prior/emission (the LGSSM) runs the per-step loop either way.
    torch.manual_seed(0)
    lgssm = MODELS["lgssm"](x_dim=D, z_size=2)
    q = INFERENCE["direct"](lgssm, hidden_sizes=[6])
    xs = torch.randn(B, T, D)
    a, b = (run_no_grad(lgssm, q, xs, mask, r) for r in (False, True))
    assert not lgssm.rowwise
    torch.testing.assert_close(a.recon, b.recon)
    torch.testing.assert_close(a.kl, b.kl)


def run_no_grad(model, inference, x, mask, reference_path):
    with reference(reference_path), torch.no_grad():
        torch.manual_seed(1)
        return filter_sequence(model, inference, x, mask)


@pytest.mark.parametrize("inf_key", ["direct", "combiner", "avf1"])
@pytest.mark.parametrize("k", [1, 5])
def test_stacked_iwae_equals_the_particle_loop(inf_key, k):
    """IWAE with log-weights computed after the loop = the per-step particle loop, values and gradients."""
    model, inference = build("dmm" if inf_key == "combiner" else "vrnn", inf_key)
    x, mask = data()
    runs = []
    for reference_path in (False, True):
        with reference(reference_path):
            torch.manual_seed(11)
            bound = particle_bound(model, inference, x, mask, k, resample=False)
            grads = torch.autograd.grad(bound.log_p_hat.sum(), list(model.parameters()), allow_unused=True)
        runs.append((bound, grads))
    (fast, g_fast), (loop, g_loop) = runs
    torch.testing.assert_close(fast.increments, loop.increments, rtol=1e-5, atol=1e-4)
    assert torch.all(fast.increments[mask == 0] == 0) and torch.all(fast.resampled == 0)
    for a, b in zip(g_fast, g_loop):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reference_path", [False, True])
def test_avf_aux_alone_and_twice(reference_path):
    """AVF's q-only loss gives phi the same gradient whether it is back-propagated with the free energy
    or in a pass of its own, and never touches theta."""
    model, avf = build("vrnn", "avf3")
    x, mask = data()
    phi, theta = list(avf.parameters()), list(model.parameters())
    with reference(reference_path):
        torch.manual_seed(5)
        terms = filter_sequence(model, avf, x, mask)
        together = torch.autograd.grad(training_loss(terms), phi + theta, retain_graph=True, allow_unused=True)
        main = (terms.recon + terms.kl).sum() / mask.sum()
        apart = [torch.autograd.grad(main, phi, retain_graph=True),
                 torch.autograd.grad(terms.aux.sum() / mask.sum(), phi, retain_graph=True, allow_unused=True)]
        no_aux_theta = torch.autograd.grad(main, theta, retain_graph=True, allow_unused=True)
    for g, a, b in zip(together[:len(phi)], *apart):
        torch.testing.assert_close(g, a + (0 if b is None else b), rtol=1e-4, atol=1e-6)
    assert any(b is not None and bool(b.abs().sum() > 0) for b in apart[1])
    for g, h in zip(together[len(phi):], no_aux_theta):
        assert (g is None and h is None) or torch.equal(g, h)


@pytest.mark.parametrize("cell", ["relu", "tanh", "gru"])
def test_combiner_precomputed_rnn_equals_its_cell(cell):
    torch.manual_seed(0)
    model = small("dmm")
    combiner = INFERENCE["combiner"](model, rnn_size=6, cell=cell)
    x, _ = data()
    for reference_path in (False, True):
        with reference(reference_path):
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


@pytest.mark.parametrize("model_name", FAST)
@pytest.mark.parametrize("samples", [1, 3])
def test_avf_gradient_input_equals_autograd(model_name, samples):
    """free_energy_gradient (the emission's z-gradient by hand, the KL and the sampling by hand) gives
    autograd's grad_lambda of free_energy_at, for one noise draw or several."""
    model, _ = build(model_name, "direct")
    x, _ = data()
    state = model.initial_state(B)
    p_z = model.prior(state)
    torch.manual_seed(4)   # a point away from the prior, where the KL's gradient is not zero
    loc = (p_z.loc + 0.3 * torch.randn_like(p_z.loc)).detach()
    logvar = (2 * p_z.scale.log() + 0.5 * torch.randn_like(p_z.loc)).detach()
    eps = torch.randn(samples, B, model.z_dim).squeeze(0)
    loc_, logvar_ = loc.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    f = free_energy_at(model, loc_, logvar_, p_z, x[:, 0], state, eps)
    a_loc, a_logvar = torch.autograd.grad(f.sum(), (loc_, logvar_))
    for reference_path in (False, True):
        with reference(reference_path):
            g_loc, g_logvar, value = free_energy_gradient(model, loc, logvar, p_z, x[:, 0], state, eps, value=True)
        torch.testing.assert_close(g_loc, a_loc, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g_logvar, a_logvar, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(value, f.detach(), rtol=1e-5, atol=1e-5)


def test_srnn_cell_step_equals_its_lstm():
    torch.manual_seed(0)
    model = small("srnn")
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


EMISSION_CASES = ([(m, lik, "relu") for m in EMISSION_GRAD for lik in ("bernoulli", "gaussian")]
                  + [("srnn", lik, act) for act in ("clipped_leaky_relu", "tanh", "elu") for lik in ("bernoulli", "gaussian")])


@pytest.mark.parametrize("model_name,likelihood,activation", EMISSION_CASES)
def test_emission_gradient_by_hand_equals_autograd(model_name, likelihood, activation):
    """MLPEmission.recon_grad (through the model's emission_grad): -log p(x | z, h) and its z-gradient
    by hand equal autograd's (activation: the SRNN's; the other models use ReLU); the reference switch
    turns it off."""
    torch.manual_seed(0)
    extra = {"activation": activation} if model_name == "srnn" else {}
    model = small(model_name, likelihood=likelihood, **extra)
    x, _ = data()
    x_t = x[:, 0] if likelihood == "bernoulli" else torch.randn(B, D) * 2
    state = model.initial_state(B)
    z = (3 * torch.randn(B, model.z_dim)).requires_grad_(True)   # wide: clipped units too
    recon = -model.emission(z, state).log_prob(x_t).sum(1)
    (grad_z,) = torch.autograd.grad(recon.sum(), z)
    by_hand = model.emission_grad(z.detach(), state, x_t)
    assert by_hand is not None
    torch.testing.assert_close(by_hand[0], recon.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_hand[1], grad_z, rtol=1e-4, atol=1e-5)
    assert not by_hand[1].requires_grad
    with reference():
        assert model.emission_grad(z.detach(), state, x_t) is None


def test_emission_gradient_by_hand_declines_unknown_layers():
    """An activation seqvi.nn.mlp_grad cannot differentiate makes the model fall back to autograd."""
    torch.manual_seed(0)
    model = small("dmm")
    model.emitter[0].append(torch.nn.Softsign())
    z = torch.randn(B, model.z_dim)
    assert model.emission_grad(z, model.initial_state(B), torch.zeros(B, D)) is None


def test_linear_and_fused_products_equal_their_reference_and_follow_weight_changes():
    """seqvi.nn.linear: the cached W^T products equal nn.Linear's and torch.cat of the layers, before and
    after the weights change in place (an optimizer step) or by load_state_dict; with a graph, nn.Linear."""
    from seqvi.nn.linear import Fused, Linear

    torch.manual_seed(0)
    ours, ref, other = Linear(7, 5), torch.nn.Linear(7, 5), Linear(7, 3)
    ref.load_state_dict(ours.state_dict())
    fused = Fused(ours, other)
    x = torch.randn(16, 7)
    for _ in range(2):
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x))
            torch.testing.assert_close(fused(x), torch.cat([ref(x), torch.nn.functional.linear(x, other.weight, other.bias)], 1))
            ours.weight.add_(1.0)
            ref.weight.add_(1.0)
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
    assert "_wt_cache" not in ours.__getstate__() and ours.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("layers", [0, 2])
@pytest.mark.parametrize("input_grad", [False, True])
def test_highway_network_kernel_equals_reference(layers, input_grad):
    """seqvi.nn.highway: the graph-free forward, the forward from kept activations and the backward by
    hand give the reference path's output and the gradients of u and of every weight."""
    from seqvi.nn.highway import HighwayMLP

    torch.manual_seed(0)
    first = torch.nn.Linear(6, 9)
    pairs = [(torch.nn.Linear(9, 9), torch.nn.Linear(9, 9)) for _ in range(layers)]
    heads = [torch.nn.Linear(9, 2), torch.nn.Linear(9, 3)]
    net = HighwayMLP(first, pairs, heads)
    u = torch.randn(5, 6, requires_grad=input_grad)
    upstream = torch.randn(5, 5)
    params = net.params()
    results = []
    for mode in ("reference", "kernel", "replay"):
        with reference(mode == "reference"):
            trace = net.run(u.detach())[1] if mode == "replay" else None
            y = net(u, trace)
            inputs = params + ([u] if input_grad else [])
            grads = torch.autograd.grad((y * upstream).sum(), inputs)
        results.append((y.detach(), grads))
    with torch.no_grad():
        torch.testing.assert_close(net(u), results[0][0])
    for y, grads in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_elman_rnn_equals_torch_rnn_values_and_gradients(nonlinearity):
    """seqvi.nn.elman: the hand-written BPTT gives torch.rnn_relu/tanh's outputs and the gradients of
    every weight, h_0 and x, for an upstream gradient on every step."""
    from seqvi.nn.elman import elman_rnn

    torch.manual_seed(0)
    cell = torch.nn.RNNCell(D, 7, nonlinearity=nonlinearity)
    x = torch.randn(B, T, D, requires_grad=True)
    h_0 = torch.randn(B, 7, requires_grad=True)
    upstream = torch.randn(B, T, 7)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    results = []
    for reference_path in (False, True):
        with reference(reference_path):
            h = elman_rnn(x, h_0, *weights, nonlinearity=nonlinearity)
        grads = torch.autograd.grad((h * upstream).sum(), [x, h_0, *weights])
        results.append((h.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        elman_rnn(x, h_0, *weights, nonlinearity="gru")


def test_dmm_transition_without_graph_equals_with_graph():
    """The DMM's transition with its fused first layers (graph-free) gives the recorded one's prior,
    also after its weights change."""
    torch.manual_seed(0)
    model = small("dmm")
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
    """seqvi.nn.lstm: a sequence of steps gives torch.lstm_cell's states and the same gradients for x,
    h_0, c_0 and every weight (formed once, at the first step), with the last output unused and a state
    re-indexed mid-sequence (a new tape); a pass that stops early leaves no residue."""
    from seqvi.nn.lstm import LSTMStep

    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(D, 5)
    step = LSTMStep(cell)
    weights = list(step.weights())
    xs = [torch.randn(B, D, requires_grad=True) for _ in range(T)]
    h_0, c_0 = torch.randn(B, 5, requires_grad=True), torch.randn(B, 5, requires_grad=True)
    upstream = torch.randn(T, B, 5)
    results = []
    for reference_path in (False, True):
        with reference(reference_path):
            h, c, loss = h_0, c_0, 0.0
            for t in range(T):
                if t == 4:   # a particle re-index: new tensors, a new tape
                    h, c = h[torch.arange(B)], c[torch.arange(B)]
                h, c = step(xs[t], h, c)
                if t < T - 1:
                    loss = loss + (h * upstream[t]).sum() + 0.5 * c.sum()
        if not reference_path:   # a pass that asks for x_6 only stops before the tape's first step (t = 4)
            torch.autograd.grad(loss, xs[6], retain_graph=True)
        inputs = [*xs, h_0, c_0, *weights]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        results.append((h.detach(), c.detach(), [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs)]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_switch_environment_variable_and_context_manager():
    """SEQVI_REFERENCE=1 forces the reference path in a new process; ``reference()`` nests and restores."""
    code = "import seqvi.nn as n; print(n.reference_forced())"
    for value, expected in (("1", "True"), ("0", "False"), ("", "False")):
        env = {**os.environ, "SEQVI_REFERENCE": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
    assert not reference_forced()
    with reference():
        assert reference_forced()
        with reference(False):
            assert not reference_forced()
        assert reference_forced()
    assert not reference_forced()
