"""seqvi benchmarks: every figure a ratio measured side by side in one run.

``make bench`` (or ``python bench/run.py [--quick] [--only dmm,vrnn,...]``) prints one
table, every ratio next to its target, and writes ``bench/results.json`` with
the machine (CPU model, cores, torch version, thread settings).

Protocol, for a noisy shared machine: the two sides of every ratio run in the
same process, interleaved round by round (A, B, A, B, ...), so that load from
other processes hits both alike; the first round of each is a warm-up and is
dropped; figures are medians over the remaining rounds.

Sections (``--only``):

* ``dmm``      Pyro's DMM sizes on bach-chorales' training split: seconds per epoch and
               time steps per second of seqvi (combiner; AVF with 1 iteration) against the
               same DMM written as a plain eager loop (``bench/plain_dmm.py``), and the
               held-out free energy of both implementations.
* ``vrnn``     VRNN at TIMIT sizes (LSTM 2,000, z 200, batch 64 x 40 steps x 200 samples,
               random data): time per training step and achieved FLOP/s (matmul FLOPs
               counted analytically) as a fraction of this machine's fp32 matmul rate,
               measured in between.
* ``avf``      AVF(1) / direct training-step time for VRNN, SRNN, DMM on bach-chorales (and,
               for reference, AVF with 5 iterations, the AVF paper's JSB setting), and AVF(1)'s
               evaluation pass (no parameter gradient) against its own training step.
* ``bounds``   evaluation time with 16 particles / 1 particle, IWAE and FIVO.
* ``midi``     MIDI files per second: seqvi's adapter vs pretty_midi's get_piano_roll on the
               same files and grid, and the differences between the two rolls.
* ``memory``   peak RSS while training on an HDF5 store of 1x and 4x the size.
* ``threads``  training time steps per second with 1 and 2 torch threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seqvi.config import load_recipe  # noqa: E402
from seqvi.data.batches import crop_batch, epoch_order, pad, whole_batches  # noqa: E402
from seqvi.data.manifest import raw_dir, store_path  # noqa: E402
from seqvi.data.prepare import download, preprocess  # noqa: E402
from seqvi.data.store import Store  # noqa: E402
from seqvi.engine.distributed import Dist  # noqa: E402
from seqvi.engine.evaluate import evaluate  # noqa: E402
from seqvi.engine.setup import DataSpec, build  # noqa: E402
from seqvi.data.batches import Batch  # noqa: E402
from seqvi.engine.train import Trainee, train_step  # noqa: E402
from seqvi.free_energy import noise_shard  # noqa: E402
from seqvi.objectives import BOUNDS, Objective, filter_sequence, kl_weight, particle_bound  # noqa: E402

from bench.plain_dmm import PlainDMM, train_epoch  # noqa: E402

RECIPES = REPO / "recipes"
DATASET = "bach-chorales"
SECTIONS = ("dmm", "vrnn", "avf", "bounds", "midi", "memory", "threads")


# --------------------------------------------------------------------------- protocol


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each run, round by round (A, B, A, B, ...), warm-up rounds dropped."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def med(values: list[float]) -> float:
    return statistics.median(values)


class MatmulFlops(TorchDispatchMode):
    """Counts the matrix-multiply FLOPs that really run, forward and backward (2 per multiply-add)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        if func in (aten.mm.default, aten.addmm.default):
            a, b = args[-2], args[-1]
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        elif func in (aten.bmm.default, aten.baddbmm.default):
            a, b = args[-2], args[-1]
            self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        return func(*args, **(kwargs or {}))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "SEQVI_THREADS": os.environ.get("SEQVI_THREADS"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "load_average_at_start": list(os.getloadavg())}


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate (FLOP/s), median of ``repeats`` products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2 * size ** 3 / (time.perf_counter() - start))
    return med(rates)


def ensure_corpus() -> Path:
    if not any(raw_dir(DATASET).rglob("*.mid")):
        download(DATASET)
    if not store_path(DATASET).exists():
        preprocess(DATASET)
    return store_path(DATASET)


def build_pair(recipe_path: Path, overrides: list[str], spec: DataSpec):
    recipe = load_recipe(recipe_path, [f"data.dataset={DATASET}", *overrides])
    model, inference = build(recipe, spec, torch.device("cpu"))
    return recipe, model, inference


