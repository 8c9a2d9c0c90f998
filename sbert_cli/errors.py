"""The one error family every stage raises and the CLI maps to an exit code."""

from __future__ import annotations


class SbertError(Exception):
    """A failure the user can act on: the message is one line that names the place and the fix."""

    exit_code = 1


class UsageError(SbertError):
    """The command line asks for something impossible: a missing file, an unknown format or column."""

    exit_code = 2


class InputDataError(SbertError):
    """A row of the input cannot be read: malformed, null or non-string text, empty input."""


class ModelError(SbertError):
    """The model cannot be found or loaded."""


class OutputError(SbertError):
    """The output cannot be written."""
