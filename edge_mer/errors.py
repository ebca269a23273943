"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a missing optional part; the message says what to do."""

    exit_code = 2
