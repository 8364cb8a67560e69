"""Train and evaluate the direct-vs-AVF table on bach-chorales (README "Direct vs AVF").

    python scripts/bach_table.py [--runs runs/bach] [--refine 20] [--jobs 2]

For each of VRNN, SRNN, DMM x {direct, AVF}: `seqvi train recipes/bach/<m>_<q>.yaml`,
then `seqvi eval --split test --bound all --particles 16 --refine N` (and, for
AVF, again with `--iterations 5`). Prints a Markdown table of nats per step:
free energy, -ELBO, -IWAE(16), -FIVO(16), the amortization gap, and the
training wall time from metrics.jsonl. Runs resume if interrupted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = [(m, q) for m in ("vrnn", "srnn", "dmm") for q in ("direct", "avf")]


def seqvi(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seqvi", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def run_row(model: str, q: str, runs: Path, refine: int) -> list[dict]:
    run = runs / f"{model}_{q}"
    seqvi("train", f"recipes/bach/{model}_{q}.yaml", "--run-dir", str(run), "--device", "cpu")
    evals = [("", [])] + ([(" eval K=5", ["--iterations", "5"])] if q == "avf" else [])
    rows = []
    for label, extra in evals:
        out = run / "eval" / f"table{'_k5' if extra else ''}.json"
        if not out.exists():
            seqvi("eval", "--checkpoint", str(run), "--split", "test", "--bound", "all", "--particles", "16",
                  "--refine", str(refine), "--json", str(out), "--device", "cpu", *extra)
        result = json.loads(out.read_text())
        times = [json.loads(line)["time"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows.append({"row": f"{model.upper()} {'AVF(1)' if q == 'avf' else 'direct'}{label}",
                     "F": result["nats_per_step"], **{k: v["nats_per_step"] for k, v in result["columns"].items()},
                     "minutes": (max(times) - min(times)) / 60})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bach")
    parser.add_argument("--refine", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda r: run_row(*r, args.runs, args.refine), ROWS))
    cols = ["F", "-ELBO", "-IWAE(16)", "-FIVO(16)", "gap"]
    print("| model, q | " + " | ".join(cols) + " | train min |")
    print("|---" * (len(cols) + 2) + "|")
    for rows in results:
        for r in rows:
            print(f"| {r['row']} | " + " | ".join(f"{r.get(c, float('nan')):.3f}" for c in cols)
                  + f" | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
