"""The training loop: read top to bottom, it is the whole run.

Per step: a batch of random crops (B, L, *X) with mask (B, L) -> one
filtering pass -> masked free energy (KL-annealed) -> Adam step with the
global gradient norm clipped. An inference procedure's ``aux`` loss (AVF's
earlier iterates) reaches only the inference parameters. Per epoch: learning-rate decay, validation on
whole sequences, ``last.pt`` (and ``best.pt`` when validation improves).

Exact resume: the batch order and crops are pure functions of
``(seed, epoch, batch)`` and the checkpoint holds model, inference,
optimizer, scheduler, position and RNG state, so a resumed run gives the same
parameters as an uninterrupted one. The loop reports through ``events``
(a callable taking an event name and a dict) and never prints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from seqvi.config import Recipe
from seqvi.data.batches import crop_batch, epoch_order
from seqvi.engine import checkpoint, runs
from seqvi.engine.evaluate import evaluate
from seqvi.engine.setup import DataSpec, build, open_store, resolve_device
from seqvi.errors import CheckpointError, SeqviError
from seqvi.objectives import BOUNDS, bound_loss, filter_sequence, kl_weight, particle_bound, training_loss

Events = Callable[[str, dict], None]


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
    train_steps: int = 0        # real time steps trained in this call


def train(recipe: Recipe, run_dir: str | Path, *, device: str = "auto", force: bool = False,
          events: Events | None = None) -> TrainResult:
    events = events or (lambda kind, info: None)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    cfg = recipe.train
    store = open_store(recipe)
    spec = DataSpec.from_store(store, recipe.data.dataset)
    train_split = store.split("train")
    valid_split = store.split(cfg.valid_split)

    bound, particles = recipe.objective.bound, recipe.objective.particles
    if bound not in BOUNDS:
        raise SeqviError(f"objective.bound {bound!r}: expected one of {', '.join(BOUNDS)}")
    config = recipe.to_dict()
    resume, replaced = runs.prepare(run_dir, config, force)
    model, inference = build(recipe, spec, dev)
    theta, phi = list(model.parameters()), list(inference.parameters())
    params = theta + phi
    # Adam is per parameter, so two groups are two optimizers with their own rates.
    optimizer = torch.optim.Adam([{"params": theta, "lr": cfg.lr},
                                  {"params": phi, "lr": cfg.inference_lr or cfg.lr}])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    metrics = runs.Metrics(run_dir / "metrics.jsonl")
    ckpt_dir = run_dir / "checkpoints"
    result = TrainResult(run_dir, replaced=replaced)

    epoch, start_batch, step = 0, 0, 0
    torch.manual_seed(recipe.seed + 1)  # sampling noise stream, distinct from the init stream
    if resume:
        state = checkpoint.load(ckpt_dir / "last.pt", map_location=dev)
        if state.get("data", {}).get("x_dim") != spec.x_dim:
            raise CheckpointError(f"{ckpt_dir / 'last.pt'}: trained on data of another shape than {spec.store}")
        model.load_state_dict(state["model"])
        inference.load_state_dict(state["inference"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        result.best_valid = state["best"]
        result.resumed_step = step
        metrics.truncate_after(step)

    def save(name: str, epoch_: int, batch_: int) -> None:
        checkpoint.save({
            "config": config, "data": vars(spec), "model": model.state_dict(),
            "inference": inference.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch_, "batch": batch_, "step": step,
            "best": result.best_valid, "rng": checkpoint.rng_state(),
        }, ckpt_dir / name)

    batches_per_epoch = len(epoch_order(train_split, recipe.data.batch_size, recipe.seed, 0,
                                        recipe.data.min_length))
    if batches_per_epoch == 0:
        raise SeqviError(f"{spec.store}: no training sequence has at least data.min_length="
                         f"{recipe.data.min_length} steps")
    events("start", {"run_dir": str(run_dir), "resumed_step": result.resumed_step, "replaced": replaced,
                     "total_steps": cfg.epochs * batches_per_epoch, "step": step,
                     "parameters": sum(p.numel() for p in params), "device": str(dev)})
    started = time.perf_counter()
    model.train()
    inference.train()
    while epoch < cfg.epochs:
        order = epoch_order(train_split, recipe.data.batch_size, recipe.seed, epoch, recipe.data.min_length)
        for b in range(start_batch, len(order)):
            x, mask = crop_batch(train_split, order[b], recipe.data.crop_length, recipe.seed, epoch, b)
            x, mask = x.to(dev), mask.to(dev)
            beta = kl_weight(epoch, b, len(order), recipe.objective.kl_anneal_epochs, recipe.objective.kl_start)
            if bound == "elbo":
                terms = filter_sequence(model, inference, x, mask)
                loss = training_loss(terms, beta)
            else:  # IWAE / FIVO: -log p_hat per step; KL annealing does not apply
                terms = particle_bound(model, inference, x, mask, particles, BOUNDS[bound][0])
                loss = bound_loss(terms)
            if not torch.isfinite(loss):
                raise SeqviError(f"non-finite loss at step {step + 1} (epoch {epoch + 1}); "
                                 f"last good checkpoint: {ckpt_dir / 'last.pt'}; try a lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            if getattr(terms, "aux", None) is None:
                loss.backward()
            else:  # AVF: theta learns from the final iterate only, phi from every iterate
                loss.backward(retain_graph=True)
                (terms.aux.sum() / terms.mask.sum().clamp_min(1.0)).backward(inputs=phi)
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            step += 1
            result.train_steps += int(mask.sum())
            value = loss.item()
            events("step", {"step": step, "epoch": epoch + 1, "loss": value})
            if step % cfg.log_every == 0:
                metrics.log({"step": step, "epoch": epoch + 1, "loss": value, "kl_weight": beta,
                             "lr": optimizer.param_groups[0]["lr"], "time": time.time()})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < len(order):
                save("last.pt", epoch, b + 1)
        start_batch = 0
        epoch += 1
        scheduler.step()
        valid = evaluate(model, inference, valid_split, cfg.valid_split, device=dev,
                         batch_size=recipe.data.eval_batch_size, seed=recipe.seed)
        result.last_valid = valid.nats_per_step
        improved = valid.nats_per_step < result.best_valid
        if improved:
            result.best_valid = valid.nats_per_step
        record = {"step": step, "epoch": epoch, "valid_nats_per_step": valid.nats_per_step,
                  "valid_nats_per_sequence": valid.nats_per_sequence, "best": improved,
                  "lr": optimizer.param_groups[0]["lr"], "time": time.time()}
        metrics.log(record)  # before the checkpoint: a crash in between drops it on resume
        save("last.pt", epoch, 0)
        if improved:
            save("best.pt", epoch, 0)
        events("epoch", record)
    store.close()
    result.step, result.epoch = step, epoch
    result.seconds = time.perf_counter() - started
    return result
