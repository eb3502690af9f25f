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


def import_tfds():
    """`tensorflow_datasets`, or a clear error saying how to install it.

    TFDS is an optional dependency (only `tfds:NAME` specs need it):
    `pip install "keras-slim[tfds]"`.
    """
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise DataError(
            "tfds:NAME data sets need TensorFlow Datasets, which is not "
            f"installed ({error}). Install it with: pip install "
            "'keras-slim[tfds]' (or: pip install tensorflow-datasets "
            "importlib_resources)."
        ) from None
    return tensorflow_datasets
