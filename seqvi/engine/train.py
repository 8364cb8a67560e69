"""The training loop: read top to bottom, it is the whole run.

Per step (``train_step``): a batch of random crops (B, L, *X) with mask
(B, L) -> the objective's sum (``seqvi.objectives.training_terms``: the
KL-annealed free energy, or an IWAE/FIVO bound) -> one ``backward`` -> Adam
step with the global gradient norm clipped. Per epoch:
learning-rate decay, validation on whole sequences, ``last.pt`` (and
``best.pt`` when validation improves); ``train.checkpoint_every`` adds
checkpoints within an epoch.

Exact resume: the batch order and crops are pure functions of
``(seed, epoch, batch)`` and the checkpoint holds model, inference,
optimizer, scheduler, position and RNG state, so a run killed at any point
and resumed gives bitwise the parameters of an uninterrupted one.

Under torchrun, each process takes its rows of every global batch
(``seqvi.engine.distributed``). SIGTERM / SIGUSR1 (SLURM preemption) finish
the current step, write ``last.pt`` and raise ``Preempted``; the CLI exits
with ``REQUEUE_EXIT`` so a batch script can requeue the job. The loop
reports through ``events`` (a callable taking an event name and a dict) and
never prints.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from seqvi.config import Recipe
from seqvi.data.batches import Batch, crop_batch, epoch_order
from seqvi.engine import checkpoint, distributed, runs
from seqvi.engine.evaluate import evaluate
from seqvi.engine.setup import DataSpec, build, open_store, resolve_device
from seqvi.errors import CheckpointError, SeqviError
from seqvi.free_energy import noise_shard
from seqvi.objectives import BOUNDS, Objective, TrainTerms, kl_weight, training_terms

Events = Callable[[str, dict], None]
REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again later"; the sbatch scripts requeue on it


class Preempted(SeqviError):
    """Training stopped on a signal after writing a checkpoint; rerun to resume."""

    exit_code = REQUEUE_EXIT


@dataclass
class TrainResult:
    run_dir: Path
    step: int = 0
    epoch: int = 0
    best_valid: float = math.inf
    last_valid: float = math.inf
    resumed_step: int | None = None
    replaced: list = field(default_factory=list)
    seconds: float = 0.0
    train_steps: int = 0        # real time steps trained in this call (all processes)
    skipped_nonfinite: int = 0


class _StopFlag:
    """Signal handlers that only raise a flag; the loop acts at the end of a step."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signal: int = 0
        self._old = {}

    def __enter__(self):
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. a test runner's worker)
                    pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(recipe: Recipe, run_dir: str | Path, *, device: str = "auto", force: bool = False,
          events: Events | None = None, source: str = "<recipe>") -> TrainResult:
    dist = distributed.setup(device)
    try:
        return _train(recipe, Path(run_dir), dist, distributed.device_for(dist, device), force,
                      events if dist.main else None, source)
    finally:
        distributed.teardown(dist)


