"""Training, evaluation, sampling, checkpoints and runs. Knows no model or data set by name."""
