"""The runner over many runs: sweeps, comparisons and the run listing behind ``seqvi runs``. Trains and
evaluates only through the engine's functions; the engine never imports this package."""
