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
(``seqvi.engine.distributed``). The loop reports through ``events`` (a
callable taking an event name and a dict) and never prints.

What it records (rank 0): ``metrics.jsonl`` gets a step line every
``train.log_every`` steps (loss, its reconstruction and KL parts, KL weight,
learning rates, gradient norm before clipping) and an epoch line after each
validation (the epoch's figures from ``seqvi.engine.tally``, the validation's
free energy with its reconstruction and KL parts, and timings); the ``epoch``
event carries the same record. ``train.tensorboard`` writes the same records
to TensorBoard (``seqvi.engine.board``).

Stopping early, always after a whole step and with ``last.pt`` written, so a
rerun of the same command resumes exactly:

* SIGTERM / SIGUSR1 (SLURM preemption): raise ``Preempted``, leave the
  ``preempted`` marker; the CLI exits with ``REQUEUE_EXIT`` (75) so a batch
  script requeues the job.
* SIGINT (Ctrl-C): raise ``Interrupted``; the CLI exits 130 (what a shell
  reports for Ctrl-C). No marker: nothing should requeue what a person
  stopped. A second Ctrl-C raises ``KeyboardInterrupt`` at once (the last
  checkpoint stays).
* ``train.max_minutes``: the wall-clock budget of this call is used up;
  returns normally with ``stop="budget"`` (exit 0, not 75: the budget is the
  user's own stopping rule, like ``patience``; a batch script that requeued on
  it would run the whole training anyway, one budget at a time).
* ``train.patience``: N epochs in a row without a lower validation free
  energy; returns with ``stop="patience"``. The count is in the checkpoint, so
  a rerun says the run is done (raise ``train.patience`` to go on).

Each start and stop is recorded in ``history.jsonl`` and ``train.lock`` marks
a running process (``seqvi.engine.lifecycle``, which ``seqvi runs`` reads).
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
from seqvi.engine.board import Board, require as require_tensorboard
from seqvi.engine.evaluate import evaluate
from seqvi.engine.lifecycle import INTERRUPT_EXIT, REQUEUE_EXIT, Interrupted, Lifecycle, Preempted, StopFlag
from seqvi.engine.setup import DataSpec, build, open_store, resolve_device
from seqvi.engine.tally import EpochTally, number
from seqvi.errors import CheckpointError, RecipeError, SeqviError
from seqvi.free_energy import noise_shard
from seqvi.objectives import BOUNDS, Objective, TrainTerms, kl_weight, training_terms

Events = Callable[[str, dict], None]
Picture = Callable[[Any], Any]   # EvalResult -> a matplotlib figure (TensorBoard's per-step free-energy plot)
__all__ = ["train", "TrainResult", "Preempted", "Interrupted", "REQUEUE_EXIT", "INTERRUPT_EXIT"]


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
    stop: str = "finished"      # finished | patience | budget (why this call returned)
    nothing_to_do: bool = False  # the run was already complete (finished, or stopped by patience)
    since_best: int = 0         # epochs since the best validation


def train(recipe: Recipe, run_dir: str | Path, *, device: str = "auto", force: bool = False,
          events: Events | None = None, source: str = "<recipe>", picture: Picture | None = None) -> TrainResult:
    """Train or resume ``run_dir``. ``picture`` draws the validation's per-step free energy for
    TensorBoard (``seqvi.report.free_energy_figure``; without it the board has scalars only)."""
    if recipe.train.tensorboard:
        require_tensorboard()   # before anything starts or is written
    dist = distributed.setup(device)
    finished = False
    try:
        result = _train(recipe, Path(run_dir), dist, distributed.device_for(dist, device), force,
                        events if dist.main else None, source, picture)
        finished = True
        return result
    finally:
        distributed.teardown(dist, together=finished)


