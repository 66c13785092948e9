"""The root of every error a user can act on: it names the cause and carries the fix.

Library code raises a subclass (``ConfigError``, ``PKIError``, ``BudgetExceeded`` ...); commands let
it propagate, and the `mor` command groups (``mor_secure.cli.MorGroup``) print it without a
traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class MorError(Exception):
    """An error the user can fix: ``str(error)`` names the cause; ``fix`` says what to do when the
    message does not already say it (a class may set a default for all its instances)."""

    fix: str = ""

    def __init__(self, *args: object, fix: str | None = None) -> None:
        super().__init__(*args)
        if fix is not None:
            self.fix = fix

    def user_message(self) -> str:
        """The message shown to the user: the cause, then the fix unless the cause already holds it."""
        text = str(self)
        return f"{text}\nfix: {self.fix}" if self.fix and self.fix not in text else text


class BadInput(MorError, ValueError):
    """An option, file or folder given to a command cannot be used (out of range, not one of its choices,
    not what it should hold); the message names it and what to pass instead."""


class MissingInput(MorError, FileNotFoundError):
    """A file or folder a command needs is not there; the message names it and what produces it."""


class OutputExists(MorError, FileExistsError):
    """A command would overwrite something it must not; the message says how to choose another place."""
