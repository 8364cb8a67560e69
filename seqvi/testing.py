"""The conformance check: what a model or an inference procedure must pass to work everywhere in seqvi.

Call it from your own pytest::

    from seqvi.testing import check_model, check_inference

    def test_my_model():
        check_model(MyModel)                         # built from MyModel.TEST_CONFIG
        check_model(lambda: MyModel(x_dim=5), data=torch.rand(3, 6, 5))

    def test_my_q():
        check_inference(MyQ, model="vrnn")           # on seqvi's tiny VRNN

``check_model(factory, data=None)`` runs, on a tiny batch (B = 3 sequences of T = 5 steps, one of them
padded after step 3):

1. the contract (``seqvi.models.base``): ``initial_state`` is a tuple of batch-first tensors; ``prior``
   is a Normal over (B, Z); ``emission`` a distribution whose ``log_prob`` sums to (B,); ``features``
   (B, feature_size); ``advance`` returns a state of the same structure and shapes; every conditional
   works row by row (row 0 of a batch equals a batch of row 0);
2. one training step with the direct filtering encoder (when the model has ``features``) and one
   with AVF: finite loss, finite gradients, parameters move; padded steps contribute nothing;
3. every bound (``seqvi.objectives.BOUNDS``: ELBO, IWAE, FIVO) with K = 3: finite, (B,), zero increments
   on padded steps;
4. sampling (``seqvi.engine.sample.sample_sequences``): (N, T, *X), finite, primed steps kept;
5. resume: weights saved through ``seqvi.engine.checkpoint`` and loaded into a freshly built model
   give the same free energy;
6. the fast path against the reference path (``seqvi.nn.reference()``) wherever the model declares
   a fast hook: ``emission_grad`` (against autograd, and AVF's training pass with it on and off) and
   ``rowwise`` (the stacked pass against the per-step loop): values and gradients.

``check_inference(factory, model=...)`` runs 2 to 5 for an inference procedure on a model (a
registered name, a class or a built model). Each failure is an ``AssertionError`` saying what failed.

``factory`` is a class (built with its ``TEST_CONFIG``; a model class without one gets x_dim=6 and
its defaults) or a callable: ``factory()`` for a model, ``factory(model)`` for an inference.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Normal

from seqvi.free_energy import log_likelihood, map_state
from seqvi.inference import INFERENCE
from seqvi.inference.base import Inference
from seqvi.inference.direct import DirectFilter
from seqvi.inference.iterative import AVF
from seqvi.models import MODELS
from seqvi.models.base import SequentialModel
from seqvi.nn import reference
from seqvi.objectives import BOUNDS, Objective, bound, filter_sequence, training_terms

B, T, PARTICLES = 3, 5, 3

__all__ = ["check_model", "check_inference", "build_model", "build_inference", "tiny_data"]


# --------------------------------------------------------------------------- building


def build_model(factory: Any, **overrides) -> SequentialModel:
    """A model from a class (with its ``TEST_CONFIG``, updated by ``overrides``) or a zero-argument callable."""
    if inspect.isclass(factory):
        config = {**(getattr(factory, "TEST_CONFIG", None) or {}), **overrides}
        accepted = inspect.signature(factory.__init__).parameters
        if "x_dim" in accepted and "x_dim" not in config:
            config["x_dim"] = 6
        model = factory(**config)
    else:
        model = factory()
    _expect(isinstance(model, SequentialModel),
            f"the factory gave a {type(model).__name__}, not a seqvi.models.base.SequentialModel")
    return model


def build_inference(factory: Any, model: SequentialModel) -> Inference:
    """An inference procedure on ``model`` from a class (with its ``TEST_CONFIG``) or ``factory(model)``."""
    q = factory(model, **dict(getattr(factory, "TEST_CONFIG", None) or {})) if inspect.isclass(factory) \
        else factory(model)
    _expect(isinstance(q, Inference), f"the factory gave a {type(q).__name__}, not a seqvi.inference.base.Inference")
    return q


def tiny_data(model: SequentialModel, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(x (B, T, *X), mask (B, T)) that fit ``model``'s emission: binary for a Bernoulli, real otherwise;
    sequence 1 ends after 3 steps."""
    g = torch.Generator().manual_seed(seed)
    state = model.condition(model.initial_state(1), None)
    with torch.no_grad():
        p_x = model.emission(model.prior(state).loc, state)
    shape = tuple(p_x.mean.shape[1:])
    x = torch.rand((B, T, *shape), generator=g)
    x = (x > 0.5).float() if isinstance(p_x, Bernoulli) else x
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    return x, mask


