"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero, no traceback."""

import argparse
import sys

from models.config import ConfigError


class UserError(Exception):
    """Bad input or an environment that cannot do what was asked; the message says what to change."""


USER_ERRORS = (UserError, ConfigError)


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None, interrupted: str) -> int:
    """Parse, dispatch to the subcommand's `_run`, and turn user mistakes into one line and exit 2."""
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return args._run(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
