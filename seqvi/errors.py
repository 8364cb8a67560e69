"""The one exception family seqvi raises for bad input.

Every message is one line that says what was wrong, where (file, key path,
byte offset when known) and how to fix it. The CLI prints it and exits 2;
only ``--debug`` shows a traceback. Library code never prints.
"""

from __future__ import annotations


class SeqviError(Exception):
    """Base class: a user-facing error with a one-line message."""

    exit_code = 2


class RecipeError(SeqviError):
    """A recipe or an override is malformed (unknown key, wrong type, bad value).

    ``key`` is the key path the message is about (``model.hidden_size``) and
    ``detail`` the message without its source, so that an error caused by a
    command-line override can be re-told as the override's.
    """

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key, self.detail = key, detail


class DataError(SeqviError):
    """An input data file is missing, corrupt, or outside a configured limit."""


class DownloadError(SeqviError):
    """A download failed: host unreachable, HTTP error, truncated body, checksum."""


class CheckpointError(SeqviError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""


class DiskFull(SeqviError):
    """A file system filled up (or a quota ran out) while writing: names the file, the mount, free and needed space."""