def _train(recipe: Recipe, run_dir: Path, dist: distributed.Dist, device: str, force: bool,
           events: Events | None, source: str = "<recipe>", picture: Picture | None = None) -> TrainResult:
    called = time.monotonic()
    events = events or (lambda kind, info: None)
    dev = resolve_device(device)
    cfg = recipe.train
    if recipe.objective.bound not in BOUNDS:
        raise SeqviError(f"objective.bound {recipe.objective.bound!r}: expected one of {', '.join(BOUNDS)}")
    store = open_store(recipe)
    try:
        spec = DataSpec.from_store(store, recipe.data.dataset)
        train_split = store.split("train")
        valid_split = store.split(cfg.valid_split)
        with Lifecycle(run_dir, enabled=dist.main) as life:
            return _loop(recipe, run_dir, dist, dev, force, events, source, spec, train_split, valid_split,
                         life, deadline=called + 60 * cfg.max_minutes if cfg.max_minutes else None,
                         picture=picture)
    finally:
        store.close()


def _loop(recipe: Recipe, run_dir: Path, dist: distributed.Dist, dev: torch.device, force: bool, events: Events,
          source: str, spec: DataSpec, train_split, valid_split, life: Lifecycle,
          deadline: float | None, picture: Picture | None = None) -> TrainResult:
    cfg = recipe.train
    bound, particles = BOUNDS[recipe.objective.bound], recipe.objective.particles
    config = recipe.to_dict()
    resume, replaced = runs.prepare(run_dir, config, force) if dist.main else (False, [])
    distributed.barrier(dist)
    resume = (run_dir / "checkpoints" / "last.pt").exists() if not dist.main else resume
    model, inference = build(recipe, spec, dev, source)
    theta, phi = list(model.parameters()), list(inference.parameters())
    trainee = Trainee(model, inference, theta + phi)
    obj = recipe.objective
    if obj.free_bits > 0 and model.z_dim % obj.free_bits_groups:
        raise RecipeError(f"{source}: 'objective.free_bits_groups' = {obj.free_bits_groups} does not divide the "
                          f"model's z size {model.z_dim}")
    objective = lambda beta: Objective(bound, particles, beta, obj.free_bits, obj.free_bits_groups,  # noqa: E731
                                       obj.overshooting, obj.overshooting_weight)
    # Adam is per parameter, so two groups are two optimizers with their own rates.
    optimizer = torch.optim.Adam([{"params": theta, "lr": cfg.lr},
                                  {"params": phi, "lr": cfg.inference_lr or cfg.lr}])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    metrics = runs.Metrics(run_dir / "metrics.jsonl")
    ckpt_dir = run_dir / "checkpoints"
    result = TrainResult(run_dir, replaced=replaced)

    epoch, start_batch, step = 0, 0, 0
    tally = EpochTally()   # the running epoch's figures (in last.pt: a resumed epoch reports them whole)
    torch.manual_seed(recipe.seed + 1)  # sampling noise stream, distinct from the init stream
    marker = run_dir / "preempted"  # tells a batch script to requeue; cleared when training restarts
    if dist.main:
        marker.unlink(missing_ok=True)
    if resume:
        state = checkpoint.load(ckpt_dir / "last.pt", map_location=dev)
        runs.check_checkpoint(state, ckpt_dir / "last.pt", run_dir, config)   # this run's, not a copied one
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
            result.since_best = int(state.get("since_best", 0))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'}: cannot resume from it ({checkpoint.reason(err)}); "
                                  f"delete {ckpt_dir} or use another --run-dir to start afresh") from None
        result.resumed_step = step
        if start_batch:
            tally = EpochTally.from_state(state.get("tally"))
        if dist.main:
            metrics.truncate_after(step)

    identity = {"run_id": runs.run_identity(run_dir), "config_hash": runs.config_hash(config)}

    def save(name: str, epoch_: int, batch_: int) -> None:
        if dist.main:
            checkpoint.save({
                **identity, "config": config, "data": vars(spec), "model": model.state_dict(),
                "inference": inference.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch_, "batch": batch_, "step": step,
                "best": result.best_valid, "since_best": result.since_best, "rng": checkpoint.rng_state(),
                "world_size": dist.world, "tally": tally.state(),
            }, ckpt_dir / name)
            if name == "last.pt":
                life.saved(step)

    batches_per_epoch = len(epoch_order(train_split, recipe.data.batch_size, recipe.seed, 0,
                                        recipe.data.min_length))
    if batches_per_epoch == 0:
        raise SeqviError(f"{spec.store}: no training sequence has at least data.min_length="
                         f"{recipe.data.min_length} steps")
    result.step, result.epoch = step, epoch
    if cfg.patience and result.since_best >= cfg.patience:
        result.stop, result.nothing_to_do = "patience", True
        return result
    if epoch >= cfg.epochs:
        result.nothing_to_do = True
        return result
    events("start", {"run_dir": str(run_dir), "resumed_step": result.resumed_step, "replaced": replaced,
                     "total_steps": cfg.epochs * batches_per_epoch, "step": step, "world_size": dist.world,
                     "epochs": cfg.epochs, "tensorboard": str(run_dir / "tensorboard") if cfg.tensorboard else None,
                     "parameters": sum(p.numel() for p in trainee.params), "device": str(dev)})
    life.start(step, epoch, source)
    started = time.perf_counter()
    model.train()
    inference.train()
    halt = None
    board = Board(run_dir / "tensorboard", enabled=cfg.tensorboard and dist.main, resumed_step=result.resumed_step,
                  picture=picture)
    with StopFlag() as stop, board:
        while epoch < cfg.epochs:
            tally.start_clock()
            order = epoch_order(train_split, recipe.data.batch_size, recipe.seed, epoch, recipe.data.min_length,
                                recipe.data.bucket)
            for b in range(start_batch, len(order)):
                beta = kl_weight(epoch, b, len(order), recipe.objective.kl_anneal_epochs, recipe.objective.kl_start)
                batch = crop_batch(train_split, order[b], recipe.data.crop_length, recipe.seed, epoch, b,
                                   rows=distributed.rows(dist, len(order[b])))
                rows = torch.arange(len(order[b]))[distributed.rows(dist, len(order[b]))]
                with noise_shard(rows, len(order[b])):
                    stats = train_step(trainee, batch.to(dev), objective(beta), dist, cfg.clip_grad,
                                       cfg.inference_clip_grad)
                real_steps, finite = stats.steps, stats.finite
                loss_sum = stats.loss
                tally.add(loss_sum, stats.recon, stats.kl, real_steps, finite, stats.grad_norm, beta)
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
                life.at(step, epoch)
                result.train_steps += real_steps
                value = loss_sum / max(real_steps, 1)
                events("step", {"step": step, "epoch": epoch + 1, "loss": value})
                if dist.main and step % cfg.log_every == 0:
                    lr, lr_q = _rates(optimizer)
                    per = max(real_steps, 1)
                    line = {"step": step, "epoch": epoch + 1, "loss": value, "recon": number(stats.recon / per),
                            "kl": number(stats.kl / per), "kl_weight": beta, "lr": lr, "lr_q": lr_q,
                            "grad_norm": number(stats.grad_norm), "time_steps": real_steps, "finite": finite,
                            "time": time.time()}
                    metrics.log(line)
                    board.log("train", line)
                if b + 1 == len(order):
                    break  # the epoch's end validates and checkpoints
                halt = _agreed_halt(dist, stop.signal, deadline)
                if halt or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    save("last.pt", epoch, b + 1)
                if halt:
                    break
            if halt:
                _halt(halt, stop.signal, dist, marker, life, result, f"at step {step} (epoch {epoch + 1})",
                      ckpt_dir / "last.pt")
                break
            start_batch = 0
            epoch += 1
            trained = tally.train_seconds()
            figures, (lr, lr_q) = tally.summary(trained), _rates(optimizer)   # the epoch's, before the decay
            scheduler.step()
            validating = time.perf_counter()
            valid = evaluate(model, inference, valid_split, cfg.valid_split, device=dev,
                             batch_size=recipe.data.eval_batch_size, seed=recipe.seed, dist=dist)
            valid_seconds = time.perf_counter() - validating
            result.last_valid = valid.nats_per_step
            improved = valid.nats_per_step < result.best_valid
            if improved:
                result.best_valid = valid.nats_per_step
            result.since_best = 0 if improved else result.since_best + 1
            valid_steps = max(valid.steps, 1)
            record = {"step": step, "epoch": epoch, **figures, "lr": lr, "lr_q": lr_q,
                      "valid_nats_per_step": valid.nats_per_step, "valid_nats_per_sequence": valid.nats_per_sequence,
                      "valid_recon_per_step": float(valid.recon.sum()) / valid_steps,
                      "valid_kl_per_step": float(valid.kl.sum()) / valid_steps, "best": improved,
                      "valid_seconds": valid_seconds, "epoch_seconds": trained + valid_seconds, "time": time.time()}
            tally = EpochTally()
            if dist.main:
                metrics.log(record)  # before the checkpoint: a crash in between drops it on resume
                board.log("epoch", record)
                board.validation(valid, step, record["time"])
            save("last.pt", epoch, 0)
            if improved:
                save("best.pt", epoch, 0)
            life.at(step, epoch)
            events("epoch", record)
            if cfg.patience and result.since_best >= cfg.patience and epoch < cfg.epochs:
                result.stop = "patience"
                life.stop("patience", f"no lower valid free energy for {result.since_best} epochs "
                                      f"(train.patience {cfg.patience}); best {result.best_valid:.4f} nats/step")
                break
            halt = _agreed_halt(dist, stop.signal, deadline) if epoch < cfg.epochs else None
            if halt:
                _halt(halt, stop.signal, dist, marker, life, result, f"after epoch {epoch} (step {step})",
                      ckpt_dir / "last.pt")
                break
    if result.stop == "finished":
        life.stop("finished")
    result.step, result.epoch = step, epoch
    result.seconds = time.perf_counter() - started
    return result


