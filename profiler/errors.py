"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero, no traceback."""

from models.config import ConfigError


class UserError(Exception):
    """Bad input or an environment that cannot do what was asked; the message says what to change."""


USER_ERRORS = (UserError, ConfigError)
