"""Errors that the CLI turns into one clear line and exit code 2."""

from __future__ import annotations


class MedSAM3Error(Exception):
    """A user-facing error: bad input file, bad argument, unsupported data.

    The message names the file or value and what would be accepted. The CLI prints it
    on one line and exits with code 2; the Python API lets it propagate.
    """

    exit_code = 2


class InputError(MedSAM3Error):
    """An input file is missing, unreadable, corrupt or of an unsupported kind."""


class ArgumentError(MedSAM3Error):
    """A command-line or API argument has an unacceptable value."""