class Trainer:
    """seqvi's own training step (``seqvi.engine.train.train_step`` + Adam), on batches from the store."""

    def __init__(self, recipe, model, inference, split):
        self.recipe, self.model, self.inference, self.split = recipe, model, inference, split
        theta, self.phi = list(model.parameters()), list(inference.parameters())
        self.params = theta + self.phi
        cfg = recipe.train
        self.optimizer = torch.optim.Adam([{"params": theta, "lr": cfg.lr},
                                           {"params": self.phi, "lr": cfg.inference_lr or cfg.lr}])
        self.epoch = 0

    def order(self, epoch: int) -> list[np.ndarray]:
        d = self.recipe.data
        return epoch_order(self.split, d.batch_size, self.recipe.seed, epoch, d.min_length, d.bucket)

    def batch(self, epoch: int, b: int, indices: np.ndarray):
        return crop_batch(self.split, indices, self.recipe.data.crop_length, self.recipe.seed, epoch, b)[:2]

    def step(self, x, mask, beta: float) -> int:
        with noise_shard(torch.arange(x.shape[0]), x.shape[0]):
            stats = train_step(Trainee(self.model, self.inference, self.params), Batch(x, mask),
                               Objective(BOUNDS["elbo"], 1, beta), Dist(), self.recipe.train.clip_grad)
        if stats.finite:
            self.optimizer.step()
        return stats.steps

    def run_epoch(self) -> int:
        """One epoch exactly as ``seqvi train`` runs it (reading the store included); real steps."""
        obj = self.recipe.objective
        order, done = self.order(self.epoch), 0
        for b, indices in enumerate(order):
            beta = kl_weight(self.epoch, b, len(order), obj.kl_anneal_epochs, obj.kl_start)
            done += self.step(*self.batch(self.epoch, b, indices), beta)
        self.epoch += 1
        return done


# --------------------------------------------------------------------------- 1. DMM


def plain_free_energy(plain: PlainDMM, split, batch_size: int = 64, seed: int = 0) -> float:
    """Held-out free energy (nats per step) of the plain implementation, whole sequences."""
    total, steps = 0.0, 0
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for x, mask, *_ in whole_batches(split, batch_size):
            total += float(plain.free_energy(x, mask)[1])
            steps += int(mask.sum())
    return total / steps


def bench_dmm(args, spec: DataSpec, store: Store) -> dict:
    train, valid = store.split("train"), store.split("valid")
    recipe, model, combiner = build_pair(RECIPES / "dmm_midi.yaml", [], spec)
    _, model_avf, avf = build_pair(RECIPES / "dmm_midi.yaml", ["inference.name=avf", "inference.iterations=1"], spec)
    plain = PlainDMM(spec.x_dim).load_from_seqvi(model, combiner)   # same initial parameters
    x_all, mask_all = pad([train.read(i) for i in range(len(train))])  # Pyro keeps the corpus in memory
    lengths = mask_all.sum(1).long()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=recipe.train.lr)
    beta0 = kl_weight(0, 0, 1, recipe.objective.kl_anneal_epochs, recipe.objective.kl_start)

    def eval_pair(seed: int) -> tuple[float, float]:
        seqvi_f = evaluate(model, combiner, valid, "valid", batch_size=64, device=torch.device("cpu"),
                           seed=seed).nats_per_step
        return seqvi_f, plain_free_energy(plain, valid, seed=seed)

    before = [eval_pair(s) for s in range(3)]
    init = (copy.deepcopy(model.state_dict()), copy.deepcopy(combiner.state_dict()))
    seqvi_t, avf_t = Trainer(recipe, model, combiner, train), Trainer(recipe, model_avf, avf, train)
    steps = {}
    runs = {
        "plain": lambda: steps.__setitem__("plain", train_epoch(plain, x_all, lengths, plain_opt, recipe.data.batch_size,
                                                                beta0, recipe.train.clip_grad)),
        "seqvi": lambda: steps.__setitem__("seqvi", seqvi_t.run_epoch()),
        "seqvi_avf": lambda: steps.__setitem__("seqvi_avf", avf_t.run_epoch()),
    }
    rate_before = matmul_rate()
    times = interleaved(runs, args.repeats)
    rate = med([rate_before, matmul_rate()])
    after = [eval_pair(s) for s in range(3)]
    # Same initial parameters, another batch order and noise (seed 1): the run-to-run spread of F.
    recipe_1, model_1, combiner_1 = build_pair(RECIPES / "dmm_midi.yaml", ["seed=1"], spec)
    model_1.load_state_dict(init[0])
    combiner_1.load_state_dict(init[1])
    other = Trainer(recipe_1, model_1, combiner_1, train)
    for _ in range(args.repeats + 1):
        other.run_epoch()
    other_f = float(np.mean([evaluate(model_1, combiner_1, valid, "valid", batch_size=64,
                                      device=torch.device("cpu"), seed=s).nats_per_step for s in range(3)]))
    loops = {"plain (random batches)": _loop_steps(lengths.numpy(), recipe.data.batch_size, random=True),
             "seqvi (bucketed)": sum(int(train.lengths[o].max()) for o in seqvi_t.order(0))}
    out = {"epochs_timed": args.repeats, "loop_steps_per_epoch": loops,
           "held_out": {"split": "valid", "seeds": 3,
                        "same_parameters_before_training": _pair_stats(before),
                        "after_training_each_side": _pair_stats(after)}}
    for name in runs:
        out[name] = {"seconds_per_epoch": med(times[name]), "samples": times[name],
                     "time_steps_per_second": steps[name] / med(times[name])}
    out["speedup_seqvi_over_plain"] = med(times["plain"]) / med(times["seqvi"])
    # Arithmetic floor: the epoch's matmul FLOPs (real steps only) at this machine's matmul rate.
    flops = training_flops(model, combiner, int(train.lengths.sum()), data_layers=(combiner.rnn,))
    out["arithmetic_floor"] = {"flops_per_epoch": flops, "matmul_rate": rate, "seconds": flops / rate,
                               "max_speedup_over_plain": med(times["plain"]) / (flops / rate)}
    out["held_out"]["seqvi_seed_1_after_training"] = other_f
    out["held_out"]["run_to_run_difference"] = out["held_out"]["after_training_each_side"]["seqvi_nats_per_step"] - other_f
    out["speedup_seqvi_avf_over_plain"] = med(times["plain"]) / med(times["seqvi_avf"])
    return out


