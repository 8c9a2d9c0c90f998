"""The one error family every stage raises, its exit codes, and how a foreign exception becomes one line."""

from __future__ import annotations

EXIT_WITH_REJECTS = 3  # the run completed, but some rows went to the rejects file instead of the output
EXIT_CLUSTER = 4  # --engine ray: the cluster could not be reached, or was lost mid-run; the same command can be run again


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


class ClusterError(SbertError):
    """The Ray cluster cannot be reached, refuses the run, or was lost during it: the same command (with --resume
    after a run that published something) is worth running again once it is back."""

    exit_code = EXIT_CLUSTER


class CacheError(SbertError):
    """The vector cache file is not an sbert cache, or is damaged."""


class Interrupted(SbertError):
    """A stop was requested (SIGINT, SIGTERM): the run ended after a whole batch; nothing partial was kept."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_line(error: BaseException, limit: int = 200) -> str:
    """A foreign exception's message cut to its first line (libraries raise pages of text), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
