"""Train and evaluate the direct-vs-AVF table on bach-chorales (README "Direct vs AVF").

    python scripts/bach_table.py [--runs runs/bach] [--refine 20] [--jobs 2]

For each of VRNN, SRNN, DMM x {direct, AVF(1), AVF(5)} (and VRNN with AVF's learned-SGD update): `seqvi train
recipes/bach/<m>_<q>.yaml` (AVF(K): K iterations per step in training and in
evaluation), then `seqvi eval --split test --bound all --particles 16 --refine N`,
and, for the network trained with 5 iterations, again with `--iterations 1`.
Prints a Markdown table of nats per step: free energy, -ELBO, -IWAE(16),
-FIVO(16), the amortization gap, KL, and the training wall time from
metrics.jsonl. Runs resume if interrupted; finished evaluations are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Longest trainings first, so two workers finish together.
ROWS = [(m, q) for q in ("avf5", "avf", "direct") for m in ("srnn", "vrnn", "dmm")] + [("vrnn", "avf_sgd")]
LABELS = {"direct": "direct", "avf": "AVF(1)", "avf5": "AVF(5)", "avf_sgd": "AVF(1), learned-SGD update"}


def seqvi(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seqvi", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def run_row(model: str, q: str, runs: Path, refine: int) -> list[dict]:
    run = runs / f"{model}_{q}"
    seqvi("train", f"recipes/bach/{model}_{q}.yaml", "--run-dir", str(run), "--device", "cpu")
    evals = [("", [])] + ([(" at 1 iteration", ["--iterations", "1"])] if q == "avf5" else [])
    rows = []
    for label, extra in evals:
        out = run / "eval" / f"table{'_k1' if extra else ''}.json"
        if not out.exists():
            seqvi("eval", "--checkpoint", str(run), "--split", "test", "--bound", "all", "--particles", "16",
                  "--refine", str(refine), "--json", str(out), "--device", "cpu", *extra)
        result = json.loads(out.read_text())
        times = [json.loads(line)["time"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows.append({"row": f"{model.upper()} {LABELS[q]}{label}", "F": result["nats_per_step"],
                     "KL": result["kl_per_step"], **{k: v["nats_per_step"] for k, v in result["columns"].items()},
                     "minutes": (max(times) - min(times)) / 60})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bach")
    parser.add_argument("--refine", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated runs to do, e.g. srnn_avf5,dmm_direct "
                        "(prints no table)")
    args = parser.parse_args()
    todo = [r for r in ROWS if not args.only or "_".join(r) in args.only.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(todo, pool.map(lambda r: run_row(*r, args.runs, args.refine), todo)))
    if args.only:
        return
    results = [done[r] for m in ("vrnn", "srnn", "dmm") for q in ("direct", "avf", "avf5", "avf_sgd")
               if (r := (m, q)) in done]
    cols = ["F", "-ELBO", "-IWAE(16)", "-FIVO(16)", "gap", "KL"]
    print("| model, q | " + " | ".join(cols) + " | train min |")
    print("|---" * (len(cols) + 2) + "|")
    for rows in results:
        for r in rows:
            print(f"| {r['row']} | " + " | ".join(f"{r.get(c, float('nan')):.3f}" for c in cols)
                  + f" | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
