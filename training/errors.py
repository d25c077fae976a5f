"""Domain errors raised by offline stages.

The CLI turns these into one readable line and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""


class HmppsError(Exception):
    """A user-facing error: bad input, mismatched artifacts, nothing valid to do."""

    exit_code = 2


class InputError(HmppsError):
    """An input file or directory is missing, malformed or of the wrong kind."""


class ArtifactMismatch(HmppsError):
    """An input artifact belongs to a different dataset or schema version."""
