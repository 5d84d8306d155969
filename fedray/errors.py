"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (config, file, argument). The CLI prints its
message on one line and exits with code 2, without a traceback; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input from the user. The message names the problem and the fix."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid config file, key, type or value."""
