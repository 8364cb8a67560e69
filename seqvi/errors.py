"""The one exception family seqvi raises for bad input.

Every message is one line that says what was wrong, where (file, key path,
byte offset when known) and how to fix it. The CLI prints it and exits 2;
only ``--debug`` shows a traceback. Library code never prints.
"""


class SeqviError(Exception):
    """Base class: a user-facing error with a one-line message."""

    exit_code = 2


class RecipeError(SeqviError):
    """A recipe or an override is malformed (unknown key, wrong type, bad value)."""


class DataError(SeqviError):
    """An input data file is missing, corrupt, or outside a configured limit."""


class DownloadError(SeqviError):
    """A download failed: host unreachable, HTTP error, truncated body, checksum."""


class CheckpointError(SeqviError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""
