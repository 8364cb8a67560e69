"""The fault-injection suite (issue 23): disk full, read-only mounts, concurrency, special files, foreign files."""
