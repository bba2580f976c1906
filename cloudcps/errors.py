"""Errors a user can fix.

Every exception raised on purpose by the library derives from :class:`CloudCPSError`. Its message is
one line that names the file or option at fault and says how to fix it; the command line prints it
and exits with status 1, without a traceback.
"""

from __future__ import annotations


class CloudCPSError(Exception):
    """A failure the user can fix (bad input, bad option, missing file)."""


class InputError(CloudCPSError):
    """An input file or folder cannot be used as given."""


class OutputExistsError(CloudCPSError):
    """An output already exists and ``overwrite`` was not asked for."""


class TrainingDivergedError(CloudCPSError):
    """Training produced a non-finite loss."""


def first_line(exc: BaseException, limit: int | None = 200, default: str | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), for one-line
    errors; ``default`` (else the exception's type name) when the message is empty."""
    text = str(exc).strip()
    if not text:
        return default or type(exc).__name__
    line = text.splitlines()[0]
    return line[:limit] if limit is not None else line
