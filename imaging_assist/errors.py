"""Errors the user sees as one line (the CLI prints ``error: <message>`` and exits 2)."""


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""
