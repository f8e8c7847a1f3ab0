"""The exception types that mean "the user asked for something that cannot work".

Command lines print these as one `error:` line and exit 2; every other exception is a bug and
keeps its traceback. They live in `data_pipeline` (the lowest layer, which never imports
`pretrain`) so that both packages raise the same types.
"""


class UserError(Exception):
    """A mistake in the input, the config or the workdir; the message names it and the fix."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (whatever the data and hardware)."""


class DataError(UserError, ValueError):
    """Input data that cannot be read or used: empty, not text, malformed rows."""


class MissingInputError(DataError, FileNotFoundError):
    """A file or folder the user named does not exist or cannot be read."""
