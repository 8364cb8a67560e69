# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SEQVI  := $(VENV)/bin/seqvi
STAMP  := $(VENV)/.installed
# 1 intra-op thread: measured faster and stall-free on 2 shared cores (see README).
export SEQVI_THREADS ?= 1

.PHONY: demo test check-wheel bench fuzz install clean planet

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,chorales]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(SEQVI) download bach-chorales
	$(SEQVI) preprocess bach-chorales
	$(SEQVI) train recipes/quickstart.yaml --run-dir runs/quickstart
	$(SEQVI) sample --checkpoint runs/quickstart --num 4 --length 64 --prime 8
	$(SEQVI) eval --checkpoint runs/quickstart --split test
	@echo "run: runs/quickstart   samples: runs/quickstart/samples (MIDI + samples.png)   plot: runs/quickstart/eval/test-best.png"

test: $(STAMP)
	$(PY) -m pytest -q

# The package as users install it: wheel -> fresh venv (with constraints.txt) -> commands run from other
# directories (.ci/wheel_smoke.sh; about 2-3 minutes, most of it installing torch). CI runs it after `test`.
check-wheel: $(STAMP)
	PYTHON=$(PY) bash .ci/wheel_smoke.sh

# The model-based RL loop (README, World models): random Pendulum episodes -> train the RSSM -> plan with CEM and
# collect 5 episodes with exploration noise -> retrain, PLANET_ROUNDS rounds; test returns per round in
# $(PLANET_OUT)/returns.json and returns.png. A rerun continues from the last finished round. Its data root is
# $(PLANET_OUT)/data (the user's store is never touched). The planner is cut to 100 candidates / top 10 / 5
# iterations for a CPU (seqvi plan's defaults are PlaNet's 1,000 / 100 / 10).
PLANET_RECIPE ?= recipes/planet_pendulum.yaml
PLANET_OUT    ?= runs/planet
PLANET_ROUNDS ?= 3
PLANET_ARGS   ?= --collect 5 --test-episodes 10 --candidates 100 --top-k 10 --iterations 5
planet: $(STAMP)
	$(PY) scripts/planet_loop.py $(PLANET_RECIPE) --out $(PLANET_OUT) --rounds $(PLANET_ROUNDS) $(PLANET_ARGS)

# pretty_midi is a benchmark-only dependency (the reference piano roll of bench/run.py's MIDI section).
bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt pretty_midi
	$(PY) bench/run.py

# Coverage-guided fuzzing (atheris) of the MIDI -> piano roll path and the SPHERE/WAV reader, each for
# FUZZ_SECONDS; not part of `make test`. Crashing inputs land in fuzz/crashes/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) fuzz/fuzz_midi.py -max_total_time=$(FUZZ_SECONDS) -timeout=20 fuzz/corpus/midi
	$(PY) fuzz/fuzz_sphere.py -max_total_time=$(FUZZ_SECONDS) -timeout=20 fuzz/corpus/sphere

clean:
	rm -rf $(VENV) runs datasets/raw datasets/processed
