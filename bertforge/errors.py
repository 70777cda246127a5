"""The project's own error types: what the `bertforge` dispatcher prints as one clear line.

Anything else (a `ValueError` or `TypeError` from a bug) keeps its traceback. Stages subclass
these for their own failures (`ExportError`, `LaunchError`, `CheckpointError`, ...).
"""

from __future__ import annotations


class BertforgeError(Exception):
    """A failure bertforge explains itself: printed as `bertforge <command>: error: <message>`, exit 2."""


class UserError(BertforgeError):
    """Caused by the user's input (a path, a flag, a file); the message says what to fix."""


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message says which key and how to fix it."""
