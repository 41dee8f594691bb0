"""Errors that are the user's to fix: the command layer (cli/) prints them as one line and exits 2, no traceback."""

from models.config import ConfigError


class UserError(Exception):
    """Bad input or an environment that cannot do what was asked; the message says what to change."""


USER_ERRORS = (UserError, ConfigError)
