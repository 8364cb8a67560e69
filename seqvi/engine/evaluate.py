"""Evaluation: the free energy of a whole split per time step, tighter bounds, the gap.

Every sequence is filtered whole (no crops) under a fixed seed, so a number
can be reproduced. Each pass over a batch draws from its own stream, derived
from (seed, batch, pass): the free energy, the refinement, and each bound, so
a figure does not change with what else is asked (``--bound``, ``--refine``).
Under data parallelism the noise of the whole batch is drawn and sliced
(``noise_shard``), so N processes compute what one does. Per-step sums over sequences are accumulated, so the
report shows F_t, its reconstruction and KL parts, and how many sequences are
still active at t. Optional columns, all in nats (negated log-likelihood
bounds, so lower is better and comparable with F):

* ``-ELBO``, ``-IWAE(K)``, ``-FIVO(K)``: the particle bounds' per-step increments,
* ``-log p (exact)``: when the model offers ``exact_log_likelihood`` (Kalman),
* ``gap``: the amortization gap, the drop of F_t under per-step refinement,
* ``reward NLL``: with rewards (interaction data) and a model with a reward
  head, -log p(r_t | z_t, h), which F and the bounds include,
* ``F (binned)`` and ``recon (binned)``: with the store's ``bin_width``, the
  Gaussian emission scored on quantization bins (TIMIT's 16-bit samples, the
  unit of the AVF paper's table); KL unchanged.

Units: nats per time step = sum over the split / number of real steps;
nats per sequence = the same sum / number of sequences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from seqvi.data.batches import whole_batches
from seqvi.data.store import SplitData
from seqvi.data.atomic import output_target, write_text_atomic
from seqvi.engine.iterations import CURVE_SAMPLES, iteration_curve
from seqvi.errors import SeqviError
from seqvi.free_energy import noise_shard
from seqvi.inference.refine import refine as refine_step
from seqvi.objectives import BOUNDS, Bound, bound as run_bound, filter_sequence


def _grow(a: np.ndarray, length: int) -> np.ndarray:
    return np.pad(a, (0, length - len(a))) if length > len(a) else a


@dataclass
class EvalResult:
    split: str
    recon: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (T_max,) sum over sequences
    kl: np.ndarray = field(default_factory=lambda: np.zeros(0))      # (T_max,)
    active: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T_max,) sequences with step t
    num_sequences: int = 0
    extra: dict = field(default_factory=dict)                        # column -> (T_max,) sums, nats

    @property
    def steps(self) -> int:
        return int(self.active.sum())

    @property
    def total(self) -> float:
        return float(self.recon.sum() + self.kl.sum())

    @property
    def nats_per_step(self) -> float:
        return self.total / max(self.steps, 1)

    @property
    def nats_per_sequence(self) -> float:
        return self.total / max(self.num_sequences, 1)

    def add(self, recon: np.ndarray, kl: np.ndarray, mask: np.ndarray, **extra: np.ndarray) -> None:
        length = max(recon.shape[1], len(self.recon))
        self.recon, self.kl, self.active = (_grow(a, length) for a in (self.recon, self.kl, self.active))
        self.recon[:recon.shape[1]] += recon.sum(0)
        self.kl[:recon.shape[1]] += kl.sum(0)
        self.active[:recon.shape[1]] += mask.sum(0)
        for name, values in extra.items():
            column = _grow(self.extra.get(name, np.zeros(0)), length)
            column[:values.shape[1]] += values.sum(0)
            self.extra[name] = column
        self.num_sequences += recon.shape[0]

    def column_totals(self, name: str) -> tuple[float, float]:
        total = float(self.extra[name].sum())
        return total / max(self.steps, 1), total / max(self.num_sequences, 1)

    def to_dict(self) -> dict:
        out = {
            "split": self.split,
            "nats_per_step": self.nats_per_step,
            "nats_per_sequence": self.nats_per_sequence,
            "recon_per_step": float(self.recon.sum()) / max(self.steps, 1),
            "kl_per_step": float(self.kl.sum()) / max(self.steps, 1),
            "num_sequences": self.num_sequences,
            "num_steps": self.steps,
            "per_step": {"recon": self.recon.tolist(), "kl": self.kl.tolist(),
                         "active": self.active.astype(int).tolist()},
        }
        for name in self.extra:
            per_step, per_seq = self.column_totals(name)
            out.setdefault("columns", {})[name] = {"nats_per_step": per_step, "nats_per_sequence": per_seq}
            out["per_step"][name] = self.extra[name].tolist()
        return out


@torch.no_grad()
def evaluate(model: Any, inference: Any, split: SplitData, name: str, *, batch_size: int,
             device: torch.device, seed: int = 0, bounds: tuple[Bound, ...] = (), particles: int = 1,
             refine: dict | None = None, progress: Callable[[int, int], None] | None = None,
             dist: Any = None, bin_width: float | None = None) -> EvalResult:
    """Free energy (and optional bounds, exact likelihood, gap) of every sequence of ``split``.

    The global RNG is left untouched (evaluation runs under its own seeds, module docstring).
    Under data parallelism (``dist``) each process takes its rows of every
    batch and the sums are all-reduced, so every process returns the totals.
    """
    result = EvalResult(name)
    was_training = model.training, inference.training
    model.eval()
    inference.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    exact = model.exact_log_likelihood if model.has("exact_log_likelihood") else None
    total = len(split)
    with torch.random.fork_rng(devices=devices):
        for i, batch in enumerate(whole_batches(split, batch_size)):
            size = len(batch.x)
            rows = torch.arange(size)
            if dist is not None and dist.active:
                rows = rows[dist.rank::dist.world]
                batch = batch._replace(**{k: None if v is None else v[dist.rank::dist.world]
                                          for k, v in batch._asdict().items() if k != "indices"})
                if len(batch.x) == 0:
                    continue
            batch = batch.to(device)
            x, mask = batch.x, batch.mask
            refine_fn = None
            if refine:
                generator = torch.Generator(device=device).manual_seed(_stream(seed, i, "refine"))
                refine_fn = partial(refine_step, generator=generator, **refine)
            with noise_shard(rows, size):
                torch.manual_seed(_stream(seed, i, "free energy"))
                terms = filter_sequence(model, inference, x, mask, inputs=batch.inputs, rewards=batch.rewards,
                                        refine=refine_fn, bin_width=bin_width)
                extra = {}
                if terms.reward_nll is not None:
                    extra["reward NLL"] = terms.reward_nll
                if terms.recon_binned is not None:
                    extra["F (binned)"] = terms.recon_binned + terms.kl
                    extra["recon (binned)"] = terms.recon_binned
                for which in bounds:
                    torch.manual_seed(_stream(seed, i, which.name))
                    extra[which.label(particles)] = -run_bound(model, inference, x, mask, which, particles,
                                                               inputs=batch.inputs, rewards=batch.rewards).increments
            if exact is not None:
                extra["-log p (exact)"] = -exact(x, mask)
            if terms.gap is not None:
                extra["gap"] = terms.gap
            result.add(terms.recon.double().cpu().numpy(), terms.kl.double().cpu().numpy(),
                       mask.double().cpu().numpy(),
                       **{k: (v * mask).double().cpu().numpy() for k, v in extra.items()})
            if progress:
                progress(result.num_sequences, total)
    model.train(was_training[0])
    inference.train(was_training[1])
    if dist is not None and dist.active:
        result = _all_reduce(result, dist)
    return result


def _stream(seed: int, batch: int, name: str) -> int:
    """The seed of one pass over one batch: a pure function of (seed, batch, pass name)."""
    words = [int(b) for b in name.encode()]
    return int(np.random.SeedSequence([seed, batch, *words]).generate_state(1)[0])


def _all_reduce(result: EvalResult, dist: Any) -> EvalResult:
    from seqvi.engine import distributed

    names = sorted(result.extra)
    length = int(distributed.all_reduce_max(dist, torch.tensor([float(len(result.recon))])).item())
    rows = [_grow(a, length) for a in (result.recon, result.kl, result.active)]
    rows += [_grow(result.extra[n], length) for n in names]
    stacked = torch.tensor(np.stack(rows + [np.full(length, float(result.num_sequences))]), dtype=torch.float64)
    stacked = distributed.all_reduce_sum(dist, stacked).numpy()
    out = EvalResult(result.split, stacked[0], stacked[1], stacked[2], int(round(stacked[-1][0])) if length else 0,
                     {n: stacked[3 + i] for i, n in enumerate(names)})
    return out


def bound_choices(name: str) -> tuple[Bound, ...]:
    """``--bound`` of ``seqvi eval``: none, all, or one name of ``BOUNDS``."""
    choices = {"none": (), "all": tuple(BOUNDS.values()), **{k: (b,) for k, b in BOUNDS.items()}}
    if name not in choices:
        raise SeqviError(f"--bound {name}: expected one of {', '.join(choices)}")
    return choices[name]


def evaluate_run(run: Any, split: str, *, bound: str = "none", particles: int = 16,
                 iterations: int | None = None, refine_steps: int = 0, refine_lr: float = 0.05, seed: int = 0,
                 json_out: Path | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Everything ``seqvi eval`` shows and writes, for a loaded run (``seqvi.engine.run.LoadedRun``):

    ``result`` (EvalResult), ``payload`` (the JSON, which names the checkpoint), ``curve`` (AVF's
    per-iteration free energy, or None), ``json`` (``<run>/eval/<split>-<checkpoint>.json``, e.g.
    ``test-best.json``, so that evaluating best.pt and last.pt keeps both; a copy at
    ``<run>/eval/<split>.json`` is the latest, and one at ``json_out`` if given) and ``tag`` (the
    checkpoint's name). ``progress(task, done, total)`` reports the passes in sequences: the free energy
    (with the bounds and the gap, computed batch by batch in the same pass), then AVF's curve."""
    bounds = bound_choices(bound)
    if json_out:
        output_target(json_out)   # a FIFO, device or folder is refused before the evaluation, not after
    inference = run.inference
    if iterations is not None:
        if not inference.iterative:
            raise SeqviError(f"--iterations: the run's inference '{run.recipe.inference['name']}' is not iterative")
        inference.eval_iterations = iterations
    report = (lambda task: (lambda done, total: progress(task, done, total))) if progress else (lambda task: None)
    passes = ["free energy"] + [b.label(particles) for b in bounds]
    passes += [f"gap ({refine_steps} refinement step{'s' * (refine_steps != 1)})"] if refine_steps else []
    with run.open_store() as store:
        data = store.split(split)
        check_particle_memory(data, run.recipe.data.eval_batch_size, bounds, particles, run.device)
        result = evaluate(run.model, inference, data, split, device=run.device,
                          batch_size=run.recipe.data.eval_batch_size, seed=seed, bounds=bounds,
                          particles=particles, refine={"steps": refine_steps, "lr": refine_lr} if refine_steps else None,
                          bin_width=store.attrs.get("bin_width"), progress=report(f"{split}: {', '.join(passes)}"))
        curve = None
        if inference.iterative:
            k = iterations or max(inference.iterations, 5)
            curve = iteration_curve(run.model, inference, data, iterations=k,
                                    batch_size=run.recipe.data.eval_batch_size, device=run.device, seed=seed,
                                    progress=report(f"{split}: AVF curve, {k} iterations"))
    tag = run.checkpoint.stem
    payload = {**result.to_dict(), "checkpoint": str(run.checkpoint), "checkpoint_name": tag,
               "epoch": run.epoch, "step": run.step, "trained_iterations": getattr(inference, "iterations", None),
               "dataset": run.spec.dataset, "seed": seed, "particles": particles,
               "iterations": iterations, "refine_steps": refine_steps}
    if curve is not None:
        payload["iteration_curve"] = curve.tolist()
        payload["iteration_curve_samples"] = CURVE_SAMPLES
    out = run.run_dir / "eval" / f"{split}-{tag}.json"
    text = json.dumps(payload, indent=1)
    for path in (out, run.run_dir / "eval" / f"{split}.json", Path(json_out) if json_out else None):
        if path is not None:
            write_text_atomic(path, text)
    return {"result": result, "payload": payload, "curve": curve, "json": out, "tag": tag,
            "curve_samples": CURVE_SAMPLES}


