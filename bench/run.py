"""seqvi benchmarks: ratios and rates measured side by side in one run.

Prints and writes ``bench/results.json``:

* preprocessing throughput (MIDI files per second) of the MIDI adapter on the
  bach-chorales raw files (exported first if missing),
* training throughput (real time steps per second) of the quickstart model,
  median over repeats after a warm-up, with 1 and 2 torch threads measured
  in the same run (their ratio chose the default thread count).

Usage: ``make bench`` (or ``python bench/run.py [--repeats N]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seqvi.config import load_recipe  # noqa: E402
from seqvi.data.batches import crop_batch, epoch_order  # noqa: E402
from seqvi.data.manifest import raw_dir, store_path  # noqa: E402
from seqvi.data.prepare import download, preprocess  # noqa: E402
from seqvi.data.store import Store  # noqa: E402
from seqvi.engine.setup import DataSpec, build  # noqa: E402
from seqvi.objectives import filter_sequence, training_loss  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_preprocess(repeats: int) -> dict:
    if not any(raw_dir("bach-chorales").rglob("*.mid")):
        download("bach-chorales")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            report = _preprocess_into(Path(tmp))
            times.append(time.perf_counter() - start)
    files = report.files
    return {"files": files, "seconds_median": statistics.median(times),
            "files_per_second": files / statistics.median(times)}


def _preprocess_into(tmp: Path):
    from seqvi.data.manifest import load_manifest
    from seqvi.data.polyphonic import preprocess_midi

    return preprocess_midi(load_manifest("bach-chorales"), raw_dir("bach-chorales"), tmp / "b.h5")


def bench_train(recipe_path: Path, threads: int, steps: int, warmup: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    recipe = load_recipe(recipe_path)
    if not store_path(recipe.data.dataset).exists():
        preprocess(recipe.data.dataset)
    with Store(store_path(recipe.data.dataset)) as store:
        spec = DataSpec.from_store(store, recipe.data.dataset)
        model, inference = build(recipe, spec, torch.device("cpu"))
        params = list(model.parameters()) + list(inference.parameters())
        opt = torch.optim.Adam(params, lr=recipe.train.lr)
        split = store.split("train")
        order = epoch_order(split, recipe.data.batch_size, 0, 0)
        batches = [crop_batch(split, order[i % len(order)], recipe.data.crop_length, 0, 0, i)
                   for i in range(steps)]
        rates = []
        for r in range(repeats + 1):
            done, start = 0, time.perf_counter()
            for x, mask in batches:
                loss = training_loss(filter_sequence(model, inference, x, mask))
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += int(mask.sum())
            if r >= warmup:
                rates.append(done / (time.perf_counter() - start))
    return {"threads": threads, "time_steps_per_second": statistics.median(rates),
            "repeats": rates, "batch_size": recipe.data.batch_size, "crop_length": recipe.data.crop_length}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    args = parser.parse_args()
    results = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "preprocess": bench_preprocess(3),
    }
    train = {}
    # Alternate thread settings so drift on a shared machine hits both alike.
    for _ in range(2):
        for threads in (1, 2):
            r = bench_train(args.recipe, threads, args.steps, 1, max(1, args.repeats // 2))
            train.setdefault(threads, []).extend(r["repeats"])
    results["train"] = {
        f"threads_{t}": {"time_steps_per_second": statistics.median(v), "samples": len(v)}
        for t, v in train.items()
    }
    ratio = results["train"]["threads_2"]["time_steps_per_second"] / results["train"]["threads_1"]["time_steps_per_second"]
    results["train"]["ratio_2_over_1_threads"] = ratio
    out = REPO / "bench" / "results.json"
    out.write_text(json.dumps(results, indent=1))
    p = results["preprocess"]
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch {torch.__version__}")
    print(f"preprocess (MIDI adapter, bach-chorales): {p['files_per_second']:.0f} files/s "
          f"({p['files']} files in {p['seconds_median']:.2f} s, median of 3)")
    for t in (1, 2):
        print(f"train (quickstart VRNN, {t} thread{'s' * (t > 1)}): "
              f"{results['train'][f'threads_{t}']['time_steps_per_second']:,.0f} time steps/s")
    print(f"ratio 2 threads / 1 thread: {ratio:.2f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