def _loop_steps(lengths: np.ndarray, batch: int, random: bool, draws: int = 20) -> float:
    rng = np.random.default_rng(0)
    totals = []
    for _ in range(draws):
        perm = rng.permutation(len(lengths))
        totals.append(sum(int(lengths[perm[i:i + batch]].max()) for i in range(0, len(perm), batch)))
    return float(np.mean(totals))


def _pair_stats(pairs: list[tuple[float, float]]) -> dict:
    seqvi_f, plain_f = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"seqvi_nats_per_step": float(np.mean(seqvi_f)), "plain_nats_per_step": float(np.mean(plain_f)),
            "difference": float(np.mean(seqvi_f) - np.mean(plain_f)),
            "monte_carlo_sd": float(np.std(seqvi_f + plain_f, ddof=1))}


# --------------------------------------------------------------------------- 2. VRNN at TIMIT sizes


def forward_flops(model, inference, rows: int) -> float:
    """Matmul FLOPs of one forward pass over ``rows`` (step, particle) rows: 2 * MACs per layer."""
    total = 0.0
    for module in list(model.modules()) + list(inference.modules()):
        if isinstance(module, torch.nn.Linear):
            total += 2 * module.in_features * module.out_features
        elif isinstance(module, (torch.nn.LSTMCell, torch.nn.GRUCell, torch.nn.RNNCell, torch.nn.LSTM)):
            gates = {torch.nn.LSTMCell: 4, torch.nn.LSTM: 4, torch.nn.GRUCell: 3}.get(type(module), 1)
            total += 2 * gates * module.hidden_size * (module.input_size + module.hidden_size)
    return total * rows


def training_flops(model, inference, rows: int, data_layers: tuple = ()) -> float:
    """Matmul FLOPs of one training step: per row and layer 2*MACs forward, 2*MACs for the
    weight gradient, 2*MACs for the input gradient (none for the inputs that are data).
    Every Linear / recurrent cell of the model and the inference runs once per row and step."""
    total = 0.0
    for module in list(model.modules()) + list(inference.modules()):
        if isinstance(module, torch.nn.Linear):
            macs, data_macs = module.in_features * module.out_features, 0
        elif isinstance(module, (torch.nn.LSTMCell, torch.nn.GRUCell, torch.nn.RNNCell, torch.nn.LSTM)):
            gates = {torch.nn.LSTMCell: 4, torch.nn.LSTM: 4, torch.nn.GRUCell: 3}.get(type(module), 1)
            macs = gates * module.hidden_size * (module.input_size + module.hidden_size)
            data_macs = gates * module.hidden_size * module.input_size
        else:
            continue
        if module in data_layers:   # reads the data: no input gradient
            total += 2 * macs * 3 - 2 * (macs if isinstance(module, torch.nn.Linear) else data_macs)
        else:
            total += 2 * macs * 3
    return total * rows


def bench_vrnn(args) -> dict:
    recipe = load_recipe(RECIPES / "vrnn_timit.yaml")
    spec = DataSpec("timit", "<random data>", 200, "gaussian")
    model, inference = build(recipe, spec, torch.device("cpu"))
    B, T = recipe.data.batch_size, recipe.data.crop_length
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(B, T, spec.x_dim, generator=g), torch.ones(B, T)
    trainer = Trainer(recipe, model, inference, None)
    flops = training_flops(model, inference, B * T, data_layers=(model.phi_x[0],))
    rates, step_times = [], []
    for r in range(1 + args.vrnn_repeats):
        rate_before = matmul_rate()
        start = time.perf_counter()
        trainer.step(x, mask, 1.0)
        elapsed = time.perf_counter() - start
        rate_after = matmul_rate()
        if r >= 1:
            step_times.append(elapsed)
            rates.extend([rate_before, rate_after])
    step = med(step_times)
    return {"batch": B, "steps": T, "x_dim": spec.x_dim, "hidden": recipe.model["hidden_size"],
            "z": recipe.model["z_size"], "flops_per_step": flops, "seconds_per_step": step, "samples": step_times,
            "achieved_flops": flops / step, "matmul_rate": med(rates), "matmul_rate_samples": rates,
            "fraction_of_matmul_rate": flops / step / med(rates)}