def _rates(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """The learning rates of p's (theta) and q's (phi) parameters."""
    groups = optimizer.param_groups
    return groups[0]["lr"], groups[-1]["lr"]


def _agreed_halt(dist: distributed.Dist, signum: int, deadline: float | None) -> str | None:
    """Why to stop now, the same on every process: "interrupt", "signal", "budget" or None."""
    flags = [float(signum == signal.SIGINT), float(bool(signum) and signum != signal.SIGINT),
             float(deadline is not None and time.monotonic() >= deadline)]
    if dist.active:
        flags = distributed.all_reduce_sum(dist, torch.tensor(flags)).tolist()
    return "interrupt" if flags[0] else "signal" if flags[1] else "budget" if flags[2] else None


def _halt(halt: str, signum: int, dist: distributed.Dist, marker: Path, life: Lifecycle, result: TrainResult,
          where: str, last: Path) -> None:
    """Stop after ``last`` was written: raise for a signal or Ctrl-C, record a used-up time budget."""
    resume = f"checkpoint {last} written; rerun the same command to resume"
    if halt == "interrupt":
        raise Interrupted(f"Ctrl-C {where}: {resume}")
    if halt == "signal":
        _mark_preempted(dist, marker, life.position["step"])
        name = signal.Signals(signum).name if signum else "a signal on another process"
        raise Preempted(f"{name} {where}: {resume}")
    result.stop = "budget"
    life.stop("budget", f"time budget used {where}")


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
               clip_grad: float, clip_inference: float | None = None) -> StepStats:
    """Forward and backward of this process's share of one batch: one ``loss.backward()``, gradients
    all-reduced and clipped (one joint norm, or with ``clip_inference`` q's parameters on their own, as
    two optimizers would). The optimizer step is the caller's."""
    x, mask = batch.x, batch.mask
    local = TrainTerms(x.new_zeros(()), 0.0, 0.0, 0.0)
    if x.shape[0] > 0:
        local = training_terms(trainee.model, trainee.inference, x, mask, objective, inputs=batch.inputs,
                               rewards=batch.rewards)
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
    if clip_inference is None:
        norm = _clip(trainee.params, clip_grad)
    else:
        phi = {id(p) for p in trainee.inference.parameters()}
        norm = math.hypot(_clip([p for p in trainee.params if id(p) not in phi], clip_grad),
                          _clip([p for p in trainee.params if id(p) in phi], clip_inference))
    return StepStats(total, recon, kl, int(count), True, norm)


def _clip(params: list, max_norm: float) -> float:
    """The gradient norm of ``params`` before clipping; clipped to ``max_norm`` when that is positive."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _mark_preempted(dist: distributed.Dist, marker: Path, step: int) -> None:
    if dist.main:
        runs.write_text_atomic(marker, f"{step}\n")
