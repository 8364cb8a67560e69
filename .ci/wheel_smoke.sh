#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it (not editable) into a fresh
# venv, and run it from directories that are not the repository.
#   .ci/wheel_smoke.sh            (make check-wheel; CI runs it after make test)
# Checks: --version; the manifests come from the installed package; download with --root;
# preprocess with the installed default data root ./datasets; train a recipe given by path
# with $SEQVI_DATA from yet another directory; eval and runs on the result.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/seqvi-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "build the wheel"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
wheel=$(ls "$work"/dist/seqvi-*.whl)
unzip -l "$wheel" | grep -q 'seqvi/data/manifests/bach-chorales.yaml' || { echo "manifests missing from $wheel"; exit 1; }

step "install it into a fresh venv (torch pinned by constraints.txt)"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet -c "$repo/constraints.txt" "${wheel}[chorales]"
seqvi="$work/venv/bin/seqvi"
export SEQVI_THREADS=1
unset SEQVI_DATA SEQVI_MANIFESTS

mkdir -p "$work/project" "$work/elsewhere"
cd "$work/project"
step "seqvi --version"
"$seqvi" --version
"$work/venv/bin/python" - <<'EOF'
import seqvi.data.manifest as m
assert m.source_checkout() is None, m.source_checkout()
assert "site-packages" in str(m.MANIFEST_DIR) and (m.MANIFEST_DIR / "bach-chorales.yaml").is_file(), m.MANIFEST_DIR
print("manifests:", m.MANIFEST_DIR, "default data root:", m.default_data_root())
EOF

step "download with --root, preprocess from the default ./datasets"
"$seqvi" download bach-chorales --limit 5 --root "$work/project/datasets"
"$seqvi" preprocess bach-chorales
test -f "$work/project/datasets/processed/bach-chorales.h5"

step "train a recipe given by path, from another directory, data from \$SEQVI_DATA"
cd "$work/elsewhere"
export SEQVI_DATA="$work/project/datasets"
"$seqvi" train "$repo/recipes/debug.yaml" train.epochs=1 --run-dir runs/debug --device cpu
test -f runs/debug/checkpoints/best.pt
"$seqvi" eval --checkpoint runs/debug --device cpu > /dev/null
"$seqvi" runs
step "wheel smoke test passed"