# --------------------------------------------------------------------------- 3. AVF cost


AVF_PAIRS = {   # model -> (recipe with the model's own filtering encoder, that encoder's width)
    "vrnn": ("vrnn_bach.yaml", 256),     # direct encoder, 1 hidden layer of 256
    "srnn": ("srnn_midi.yaml", 500),     # direct encoder, 1 hidden layer of 500
    "dmm": ("dmm_midi.yaml", 600),       # combiner over an RNN of 600
}
AVF_PAPER = (1024, 2)   # the AVF paper's MIDI inference model: 2 x 1,024 ELU units (highway)


def bench_avf(args, spec: DataSpec, store: Store) -> dict:
    """AVF(1) against each model's own filtering encoder, on the same batches.

    ``avf``: an AVF inference model as wide as the encoder it replaces (one ELU layer), so the
    ratio measures the procedure (prior, emission gradient and update inside the loop), not a
    bigger network. ``avf_paper``: the paper's 2 x 1,024, for reference: its network alone has
    several times the matmul FLOPs of these encoders (``flops_per_row``)."""
    train = store.split("train")
    out = {}
    for name, (recipe_file, width) in AVF_PAIRS.items():
        recipe, model, own = build_pair(RECIPES / recipe_file, [], spec)
        variants = {"own": (model, own)}
        for label, (hidden, layers), its in (("avf", (width, 1), 1), ("avf_paper", AVF_PAPER, 1),
                                             ("avf5", (width, 1), 5)):
            _, m, q = build_pair(RECIPES / recipe_file, ["inference.name=avf", f"inference.iterations={its}",
                                                         f"inference.hidden_size={hidden}",
                                                         f"inference.layers={layers}"], spec)
            variants[label] = (m, q)
        trainers = {k: Trainer(recipe, m, q, train) for k, (m, q) in variants.items()}
        order = trainers["own"].order(0)[:args.avf_batches]
        batches = [trainers["own"].batch(0, b, idx) for b, idx in enumerate(order)]
        flops = {}
        for k, t in trainers.items():   # the matmul FLOPs each step really runs (forward and backward)
            with MatmulFlops() as counter:
                t.step(*batches[0], 1.0)
            flops[k] = counter.flops
        runs = {k: (lambda t=t: [t.step(x, m, 1.0) for x, m in batches]) for k, t in trainers.items()}
        runs["avf_eval"] = lambda m=variants["avf"][0], q=variants["avf"][1]: eval_pass(m, q, batches)
        times = interleaved(runs, args.repeats)
        steps = len(batches)
        out[name] = {"own_inference": recipe.inference["name"], "avf_width": width, "batches": steps,
                     "batch_size": recipe.data.batch_size, "crop_length": recipe.data.crop_length,
                     "counted_flops_first_batch": flops, "flop_ratio": flops["avf"] / flops["own"],
                     "flop_ratio_paper_size": flops["avf_paper"] / flops["own"],
                     **{f"seconds_per_step_{k}": med(v) / steps for k, v in times.items()},
                     "ratio": med(times["avf"]) / med(times["own"]),
                     "ratio_paper_size": med(times["avf_paper"]) / med(times["own"]),
                     "ratio_5_iterations": med(times["avf5"]) / med(times["own"]),
                     # the validation/eval pass of the same AVF(1) on the same batches (no parameter gradient)
                     # against its training step: target <= 1
                     "eval_over_train_avf": med(times["avf_eval"]) / med(times["avf"])}
    return out


def eval_pass(model, inference, batches) -> None:
    """The free-energy pass of ``seqvi eval`` / validation on each batch: eval mode, no parameter gradient
    (AVF differentiates F_t with respect to q's parameters inside ``posterior``, as evaluation does)."""
    model.eval()
    inference.eval()
    with torch.no_grad():
        for x, m in batches:
            filter_sequence(model, inference, x, m)
    model.train()
    inference.train()


# --------------------------------------------------------------------------- 4. bounds