# --------------------------------------------------------------------------- checks


def _expect(ok: Any, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _close(a: Tensor, b: Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    try:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    except AssertionError as err:
        raise AssertionError(f"{what} ({' '.join(str(err).split())[:240]})") from None


def _finite(t: Tensor, what: str) -> None:
    _expect(torch.isfinite(t).all(), f"{what} is not finite ({t.flatten()[:6].tolist()})")


def _tensors(state: Any) -> list[Tensor]:
    found = []
    map_state(lambda t: found.append(t) or t, state)
    return found


def _initial_state(model: SequentialModel) -> Any:
    name = type(model).__name__
    state = model.initial_state(B)
    _expect(isinstance(state, tuple), f"{name}.initial_state must return a tuple (a NamedTuple) of tensors, "
                                      f"got {type(state).__name__}")
    for t in _tensors(state):
        _expect(t.shape[:1] == (B,), f"{name}.initial_state({B}): a tensor of shape {tuple(t.shape)} is not "
                                     f"batch-first (B = {B})")
    return state


def _contract(model: SequentialModel, x: Tensor) -> None:
    name = type(model).__name__
    for attr in ("x_dim", "z_dim", "feature_size"):
        _expect(isinstance(getattr(model, attr, None), int), f"{name}.{attr} must be an int (the contract)")
    state = model.condition(_initial_state(model), None)
    p_z = model.prior(state)
    _expect(isinstance(p_z, Normal), f"{name}.prior must return a torch Normal, got {type(p_z).__name__}")
    _expect(tuple(p_z.loc.shape) == (B, model.z_dim), f"{name}.prior: loc is {tuple(p_z.loc.shape)}, "
                                                      f"expected (B, z_dim) = {(B, model.z_dim)}")
    z = p_z.rsample()
    p_x = model.emission(z, state)
    _expect(isinstance(p_x, Distribution), f"{name}.emission must return a torch Distribution, "
                                           f"got {type(p_x).__name__}")
    x_t = x[:, 0]
    _expect(tuple(p_x.mean.shape) == tuple(x_t.shape), f"{name}.emission: mean is {tuple(p_x.mean.shape)}, "
                                                       f"a frame of the data is {tuple(x_t.shape)}")
    ll = log_likelihood(p_x, x_t)
    _expect(ll.shape == (B,), f"{name}.emission: log_prob summed over the frame is {tuple(ll.shape)}, not (B,)")
    _finite(ll, f"{name}.emission log-likelihood")
    if _has_features(model, x_t, state):
        f = model.features(x_t, state)
        _expect(tuple(f.shape) == (B, model.feature_size),
                f"{name}.features is {tuple(f.shape)}, expected (B, feature_size) = {(B, model.feature_size)}")
    new = model.advance(state, x_t, z)
    _expect(type(new) is type(state), f"{name}.advance returned a {type(new).__name__}, "
                                      f"the state was a {type(state).__name__}")
    for a, b in zip(_tensors(new), _tensors(state)):
        _expect(a.shape == b.shape, f"{name}.advance changed a state tensor's shape {tuple(b.shape)} -> "
                                    f"{tuple(a.shape)}")
    _rowwise_in_batch(model, x_t)


def _rowwise_in_batch(model: SequentialModel, x_t: Tensor) -> None:
    """Row 0 of a batch gives what a batch of row 0 gives (batch-first, no mixing across sequences)."""
    name = type(model).__name__
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = model.condition(model.initial_state(B), None)
            z = model.prior(state).loc
            state = model.advance(state, x_t, z)   # a state that differs per row
            one = map_state(lambda t: t[:1], state)
            _close(model.prior(one).loc, model.prior(state).loc[:1], f"{name}.prior: row 0 alone differs from "
                                                                   f"row 0 in a batch (not batch-first?)")
            z = model.prior(state).loc
            _close(model.emission(z[:1], one).mean, model.emission(z, state).mean[:1],
                   f"{name}.emission: row 0 alone differs from row 0 in a batch (not batch-first?)")
    finally:
        model.train(was)


def _has_features(model: SequentialModel, x_t: Tensor, state: Any) -> bool:
    try:
        model.features(x_t, state)
    except NotImplementedError:
        return False
    return True


def _train_step(model: SequentialModel, q: Inference, x: Tensor, mask: Tensor, what: str) -> None:
    params = [p for p in list(model.parameters()) + list(q.parameters()) if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    torch.manual_seed(1)
    terms = filter_sequence(model, q, x, mask)
    _expect(terms.recon.shape == (B, T) and terms.kl.shape == (B, T),
            f"{what}: per-step terms are {tuple(terms.recon.shape)}/{tuple(terms.kl.shape)}, expected (B, T)")
    _expect(bool(torch.all(terms.recon[mask == 0] == 0) and torch.all(terms.kl[mask == 0] == 0)),
            f"{what}: padded steps have nonzero free energy terms")
    _expect(bool(torch.all(terms.kl[mask > 0] >= -1e-5)), f"{what}: a KL term is negative")
    loss = training_terms(model, q, x, mask, Objective(BOUNDS["elbo"])).loss_sum / mask.sum()
    _finite(loss.detach(), f"{what}: the training loss")
    opt.zero_grad()
    loss.backward()
    for p in params:
        if p.grad is not None:
            _finite(p.grad, f"{what}: a gradient")
    _expect(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()),
            f"{what}: no model parameter gets a gradient")
    opt.step()
    _expect(any(not torch.equal(a, p.detach()) for a, p in zip(before, params)),
            f"{what}: one optimizer step changed no parameter")


def _bounds(model: SequentialModel, q: Inference, x: Tensor, mask: Tensor, what: str) -> None:
    with torch.no_grad():
        for key, which in BOUNDS.items():
            torch.manual_seed(2)
            run = bound(model, q, x, mask, which, PARTICLES)
            label = which.label(PARTICLES)
            _expect(run.log_p_hat.shape == (B,), f"{what}: {label} log p_hat is {tuple(run.log_p_hat.shape)}, "
                                                 f"expected (B,)")
            _finite(run.log_p_hat, f"{what}: {label}")
            _expect(bool(torch.all(run.increments[mask == 0] == 0)), f"{what}: {label} counts padded steps")


def _sampling(model: SequentialModel, q: Inference, x: Tensor, what: str) -> None:
    from seqvi.engine.sample import sample_sequences

    was = (model.training, q.training)
    try:
        out = sample_sequences(model, q, 2, T, seed=0)
        _expect(tuple(out.shape) == (2, T, *x.shape[2:]), f"{what}: sampled {tuple(out.shape)}, expected "
                                                          f"(N, T, *X) = {(2, T, *x.shape[2:])}")
        _finite(out, f"{what}: a sample")
        primed = sample_sequences(model, q, 2, T, prime=x[:2, :2], seed=0)
        _expect(torch.equal(primed[:, :2], x[:2, :2]), f"{what}: primed steps are not kept as given")
    finally:
        model.train(was[0])
        q.train(was[1])


def _free_energy(model, q, x, mask) -> Tensor:
    with torch.no_grad():
        torch.manual_seed(3)
        return filter_sequence(model, q, x, mask).free_energy


def _resume(model: SequentialModel, q: Inference, rebuild: Callable[[], tuple], x: Tensor, mask: Tensor,
            what: str) -> None:
    from seqvi.engine import checkpoint

    model.eval(), q.eval()
    want = _free_energy(model, q, x, mask)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.pt"
        checkpoint.save({"model": model.state_dict(), "inference": q.state_dict()}, path)
        state = checkpoint.load(path)
    torch.manual_seed(12345)   # other initial weights: only loading can make them equal
    model2, q2 = rebuild()
    try:
        model2.load_state_dict(state["model"])
        q2.load_state_dict(state["inference"])
    except RuntimeError as err:
        raise AssertionError(f"{what}: saved weights do not load into a new build ({str(err).splitlines()[0]})") \
            from None
    model2.eval(), q2.eval()
    _close(_free_energy(model2, q2, x, mask), want, f"{what}: after save and load the free energy differs")
    model.train(), q.train()


def _fast_against_reference(model: SequentialModel, q: Inference, x: Tensor, mask: Tensor, what: str) -> None:
    """The training pass's values and gradients with the fast path on and forced off."""
    runs = []
    params = [p for p in list(model.parameters()) + list(q.parameters()) if p.requires_grad]
    for reference_path in (False, True):
        with reference(reference_path):
            torch.manual_seed(5)
            terms = training_terms(model, q, x, mask, Objective(BOUNDS["elbo"], kl_weight=0.7))
            grads = torch.autograd.grad(terms.loss_sum, params, allow_unused=True)
        runs.append((terms.loss_sum.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
    (fast, g_fast), (ref, g_ref) = runs
    _close(fast, ref, f"{what}: the fast path's loss differs from the reference path's (seqvi.nn.reference)",
           rtol=1e-5, atol=1e-4)
    for i, (a, b) in enumerate(zip(g_fast, g_ref)):
        _close(a, b, f"{what}: the fast path's gradient of parameter #{i} differs from the reference path's")


def _emission_grad(model: SequentialModel, x: Tensor) -> None:
    name = type(model).__name__
    state = model.condition(model.initial_state(B), None)
    torch.manual_seed(6)
    z = (2 * torch.randn(B, model.z_dim)).requires_grad_(True)
    recon = -log_likelihood(model.emission(z, state), x[:, 0])
    (grad,) = torch.autograd.grad(recon.sum(), z)
    by_hand = model.emission_grad(z.detach(), state, x[:, 0])
    _expect(by_hand is not None, f"{name}.emission_grad returned None on plain inputs")
    _close(by_hand[0], recon.detach(), f"{name}.emission_grad: R differs from -log p(x | z, h)", rtol=1e-5)
    _close(by_hand[1], grad, f"{name}.emission_grad: dR/dz differs from autograd's")
    with reference():
        _expect(model.emission_grad(z.detach(), state, x[:, 0]) is None,
                f"{name}.emission_grad must return None under seqvi.nn.reference() (the reference path)")


# --------------------------------------------------------------------------- the two entry points


def check_model(factory: Any, data: Optional[Tensor] = None, *, seed: int = 0) -> None:
    """Run the conformance check (module docstring) on a model; AssertionError says what failed."""
    torch.manual_seed(seed)
    model = build_model(factory)
    name = type(model).__name__
    _initial_state(model)
    if data is None:
        x, mask = tiny_data(model, seed)
    else:
        x = data[:B, :T].float()
        _expect(x.shape[:2] == (B, T), f"data must hold at least {B} sequences of {T} steps, got {tuple(data.shape)}")
        mask = torch.ones(B, T)
        mask[1, 3:] = 0
    _contract(model, x)
    qs = {}
    state = model.condition(model.initial_state(B), None)
    if _has_features(model, x[:, 0], state):
        qs["direct"] = lambda m: DirectFilter(m, hidden_sizes=[8])
    qs["avf"] = lambda m: AVF(m, iterations=2, hidden_size=16)
    for q_name, make_q in qs.items():
        what = f"{name} with {q_name}"
        torch.manual_seed(seed)
        model = build_model(factory)
        q = make_q(model)
        _train_step(model, q, x, mask, what)
        _bounds(model, q, x, mask, what)
        _sampling(model, q, x, what)
        _resume(model, q, lambda: _rebuilt(factory, make_q), x, mask, what)
        if model.has("emission_grad") or model.rowwise:
            _fast_against_reference(model, q, x, mask, what)
    if model.has("emission_grad"):
        _emission_grad(model, x)


def _rebuilt(factory, make_q):
    model = build_model(factory)
    return model, make_q(model)


def check_inference(factory: Any, model: Any = None, data: Optional[Tensor] = None, *, seed: int = 0) -> None:
    """Run checks 2 to 5 (and the fast path) for an inference procedure on ``model``: a registered name, a
    model class or factory (default: the class's ``TEST_MODEL``, else seqvi's tiny VRNN)."""
    model = model if model is not None else getattr(factory, "TEST_MODEL", "vrnn")
    model_factory = MODELS[model] if isinstance(model, str) else model
    torch.manual_seed(seed)
    m = build_model(model_factory)
    q = build_inference(factory, m)
    what = f"{type(q).__name__} on {type(m).__name__}"
    x, mask = (tiny_data(m, seed) if data is None else (data[:B, :T].float(), torch.ones(B, T)))
    _train_step(m, q, x, mask, what)
    _bounds(m, q, x, mask, what)
    _sampling(m, q, x, what)
    _resume(m, q, lambda: _rebuilt(model_factory, lambda mm: build_inference(factory, mm)), x, mask, what)
    if m.has("emission_grad") or m.rowwise:
        _fast_against_reference(m, q, x, mask, what)


def registered_models() -> dict:
    """Every model name a recipe can use by name (seqvi's and installed plugins'), loaded: for a test loop."""
    from seqvi import registry

    return {name: entry.load() for name, entry in registry.entries("models", MODELS).items()}


def registered_inference() -> dict:
    from seqvi import registry

    return {name: entry.load() for name, entry in registry.entries("inference", INFERENCE).items()}
