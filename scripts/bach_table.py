"""The direct-vs-AVF table on bach-chorales (README "Direct vs AVF"), three seeds per row.

    python scripts/bach_table.py [--runs runs/bach] [--seeds 0 1 2] [--rows vrnn_direct,vrnn_avf_best,...]

Each row is a recipe of ``recipes/bach/`` (quickstart sizes, 100 epochs, the
same schedule for direct and AVF of one model). For each: ``seqvi sweep
RECIPE --seeds ... --eval "--bound all --particles 16 --refine 20"`` (a rerun
resumes unfinished runs and skips finished ones), then one ``seqvi compare``
over every row's runs on the test split writes ``<runs>/table.md`` (mean ± sd
over seeds) and the learning curves ``<runs>/compare.png``. The AVF
configurations (``*_avf_best``) were chosen on the validation split only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Direct and the chosen AVF per model, then the rows that explain the levers: AVF reading the observation
# instead of the errors, and AVF as it was (5 iterations from the prior, gradients only). Longest first.
ROWS = ["vrnn_avf_best", "srnn_avf_best", "dmm_avf_best", "vrnn_direct", "srnn_direct", "dmm_direct",
        "vrnn_avf_obs", "srnn_avf_obs", "dmm_avf_obs", "vrnn_avf5", "srnn_avf5", "dmm_avf5"]
EVAL = "--bound all --particles 16 --refine 20"


def seqvi(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seqvi", *args], check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bach")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated recipes of recipes/bach/")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    for row in rows:
        seqvi("sweep", str(REPO / "recipes" / "bach" / f"{row}.yaml"), "--seeds", *args.seeds,
              "--runs", str(args.runs), "--eval", EVAL, "--device", "cpu")
    seqvi("compare", *[str(args.runs / row) for row in rows], "--split", "test",
          "--markdown", str(args.runs / "table.md"), "--plot", str(args.runs / "compare.png"))
    print((args.runs / "table.md").read_text())


if __name__ == "__main__":
    main()