def _train(recipe: Recipe, run_dir: Path, dist: distributed.Dist, device: str, force: bool,
           events: Events | None, source: str = "<recipe>") -> TrainResult:
    events = events or (lambda kind, info: None)
    dev = resolve_device(device)
    cfg = recipe.train
    if recipe.objective.bound not in BOUNDS:
        raise SeqviError(f"objective.bound {recipe.objective.bound!r}: expected one of {', '.join(BOUNDS)}")
    bound, particles = BOUNDS[recipe.objective.bound], recipe.objective.particles
    store = open_store(recipe)
    spec = DataSpec.from_store(store, recipe.data.dataset)
    train_split = store.split("train")
    valid_split = store.split(cfg.valid_split)

    config = recipe.to_dict()
    resume, replaced = runs.prepare(run_dir, config, force) if dist.main else (False, [])
    distributed.barrier(dist)
    resume = (run_dir / "checkpoints" / "last.pt").exists() if not dist.main else resume
    model, inference = build(recipe, spec, dev, source)
    theta, phi = list(model.parameters()), list(inference.parameters())
    trainee = Trainee(model, inference, theta + phi)
    # Adam is per parameter, so two groups are two optimizers with their own rates.
    optimizer = torch.optim.Adam([{"params": theta, "lr": cfg.lr},
                                  {"params": phi, "lr": cfg.inference_lr or cfg.lr}])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    metrics = runs.Metrics(run_dir / "metrics.jsonl")
    ckpt_dir = run_dir / "checkpoints"
    result = TrainResult(run_dir, replaced=replaced)

    epoch, start_batch, step = 0, 0, 0
    torch.manual_seed(recipe.seed + 1)  # sampling noise stream, distinct from the init stream
    marker = run_dir / "preempted"  # tells a batch script to requeue; cleared when training restarts
    if dist.main:
        marker.unlink(missing_ok=True)
    if resume:
        state = checkpoint.load(ckpt_dir / "last.pt", map_location=dev)
        if not isinstance(state.get("data"), dict) or state["data"].get("x_dim") != spec.x_dim:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'}: trained on data of another shape than {spec.store}")
        try:
            model.load_state_dict(state["model"])
            inference.load_state_dict(state["inference"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            checkpoint.set_rng_state(state["rng"])
            epoch, start_batch, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
            result.best_valid = float(state["best"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'}: cannot resume from it ({checkpoint.reason(err)}); "
                                  f"delete {ckpt_dir} or use another --run-dir to start afresh") from None
        result.resumed_step = step
        if dist.main:
            metrics.truncate_after(step)

    def save(name: str, epoch_: int, batch_: int) -> None:
        if dist.main:
            checkpoint.save({
                "config": config, "data": vars(spec), "model": model.state_dict(),
                "inference": inference.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch_, "batch": batch_, "step": step,
                "best": result.best_valid, "rng": checkpoint.rng_state(), "world_size": dist.world,
            }, ckpt_dir / name)

    batches_per_epoch = len(epoch_order(train_split, recipe.data.batch_size, recipe.seed, 0,
                                        recipe.data.min_length))
    if batches_per_epoch == 0:
        raise SeqviError(f"{spec.store}: no training sequence has at least data.min_length="
                         f"{recipe.data.min_length} steps")
    events("start", {"run_dir": str(run_dir), "resumed_step": result.resumed_step, "replaced": replaced,
                     "total_steps": cfg.epochs * batches_per_epoch, "step": step, "world_size": dist.world,
                     "parameters": sum(p.numel() for p in trainee.params), "device": str(dev)})
    started = time.perf_counter()
    model.train()
    inference.train()
    with _StopFlag() as stop:
        while epoch < cfg.epochs:
            order = epoch_order(train_split, recipe.data.batch_size, recipe.seed, epoch, recipe.data.min_length,
                                recipe.data.bucket)
            for b in range(start_batch, len(order)):
                beta = kl_weight(epoch, b, len(order), recipe.objective.kl_anneal_epochs, recipe.objective.kl_start)
                batch = crop_batch(train_split, order[b], recipe.data.crop_length, recipe.seed, epoch, b,
                                   rows=distributed.rows(dist, len(order[b])))
                rows = torch.arange(len(order[b]))[distributed.rows(dist, len(order[b]))]
                with noise_shard(rows, len(order[b])):
                    stats = train_step(trainee, batch.to(dev), Objective(bound, particles, beta), dist, cfg.clip_grad)
                real_steps, finite = stats.steps, stats.finite
                loss_sum = stats.loss
                if not finite:
                    if not cfg.skip_nonfinite:
                        raise SeqviError(f"non-finite loss at step {step + 1} (epoch {epoch + 1}); last good "
                                         f"checkpoint: {ckpt_dir / 'last.pt'}; lower train.lr or set "
                                         f"train.skip_nonfinite: true")
                    result.skipped_nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                else:
                    optimizer.step()
                step += 1
                result.train_steps += real_steps
                value = loss_sum / max(real_steps, 1)
                events("step", {"step": step, "epoch": epoch + 1, "loss": value})
                if dist.main and step % cfg.log_every == 0:
                    metrics.log({"step": step, "epoch": epoch + 1, "loss": value, "kl_weight": beta,
                                 "lr": optimizer.param_groups[0]["lr"], "finite": finite, "time": time.time()})
                at_end = b + 1 == len(order)
                if not at_end and (_agreed_stop(dist, stop.signal)
                                   or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    save("last.pt", epoch, b + 1)
                    if stop.signal:
                        _mark_preempted(dist, marker, step)
                        raise Preempted(f"stopped by signal {stop.signal} at step {step}; checkpoint "
                                        f"{ckpt_dir / 'last.pt'} written; rerun the same command to resume")
            start_batch = 0
            epoch += 1
            scheduler.step()
            valid = evaluate(model, inference, valid_split, cfg.valid_split, device=dev,
                             batch_size=recipe.data.eval_batch_size, seed=recipe.seed, dist=dist)
            result.last_valid = valid.nats_per_step
            improved = valid.nats_per_step < result.best_valid
            if improved:
                result.best_valid = valid.nats_per_step
            record = {"step": step, "epoch": epoch, "valid_nats_per_step": valid.nats_per_step,
                      "valid_nats_per_sequence": valid.nats_per_sequence, "best": improved,
                      "lr": optimizer.param_groups[0]["lr"], "time": time.time()}
            if dist.main:
                metrics.log(record)  # before the checkpoint: a crash in between drops it on resume
            save("last.pt", epoch, 0)
            if improved:
                save("best.pt", epoch, 0)
            events("epoch", record)
            if _agreed_stop(dist, stop.signal) and epoch < cfg.epochs:
                _mark_preempted(dist, marker, step)
                raise Preempted(f"stopped by signal {stop.signal} after epoch {epoch}; checkpoint "
                                f"{ckpt_dir / 'last.pt'} written; rerun the same command to resume")
    store.close()
    result.step, result.epoch = step, epoch
    result.seconds = time.perf_counter() - started
    return result


class Trainee(NamedTuple):
    """What a training step updates: the model, the inference, and their parameters (theta + phi)."""
    model: Any
    inference: Any
    params: list


class StepStats(NamedTuple):
    loss: float        # global sum of the objective over real steps (this step's batch)
    recon: float       # global sums of its reconstruction and KL parts (free energy objective; NaN otherwise)
    kl: float
    steps: int         # real time steps in the global batch
    finite: bool
    grad_norm: float   # global gradient norm before clipping


def train_step(trainee: Trainee, batch: Batch, objective: Objective, dist: distributed.Dist,
               clip_grad: float) -> StepStats:
    """Forward and backward of this process's share of one batch: one ``loss.backward()``, gradients
    all-reduced and clipped. The optimizer step is the caller's."""
    x, mask = batch.x, batch.mask
    local = TrainTerms(x.new_zeros(()), 0.0, 0.0, 0.0)
    if x.shape[0] > 0:
        local = training_terms(trainee.model, trainee.inference, x, mask, objective, inputs=batch.inputs)
    stats = distributed.all_reduce_sum(dist, torch.tensor(
        [local.value, float(mask.sum()), float(not torch.isfinite(local.loss_sum)), local.recon, local.kl],
        dtype=torch.float64))
    total, count, nonfinite, recon, kl = stats.tolist()
    if nonfinite > 0:
        return StepStats(total, recon, kl, int(count), False, math.nan)
    for p in trainee.params:
        p.grad = None
    if x.shape[0] > 0:
        (local.loss_sum / max(count, 1.0)).backward()
    distributed.all_reduce_gradients(dist, trainee.params)
    norm = _grad_norm(trainee.params, clip_grad)
    return StepStats(total, recon, kl, int(count), True, norm)


def _grad_norm(params: list, clip_grad: float) -> float:
    """The global gradient norm; clipped to ``clip_grad`` when that is positive."""
    if clip_grad > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip_grad))
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def _mark_preempted(dist: distributed.Dist, marker: Path, step: int) -> None:
    if dist.main:
        runs.write_text_atomic(marker, f"{step}\n")


def _agreed_stop(dist: distributed.Dist, signum: int) -> bool:
    """True on every process when any process was signalled."""
    if not dist.active:
        return bool(signum)
    return bool(distributed.all_reduce_sum(dist, torch.tensor([float(bool(signum))])).item() > 0)
