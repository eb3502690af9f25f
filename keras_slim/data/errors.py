"""Errors about the data a spec names, as opposed to a bad argument.

Programs (the trainers, the demo) print these without a traceback: the
message says what is wrong with the files and what to do.
"""


class DataError(ValueError):
    """The data named by a dataset spec cannot be used as it is."""


class BadImageError(DataError):
    """Image files that cannot be decoded; `.bad` lists (path, reason)."""

    def __init__(self, message, bad):
        super().__init__(message)
        self.bad = list(bad)


class NotPreparedError(DataError):
    """A TFDS data set is not prepared in the data directory."""
