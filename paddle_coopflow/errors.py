"""User-facing errors: tools print them as one line and exit 2 (no traceback)."""


class UserError(Exception):
    """Something the user can fix (a path, a flag, a checkpoint/config mismatch)."""


class CheckpointError(UserError):
    """A checkpoint prefix is incomplete, corrupt or does not match the config."""