def bench_bounds(args, spec: DataSpec, store: Store) -> dict:
    recipe, model, inference = build_pair(RECIPES / "vrnn_bach.yaml", [], spec)
    valid = store.split("valid")
    batches = [(b.x, b.mask) for b in whole_batches(valid, recipe.data.eval_batch_size)]
    model.eval()
    inference.eval()

    def run(k: int, resample: bool) -> Callable[[], None]:
        def go():
            with torch.no_grad():
                for x, m in batches:
                    particle_bound(model, inference, x, m, k, resample)
        return go

    runs = {f"{b}_{k}": run(k, b == "fivo") for b in ("iwae", "fivo") for k in (1, 16)}
    rate_before = matmul_rate()
    times = interleaved(runs, args.repeats)
    rate = med([rate_before, matmul_rate()])
    per_particle = forward_flops(model, inference, int(sum(float(m.sum()) for _, m in batches)))
    out = {"model": "vrnn (vrnn_bach.yaml sizes)", "split": "valid", "sequences": len(valid),
           "eval_batch_size": recipe.data.eval_batch_size}
    out["matmul_rate"], out["forward_flops_per_particle"] = rate, per_particle
    for b in ("iwae", "fivo"):
        t1, t16 = med(times[f"{b}_1"]), med(times[f"{b}_16"])
        # 16 particles do 16x the matmul FLOPs; at best they run at the matmul rate
        out[b] = {"seconds_k1": t1, "seconds_k16": t16, "ratio": t16 / t1,
                  "fraction_of_matmul_rate_k1": per_particle / t1 / rate,
                  "fraction_of_matmul_rate_k16": 16 * per_particle / t16 / rate,
                  "lowest_possible_ratio": 16 * per_particle / rate / t1}
    return out


# --------------------------------------------------------------------------- 5. MIDI preprocessing


