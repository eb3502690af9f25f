"""Errors about the data a spec names, as opposed to a bad argument.

Programs (the trainers, the demo) print these without a traceback: the
message says what is wrong with the files and what to do.
"""


class DataError(ValueError):
    """The data named by a dataset spec cannot be used as it is.

    The base class of `BadImageError` and `NotPreparedError`; a
    `ValueError`, so code that catches bad arguments catches it too.

    Example:

    >>> try:
    ...     train_ds, val_ds, info = keras_slim.data.load("tfds:cifar10")
    ... except keras_slim.data.DataError as err:
    ...     sys.exit(f"ERROR: {err}")  # says what is wrong and what to do
    """


class BadImageError(DataError):
    """Image files that cannot be decoded; `.bad` lists (path, reason).

    Raised by `keras_slim.data.load` for a `folder:` spec with files
    TensorFlow cannot decode (unless `skip_bad_images=True`), and returned
    by `keras_slim.data.explain_decode_error`.

    Example:

    >>> try:
    ...     keras_slim.data.load("folder:/data/train")
    ... except keras_slim.data.BadImageError as err:
    ...     for path, reason in err.bad:
    ...         os.remove(path)
    """

    def __init__(self, message, bad):
        super().__init__(message)
        self.bad = list(bad)


class NotPreparedError(DataError):
    """A TFDS data set is not prepared in the data directory.

    Raised by `keras_slim.data.load` and `prepare_image_folder` for a
    `tfds:NAME` spec without `download=True`; the message says where the
    data set was looked for and how to prepare it.

    Example:

    >>> try:
    ...     data = keras_slim.data.load("tfds:cifar10", data_dir="/data/tfds")
    ... except keras_slim.data.NotPreparedError:
    ...     data = keras_slim.data.load("tfds:cifar10", data_dir="/data/tfds",
    ...                                 download=True)  # needs a network
    """


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
