"""Files written whole or not at all: temporary name, then a rename.

Every writer of a result (manifests, reports, searched configurations,
exported files, benchmark records) goes through here, so an interrupted run
never leaves half a file that a later run or a reader would trust. Paths
may be local or any filesystem `tf.io.gfile` knows (a trainer's `model_dir`
on a bucket).
"""

import contextlib
import json
import os
import uuid


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; renames it to `path` if the
    block finishes, deletes it if the block raises.

    For files another library writes (a converter, `model.save`): write to
    the yielded path.

    Example:

    >>> with atomic_path("out/model.keras") as temporary:
    ...     model.save(temporary)
    """
    path = os.fspath(path)
    gfile = _gfile()
    directory = os.path.dirname(path)
    if directory:
        gfile.makedirs(directory)
    name = os.path.basename(path)
    stem, extension = os.path.splitext(name)
    # Same directory (a rename within one filesystem is atomic); keeps the
    # extension, which some writers check (".keras", ".tflite").
    temporary = os.path.join(
        directory, f".{stem}.partial-{uuid.uuid4().hex[:8]}{extension}")
    try:
        yield temporary
        gfile.rename(temporary, path, overwrite=True)
    finally:
        if gfile.exists(temporary):
            gfile.remove(temporary)


def write_atomic(path, data):
    """Writes `data` (str or bytes) to `path` atomically.

    Example:

    >>> write_atomic("out/report.md", "# Report\\n")
    """
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    with atomic_path(path) as temporary:
        with _gfile().GFile(temporary, mode) as f:
            f.write(data)


def write_json_atomic(path, value, indent=2, default=None):
    """Writes `value` as JSON to `path` atomically (newline-terminated).

    Example:

    >>> write_json_atomic("out/report.json", {"accuracy": 0.97})
    """
    with atomic_path(path) as temporary:
        with _gfile().GFile(temporary, "w") as f:
            json.dump(value, f, indent=indent, default=default)
            f.write("\n")
