#!/usr/bin/env bash
# Seeds x recipes: one run directory per pair, runs/sweep/<recipe>/seed<N>.
#   scripts/sweep.sh "0 1 2" recipes/vrnn_midi.yaml recipes/srnn_midi.yaml
# With SEQVI_SBATCH=scripts/slurm/train.sbatch each pair is submitted with sbatch;
# otherwise the runs go one after another on this machine. Re-running the sweep
# resumes unfinished runs and skips none (a finished run resumes to its end at once).
set -euo pipefail
SEEDS=${1:?usage: sweep.sh "SEEDS" RECIPE [RECIPE ...]}
shift
[ "$#" -gt 0 ] || { echo "usage: sweep.sh \"SEEDS\" RECIPE [RECIPE ...]" >&2; exit 2; }
for recipe in "$@"; do
    name=$(basename "$recipe" .yaml)
    for seed in $SEEDS; do
        run="runs/sweep/$name/seed$seed"
        if [ -n "${SEQVI_SBATCH:-}" ]; then
            sbatch --job-name="seqvi-$name-$seed" "$SEQVI_SBATCH" "$recipe" "$run" "seed=$seed"
        else
            seqvi train "$recipe" "seed=$seed" --run-dir "$run"
        fi
    done
done
