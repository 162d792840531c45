"""User-facing errors: tools print them as one line and exit 2 (no traceback).

:class:`~paddle_coopflow.config.ConfigError` (a config file or an ``-o`` override) subclasses
:class:`UserError` too, so catching ``UserError`` catches every error a user can fix.
"""


class UserError(Exception):
    """Something the user can fix (a path, a flag, a checkpoint/config mismatch)."""


class CheckpointError(UserError):
    """A checkpoint prefix is incomplete, corrupt or does not match the config."""


class DatasetError(UserError):
    """A missing, corrupt or misconfigured dataset; the message names the file and the fix.

    Raised when a data set is opened (missing root, empty folder, corrupt archive) and when a
    corrupt image is met later, while reading it.
    """