# The particle bounds stack K copies of each batch (rows k * B + b, seqvi/objectives.py); the repeated
# observations, mask, inputs and rewards are (K B, T, .) float32, and the per-step work is of the same
# order again: about four times the repeated batch is needed at once (measured: a 4 GB address-space
# limit fails at 40,000 particles on the tests' tiny store, where twice would have allowed 42,000).
WORKING_SET = 4.0


def particle_bytes(split: SplitData, batch_size: int) -> int:
    """Bytes per particle of the largest evaluation batch: WORKING_SET x B x T x (D + 1 + A + R) x 4."""
    order = np.sort(split.lengths[split.lengths > 0])
    width = int(np.prod(split.frames.shape[1:])) + 1 + (split.inputs.shape[1] if split.has_inputs else 0) \
        + int(split.has_rewards)
    largest = max((len(order[i:i + batch_size]) * int(order[i:i + batch_size].max())
                   for i in range(0, len(order), batch_size)), default=0)
    return int(WORKING_SET * largest * width * 4)


def available_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what limits them): free device memory on CUDA; else the smallest of the memory available
    to the machine and this process's address-space limit (ulimit -v) less what it already maps."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]), f"free on {device}"
    import resource

    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            info = dict(line.split(":", 1) for line in handle)
        found.append((int(info["MemAvailable"].split()[0]) * 1024, "available on this machine"))
    except (OSError, KeyError, ValueError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/status", encoding="ascii") as handle:
                used = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
        except (OSError, StopIteration, ValueError):
            used = 0
        found.append((max(0, limit - used), "left under this process's address-space limit (ulimit -v)"))
    return min(found) if found else (1 << 62, "unknown")


def check_particle_memory(split: SplitData, batch_size: int, bounds: tuple[Bound, ...], particles: int,
                          device: torch.device) -> None:
    """Refuse, in one line and before any work, particle bounds whose batches cannot fit in memory.

    Chunking the particles would keep IWAE exact (a log-sum-exp over chunks) but not FIVO, whose
    resampling draws across all K particles of a sequence; so both are refused with the estimate."""
    heavy = [b for b in bounds if b.num_particles(particles) > 1]
    if not heavy:
        return
    per_particle = particle_bytes(split, batch_size)
    need = per_particle * particles
    free, what = available_bytes(device)
    if need <= free:
        return
    names = "/".join(b.label(particles) for b in heavy)
    fits = free // max(per_particle, 1)
    raise SeqviError(f"--particles {particles}: {names} would hold about {need / 1e9:.1f} GB at once (the largest "
                     f"batch of data.eval_batch_size={batch_size} sequences repeated {particles} times), more than "
                     f"the {free / 1e9:.1f} GB {what}; use --particles {fits} or fewer"
                     + (" (or a smaller data.eval_batch_size)" if batch_size > 1 else ""))