def pretty_midi_roll(path: Path, steps_per_beat: int, fs: float = 100.0) -> np.ndarray:
    """pretty_midi's piano roll sampled on seqvi's beat grid: (T, 88) uint8 (any sounding = 1)."""
    import pretty_midi

    from seqvi.data.midi import LOW_PITCH, NUM_KEYS

    pm = pretty_midi.PrettyMIDI(str(path))
    tpb = pm.resolution
    end = max((pm.time_to_tick(n.end) for i in pm.instruments for n in i.notes), default=0)
    steps = (2 * end * steps_per_beat + tpb) // (2 * tpb)
    # the grid's step boundaries in seconds (tempo changes included); the last column is dropped
    times = np.array([pm.tick_to_time(k * tpb // steps_per_beat) for k in range(steps + 1)])
    roll = pm.get_piano_roll(fs=fs, times=times, pedal_threshold=None)[LOW_PITCH:LOW_PITCH + NUM_KEYS, :steps]
    return (roll.T > 0).astype(np.uint8)


def _classify_differences(path: Path, ours: np.ndarray, theirs: np.ndarray, steps_per_beat: int) -> dict:
    """Explain every cell where the two rolls differ, from the file's exact note ticks.

    * ``sub_step``: a note of that pitch starts or ends strictly inside the step: seqvi rounds
      its boundaries to the nearest step, pretty_midi marks any step it touches.
    * ``float_edge``: a note of that pitch starts or ends exactly on the step's edge and no note
      covers the step's interior: pretty_midi truncates ``start * fs`` to an integer column, which
      can fall one column early, into the previous step (or leave an edge column out).
    * ``unterminated``: the step is covered by a note_on that is never switched off: seqvi
      closes it at the end of its track (and counts it), pretty_midi drops it.
    """
    import mido

    from seqvi.data.midi import LOW_PITCH

    midi = mido.MidiFile(str(path))
    tpb = midi.ticks_per_beat
    notes: dict[int, list[tuple[Fraction, Fraction]]] = {}   # pitch -> [(on, off)] in grid steps, exact
    open_ended: dict[int, list[tuple[Fraction, Fraction]]] = {}
    for track in midi.tracks:
        tick, sounding = 0, {}
        for msg in track:
            tick += msg.time
            if msg.type not in ("note_on", "note_off"):
                continue
            key, now = (msg.channel, msg.note), Fraction(tick * steps_per_beat, tpb)
            if key in sounding:
                notes.setdefault(msg.note, []).append((sounding.pop(key), now))
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[key] = now
        for (_, pitch), on in sounding.items():
            open_ended.setdefault(pitch, []).append((on, Fraction(tick * steps_per_beat, tpb)))
    length = max(len(ours), len(theirs))
    a = np.zeros((length, ours.shape[1]), np.int16)
    b = np.zeros_like(a)
    a[:len(ours)], b[:len(theirs)] = ours, theirs
    counts = {"sub_step": 0, "float_edge": 0, "unterminated": 0, "unexplained": 0}
    for t, k in zip(*np.nonzero(a != b)):
        spans = notes.get(int(k) + LOW_PITCH, [])
        if any(t < s < t + 1 or t < e < t + 1 for s, e in spans if s < t + 1 and e > t):
            counts["sub_step"] += 1
        elif any(s < t + 1 and e > t for s, e in open_ended.get(int(k) + LOW_PITCH, [])):
            counts["unterminated"] += 1
        elif any(s in (t, t + 1) or e in (t, t + 1) for s, e in spans):
            counts["float_edge"] += 1
        else:
            counts["unexplained"] += 1
    return counts


def bench_midi(args) -> dict:
    from seqvi.data.midi import midi_to_roll

    files = sorted(raw_dir(DATASET).rglob("*.mid"))
    steps_per_beat = 1    # the chorales' quarter-note grid (datasets/bach-chorales.yaml)
    rolls: dict[str, list] = {}
    runs = {"seqvi": lambda: rolls.__setitem__("seqvi", [midi_to_roll(f, steps_per_beat)[0] for f in files]),
            "pretty_midi": lambda: rolls.__setitem__("pretty_midi", [pretty_midi_roll(f, steps_per_beat)
                                                                      for f in files])}
    times = interleaved(runs, args.midi_repeats)
    diff = {"sub_step": 0, "float_edge": 0, "unterminated": 0, "unexplained": 0}
    max_abs, files_differing = 0, 0
    for path, ours, theirs in zip(files, rolls["seqvi"], rolls["pretty_midi"]):
        if ours.shape == theirs.shape and np.array_equal(ours, theirs):
            continue
        files_differing += 1
        counts = _classify_differences(path, ours, theirs, steps_per_beat)
        for key, value in counts.items():
            diff[key] += value
        max_abs = 1 if sum(counts.values()) else max_abs
    with tempfile.TemporaryDirectory() as tmp:   # the whole adapter, HDF5 store included, once
        from seqvi.data.manifest import load_manifest
        from seqvi.data.polyphonic import preprocess_midi

        start = time.perf_counter()
        preprocess_midi(load_manifest(DATASET), raw_dir(DATASET), Path(tmp) / "b.h5")
        full = time.perf_counter() - start
    return {"files": len(files), "steps_per_beat": steps_per_beat, "pretty_midi_fs": 100.0,
            "seqvi_files_per_second": len(files) / med(times["seqvi"]),
            "pretty_midi_files_per_second": len(files) / med(times["pretty_midi"]),
            "ratio": med(times["pretty_midi"]) / med(times["seqvi"]),
            "seqvi_preprocess_to_hdf5_files_per_second": len(files) / full,
            "max_abs_difference": max_abs, "files_differing": files_differing, "differing_cells": diff}


# --------------------------------------------------------------------------- 6. memory


MEMORY_RECIPE = {
    "seed": 0,
    "data": {"dataset": "memsynth", "batch_size": 16, "crop_length": 32, "eval_batch_size": 16},
    "model": {"name": "vrnn", "hidden_size": 32, "z_size": 8, "feature_size": 32},
    "inference": {"name": "direct", "hidden_sizes": [32]},
    "train": {"epochs": 1, "lr": 0.001, "log_every": 1000},
}


def _write_store(root: Path, scale: int, frame_dim: int, frames_per_scale: int) -> int:
    from seqvi.data.store import StoreWriter

    writer = StoreWriter(root / "processed" / "memsynth.h5", (frame_dim,), "float32")
    rng = np.random.default_rng(0)
    length, written = 200, 0
    for split, share in (("train", 0.8), ("valid", 0.1), ("test", 0.1)):
        for i in range(max(1, int(scale * frames_per_scale * share) // length)):
            writer.add(split, f"{split}/{i}", rng.standard_normal((length, frame_dim), dtype=np.float32))
            written += length * frame_dim * 4
    writer.close({"dataset": "memsynth", "adapter": "synthetic", "likelihood": "gaussian"})
    return written


def memory_child(root: str) -> None:
    """Train one epoch (with validation) on the store under ``root``; print peak RSS (bytes)."""
    from seqvi.config import recipe_from_dict
    from seqvi.engine.train import train

    torch.set_num_threads(1)
    raw = json.loads(json.dumps(MEMORY_RECIPE))
    raw["data"]["root"] = root
    result = train(recipe_from_dict(raw), Path(root) / "run", device="cpu")
    print(json.dumps({"peak_rss_bytes": peak_rss(), "steps": result.step}))


def peak_rss() -> int:
    """This process's peak resident set (bytes): VmHWM, which exec resets (ru_maxrss keeps the
    parent's peak across fork + exec on Linux, so it would report the benchmark's own size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def bench_memory(args) -> dict:
    """Peak RSS of ``seqvi train`` (one epoch and its validation) on stores of 1x and 4x the size.

    Measured twice: with glibc's default allocator settings, where the peak drifts upward with
    the number of batches whatever the data (freed tensor buffers stay in a fragmented heap), and
    with ``MALLOC_MMAP_THRESHOLD_=65536`` (large buffers mapped and returned to the OS when
    freed), where the peak is the live working set; the latter is the figure compared."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 4):
            root = Path(tmp) / f"x{scale}"
            size = _write_store(root, scale, frame_dim=1024, frames_per_scale=args.memory_frames)
            entry = {"store_frames_bytes": size, "store_file_bytes": (root / "processed" / "memsynth.h5").stat().st_size}
            for label, extra in (("peak_rss_bytes", {"MALLOC_MMAP_THRESHOLD_": "65536"}),
                                 ("peak_rss_bytes_default_malloc", {})):
                env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
                env.update(SEQVI_THREADS="1", **extra)
                shutil.rmtree(root / "run", ignore_errors=True)
                proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", str(root)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
                child = json.loads(proc.stdout.strip().splitlines()[-1])
                entry[label], entry["train_steps"] = child["peak_rss_bytes"], child["steps"]
            out[f"x{scale}"] = entry
    out["ratio"] = out["x4"]["peak_rss_bytes"] / out["x1"]["peak_rss_bytes"]
    out["ratio_default_malloc"] = out["x4"]["peak_rss_bytes_default_malloc"] / out["x1"]["peak_rss_bytes_default_malloc"]
    return out


# --------------------------------------------------------------------------- 7. threads


def bench_threads(args, spec: DataSpec, store: Store) -> dict:
    train = store.split("train")
    out = {}
    for label, recipe_file in (("quickstart", "quickstart.yaml"), ("dmm", "dmm_midi.yaml")):
        recipe, model, inference = build_pair(RECIPES / recipe_file, [], spec)
        trainer = Trainer(recipe, model, inference, train)
        order = trainer.order(0)[:args.thread_batches]
        batches = [trainer.batch(0, b, idx) for b, idx in enumerate(order)]
        steps = int(sum(float(m.sum()) for _, m in batches))

        def run(threads: int) -> Callable[[], None]:
            def go():
                torch.set_num_threads(threads)
                try:
                    for x, m in batches:
                        trainer.step(x, m, 1.0)
                finally:
                    torch.set_num_threads(1)
            return go

        times = interleaved({1: run(1), 2: run(2)}, args.repeats)
        out[label] = {"time_steps_per_second_1": steps / med(times[1]),
                      "time_steps_per_second_2": steps / med(times[2]),
                      "ratio_2_over_1": med(times[1]) / med(times[2])}
    return out


# --------------------------------------------------------------------------- table


def table(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []

    def add(what: str, value: str, target: str, ok: bool | None):
        rows.append((what, value, target, "" if ok is None else ("met" if ok else "MISSED")))

    if "dmm" in results:
        d = results["dmm"]
        add("1 DMM epoch: plain loop", f"{d['plain']['seconds_per_epoch']:.2f} s, "
            f"{d['plain']['time_steps_per_second']:,.0f} steps/s", "", None)
        add("1 DMM epoch: seqvi (combiner)", f"{d['seqvi']['seconds_per_epoch']:.2f} s, "
            f"{d['seqvi']['time_steps_per_second']:,.0f} steps/s", "", None)
        add("1 DMM epoch: seqvi (AVF, 1 it.)", f"{d['seqvi_avf']['seconds_per_epoch']:.2f} s, "
            f"{d['seqvi_avf']['time_steps_per_second']:,.0f} steps/s", "", None)
        add("1 DMM speed-up, seqvi / plain", f"{d['speedup_seqvi_over_plain']:.2f}x", ">= 8x",
            d["speedup_seqvi_over_plain"] >= 8)
        before, after = d["held_out"]["same_parameters_before_training"], d["held_out"]["after_training_each_side"]
        add("1 held-out F, same params (seqvi - plain)", f"{before['difference']:+.3f} nats/step "
            f"(MC sd {before['monte_carlo_sd']:.3f})", "within noise",
            abs(before["difference"]) <= 3 * max(before["monte_carlo_sd"], 1e-3))
        spread = abs(d["held_out"]["run_to_run_difference"])
        add(f"1 held-out F after {d['epochs_timed'] + 1} epochs each",
            f"seqvi {after['seqvi_nats_per_step']:.3f}, plain {after['plain_nats_per_step']:.3f} (seqvi, "
            f"another seed: {d['held_out']['seqvi_seed_1_after_training']:.3f})", "within run-to-run spread",
            abs(after["difference"]) <= max(3 * spread, 3 * after["monte_carlo_sd"]))
        f = d["arithmetic_floor"]
        add("1 DMM arithmetic floor (matmul FLOPs / rate)", f"{f['seconds']:.2f} s/epoch = at most "
            f"{f['max_speedup_over_plain']:.1f}x the plain loop", "", None)
    if "vrnn" in results:
        v = results["vrnn"]
        add("2 VRNN TIMIT-size step", f"{v['seconds_per_step']:.2f} s, {v['achieved_flops'] / 1e9:.1f} GFLOP/s "
            f"(matmul {v['matmul_rate'] / 1e9:.1f})", "", None)
        add("2 VRNN FLOP/s / matmul rate", f"{v['fraction_of_matmul_rate']:.0%}", ">= 50%",
            v["fraction_of_matmul_rate"] >= 0.5)
    if "avf" in results:
        for name, a in results["avf"].items():
            if not isinstance(a, dict):
                continue
            add(f"3 AVF(1) / {a['own_inference']} step, {name.upper()}", f"{a['ratio']:.2f} (FLOPs x{a['flop_ratio']:.2f}; "
                f"AVF {a['avf_width']} wide; paper's 2x1024: {a['ratio_paper_size']:.2f}, FLOPs "
                f"x{a['flop_ratio_paper_size']:.1f})", "<= 1.5", a["ratio"] <= 1.5)
        for name, a in results["avf"].items():
            if isinstance(a, dict) and "ratio_5_iterations" in a:
                add(f"3 AVF(5) / {a['own_inference']} step, {name.upper()}", f"{a['ratio_5_iterations']:.2f} "
                    f"(AVF {a['avf_width']} wide, 5 iterations per step)", "", None)
        for name, a in results["avf"].items():
            if isinstance(a, dict) and "eval_over_train_avf" in a:
                add(f"3 AVF(1) eval / train step, {name.upper()}", f"{a['eval_over_train_avf']:.2f} (same batches; "
                    f"eval: no parameter gradient)", "<= 1", a["eval_over_train_avf"] <= 1)
    if "bounds" in results:
        for b in ("iwae", "fivo"):
            r = results["bounds"][b]
            add(f"4 eval {b.upper()} 16 / 1 particle", f"{r['ratio']:.2f} (K=1 at {r['fraction_of_matmul_rate_k1']:.0%}, "
                f"K=16 at {r['fraction_of_matmul_rate_k16']:.0%} of matmul rate; floor "
                f"{r['lowest_possible_ratio']:.1f})", "<= 4", r["ratio"] <= 4)
    if "midi" in results:
        m = results["midi"]
        add("5 MIDI files/s, seqvi / pretty_midi", f"{m['ratio']:.2f}x ({m['seqvi_files_per_second']:.0f} vs "
            f"{m['pretty_midi_files_per_second']:.0f})", ">= 2x", m["ratio"] >= 2)
        c = m["differing_cells"]
        add("5 rolls: max |difference|", f"{m['max_abs_difference']} ({sum(c.values())} cells: {c['sub_step']} "
            f"sub-step, {c['float_edge']} float edge, {c['unterminated']} unterminated, {c['unexplained']} "
            f"unexplained)", "agree or explained",
            c["unexplained"] == 0)
    if "memory" in results:
        r = results["memory"]
        add("6 peak RSS, 4x / 1x store", f"{r['ratio']:.3f} ({r['x1']['peak_rss_bytes'] / 2**20:.0f} -> "
            f"{r['x4']['peak_rss_bytes'] / 2**20:.0f} MiB; stores {r['x1']['store_file_bytes'] / 2**20:.0f} -> "
            f"{r['x4']['store_file_bytes'] / 2**20:.0f} MiB; default malloc: {r['ratio_default_malloc']:.2f})",
            "<= 1.1", r["ratio"] <= 1.1)
    if "threads" in results:
        for label, t in results["threads"].items():
            if not isinstance(t, dict):
                continue
            add(f"7 threads 2 / 1, {label}", f"{t['ratio_2_over_1']:.2f} ({t['time_steps_per_second_1']:,.0f} vs "
                f"{t['time_steps_per_second_2']:,.0f} steps/s)", "choose default", None)
    return rows


def render(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("measurement", "value", "target", "")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--quick", action="store_true", help="one timed round and small sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    torch.set_num_threads(1)
    if args.quick:
        args.repeats = 1
    args.vrnn_repeats = 1 if args.quick else args.repeats
    args.avf_batches = 2 if args.quick else 6
    args.thread_batches = 2 if args.quick else 3
    args.midi_repeats = 1 if args.quick else args.repeats
    args.memory_frames = 4_000 if args.quick else 40_000
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {SECTIONS}")
    started = time.perf_counter()
    results: dict = {"machine": machine(), "protocol": {"repeats": args.repeats, "warmup_rounds": 1,
                                                        "interleaved": True, "statistic": "median"}}
    with Store(ensure_corpus()) as store:
        spec = DataSpec.from_store(store, DATASET)
        benches = {"dmm": lambda: bench_dmm(args, spec, store), "vrnn": lambda: bench_vrnn(args),
                   "avf": lambda: bench_avf(args, spec, store), "bounds": lambda: bench_bounds(args, spec, store),
                   "midi": lambda: bench_midi(args), "memory": lambda: bench_memory(args),
                   "threads": lambda: bench_threads(args, spec, store)}
        for name in only:
            t0 = time.perf_counter()
            print(f"[{name}] ...", flush=True)
            results[name] = benches[name]()
            results[name]["bench_seconds"] = time.perf_counter() - t0
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str))   # partial results survive a crash
    results["bench_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(results, indent=1, default=str))
    rows = table(results)
    results["table"] = [dict(zip(("measurement", "value", "target", "status"), r)) for r in rows]
    args.out.write_text(json.dumps(results, indent=1, default=str))
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} intra-op thread(s) "
          f"(SEQVI_THREADS={m['SEQVI_THREADS']}), load average {m['load_average_at_start'][0]:.1f} at start")
    print(render(rows))
    print(f"\n{results['bench_seconds'] / 60:.1f} min; written to {args.out}")


if __name__ == "__main__":
    main()
