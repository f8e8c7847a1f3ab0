"""The project's exception types for user mistakes; anything else raised is a bug.

`pretrain/command.py` prints a `UserError` as one `error:` line and exits 2. Every other
exception, a `ValueError` from inside JAX or orbax included, keeps its traceback: hiding it would
hide a bug from the person who must fix it.
"""

from data_pipeline.errors import ConfigError, DataError, MissingInputError, UserError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MissingInputError",
    "NonFiniteError",
    "UserError",
    "WorkdirError",
]


class CheckpointError(UserError):
    """A checkpoint that cannot be used or written (mismatched model, unreadable, disk full)."""


class WorkdirError(UserError):
    """A workdir of the wrong kind, held by another run, or not a folder."""


class NonFiniteError(UserError):
    """Training produced a non-finite loss or gradient more often than allowed; the message names
    the step and the fix (a lower learning rate, or config.max_bad_steps)."""
