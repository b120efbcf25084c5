"""Errors that carry enough context for a user to fix their input.

Every error raised for bad input names the file, the row (1-based, as a person counts lines or
records) and the field, so `sot` can print one actionable line and exit non-zero.
"""
from __future__ import annotations


class SotError(Exception):
    """Base class for every error the library raises on purpose."""


class InputError(SotError):
    """Bad user input: a file, a row in it, or a field of that row is wrong.

    Parameters
    ----------
    path : str
        The file (or dataset reference) being read.
    message : str
        What is wrong, in words a user can act on.
    row : int, optional
        1-based row or line number; None when the problem is the whole file.
    field : str, optional
        The offending field name, when there is one.
    """

    def __init__(self, path: str, message: str, row: int | None = None, field: str | None = None):
        self.path, self.row, self.field, self.message = str(path), row, field, message
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class OptionError(InputError, ValueError):
    """A bad value of a run option (a flow parameter, ``--option`` of `sot`): names the option.

    The message reads ``encoder 'hf:/no/model' (--encoder): <what is wrong>``: the parameter
    name as the Prefect run form shows it, the value, and the command-line flag. A `ValueError`
    too, for callers that catch the built-in error for bad arguments.
    """

    def __init__(self, option: str, value, message: str):
        self.option, self.value = option, value
        super().__init__(f"{option} {value!r} (--{option.replace('_', '-')})", message)


class StoreError(SotError):
    """The store (catalog or files under SOT_HOME) refuses an operation, e.g. a dimension clash."""


class StoreBusyError(StoreError):
    """Another process holds the store's single-writer lock."""
