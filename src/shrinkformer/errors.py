"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""


class ShrinkformerError(Exception):
    """Base class: the message names what is wrong and where."""

    exit_code = 1


class UsageError(ShrinkformerError):
    """Impossible parameters or unknown configuration keys."""

    exit_code = 2


class DataError(ShrinkformerError):
    """Unreadable or inconsistent corpus files."""


class CheckpointError(ShrinkformerError):
    """A checkpoint that is missing, truncated, corrupt or of another kind."""


class TrainingError(ShrinkformerError):
    """Training cannot go on (for example a non-finite loss)."""


class OutputError(ShrinkformerError):
    """An output that cannot be written: a parent that is a file, no permission, a full disk."""
