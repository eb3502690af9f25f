"""Makes the image folder a `folder:PATH` spec reads, once and atomically.

From an archive (`.tar`, `.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`, `.zip`)
that holds one sub-folder per class, possibly inside a top folder (the
CIFAR-10 JPEG archive holds `train/airplane/0000.jpg ...`), or from a
TensorFlow Datasets split (`tfds:cifar10`), written as one PNG file per
image in `<split>/<class name>/`.

Everything is written to a hidden staging folder next to the destination
and renamed into place only when complete, with a marker file recording
what it holds: an interrupted preparation leaves nothing at the
destination (its leftovers are removed by the next call), and a complete
one is never redone.

Command line (`keras-slim-data` once installed):

    python -m keras_slim.data prepare cifar10-jpeg-train.tar.gz \
        ~/.cache/keras_slim/cifar10
    # -> Prepared 50000 images of 10 classes in
    #    /root/.cache/keras_slim/cifar10/train: use
    #    --dataset=folder:/root/.cache/keras_slim/cifar10/train
    python -m keras_slim.data prepare tfds:cifar10 ~/.cache/keras_slim/cifar10 \
        --download
"""

import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile

from keras_slim.data import image_files
from keras_slim.data.errors import import_tfds

_LOG = logging.getLogger("keras_slim.data")
MARKER = ".keras_slim_prepared.json"
# Written by earlier versions of `benchmarks.common.cifar10_folder`: a
# complete extraction of the CIFAR-10 archive, classes in `train/`.
_LEGACY_MARKER = ".extracted"


def prepare_image_folder(source, destination, *, split="train", data_dir=None,
                         download=False, verbose=1):
    """Prepares a folder of class sub-folders; returns the path to train on.

    Args:
        source: An archive file (see the module docstring) or
            `"tfds:NAME"` for a TensorFlow Datasets image classification
            data set.
        destination: The folder to create. It must not exist yet, be
            empty, or hold a complete earlier preparation (which is then
            returned as it is, without reading `source`).
        split: `tfds:` sources: the split to write (e.g. `"train"`,
            `"test"`); it becomes the sub-folder of `destination`.
        data_dir: `tfds:` sources: the TFDS data directory.
        download: `tfds:` sources: download the data set if it is not
            prepared in `data_dir` (needs a network).
        verbose: 0 silent, 1 log what is done.

    Returns:
        The folder holding the class sub-folders (inside `destination`),
        e.g. `destination/train`: pass `f"folder:{path}"` to
        `keras_slim.data.load`.

    Raises:
        FileNotFoundError: if the archive does not exist.
        ValueError: if `destination` holds something else, or the source
            has no folder of at least 2 class sub-folders with images.

    Example:

    >>> folder = keras_slim.data.prepare_image_folder(
    ...     "cifar10-jpeg-train.tar.gz", "~/.cache/keras_slim/cifar10")
    >>> train_ds, val_ds, info = keras_slim.data.load(f"folder:{folder}")
    """
    destination = os.path.abspath(os.path.expanduser(os.fspath(destination)))
    source = os.fspath(source)
    is_tfds = source.startswith("tfds:")
    if not is_tfds:
        source = os.path.abspath(os.path.expanduser(source))
    parent, name = os.path.split(destination)
    if not name:
        raise ValueError(f"destination {destination!r} names no folder.")
    os.makedirs(parent, exist_ok=True)
    with _locked(os.path.join(parent, f".{name}.lock")):
        done = _prepared_folder(destination)
        if done:
            if verbose:
                _LOG.info("%s is already prepared.", done)
            return done
        _check_destination_free(destination)
        if not is_tfds and not os.path.isfile(source):
            raise FileNotFoundError(f"Archive not found: {source}")
        # Leftovers of an interrupted preparation (we hold the lock).
        for stale in glob.glob(os.path.join(parent, f".{name}.partial-*")):
            shutil.rmtree(stale, ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 is for secrets
        try:
            if is_tfds:
                folder = _write_tfds(source[len("tfds:"):], staging, split,
                                     data_dir, download, verbose)
            else:
                if verbose:
                    _LOG.info("Extracting %s to %s (once).", source,
                              destination)
                _extract(source, staging)
                folder = _class_root(staging, source)
            summary = _summarise(folder, staging, source)
            with open(os.path.join(staging, MARKER), "w") as f:
                json.dump(summary, f, indent=1)
            if os.path.isdir(destination):
                os.rmdir(destination)  # empty: checked above
            os.rename(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    folder = os.path.normpath(os.path.join(destination, summary["folder"]))
    bad = image_files.find_bad_images(folder)
    if bad:
        _LOG.warning(
            "%d image files in %s cannot be decoded (keras_slim.data.load "
            "refuses them unless skip_bad_images=True):\n%s", len(bad),
            folder, image_files.describe(bad))
    if verbose:
        _LOG.info("Prepared %d images of %d classes in %s.",
                  summary["num_images"], summary["num_classes"], folder)
    return folder


def _prepared_folder(destination):
    """The class folder of a complete preparation at `destination`."""
    marker = os.path.join(destination, MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            folder = os.path.normpath(
                os.path.join(destination, json.load(f)["folder"]))
        return folder if os.path.isdir(folder) else None
    legacy = os.path.join(destination, "train")
    if (os.path.isfile(os.path.join(destination, _LEGACY_MARKER))
            and os.path.isdir(legacy)):
        return legacy
    return None


def _check_destination_free(destination):
    if not os.path.exists(destination):
        return
    if not os.path.isdir(destination):
        raise ValueError(
            f"destination {destination} is a file; pass a folder path.")
    if os.listdir(destination):
        raise ValueError(
            f"destination {destination} exists, is not empty and was not "
            "made by prepare_image_folder (no marker file "
            f"{MARKER}). Pass a new or empty folder, or delete it.")


@contextlib.contextmanager
def _locked(path):
    """One preparation at a time per destination (other callers wait)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _extract(archive, target):
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            # "data" refuses absolute paths, links out of the target, etc.
            tar.extractall(target, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(target)  # strips absolute and ".." parts
    else:
        raise ValueError(
            f"{archive} is not a tar or zip archive (allowed: .tar, .tar.gz, "
            ".tgz, .tar.bz2, .tar.xz, .zip).")


def _class_root(top, source):
    """The folder under `top` that holds the class sub-folders.

    Walks down while a folder holds exactly one visible sub-folder and no
    images (an archive's top folder such as `train/`).
    """
    folder = top
    while True:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")
                   and not e.name.startswith("__MACOSX")]
        subfolders = [e for e in entries if e.is_dir()]
        images = [e for e in entries if e.is_file()
                  and e.name.lower().endswith(image_files.IMAGE_EXTENSIONS)]
        if len(subfolders) == 1 and not images:
            folder = subfolders[0].path
            continue
        break
    classes = [e.name for e in os.scandir(folder) if e.is_dir()
               and not e.name.startswith(".")
               and image_files.list_images(e.path)]
    if len(classes) < 2:
        raise ValueError(
            f"{source} holds no folder of class sub-folders with images "
            "(expected e.g. train/cat/001.jpg, train/dog/002.jpg, or "
            f"cat/001.jpg ...; found {len(classes)} class folder(s) in "
            f"{os.path.relpath(folder, top)!r}). Nothing was written.")
    return folder


def _summarise(folder, staging, source):
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir()
                     and not e.name.startswith("."))
    counts = {c: len(image_files.list_images(os.path.join(folder, c)))
              for c in classes}
    return {
        "source": source,
        "folder": os.path.relpath(folder, staging),
        "num_images": sum(counts.values()),
        "num_classes": len(classes),
        "images_per_class": counts,
    }


def _write_tfds(name, staging, split, data_dir, download, verbose):
    """Writes one PNG per example of a TFDS split; returns its folder."""
    import keras
    import tensorflow as tf
    tfds = import_tfds()

    from keras_slim import data as data_lib

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as err:
        raise ValueError(f"Unknown TFDS data set {name!r}: {err}") from err
    try:
        dataset, info = tfds.load(name, split=split, data_dir=data_dir,
                                  as_supervised=True, with_info=True,
                                  download=download)
    except Exception as err:  # TFDS: AssertionError "could not find data"
        if download or builder.is_prepared():
            raise
        raise data_lib.NotPreparedError(
            data_lib._not_prepared_message(name, builder, data_dir)) from err
    label_key = info.supervised_keys[1]
    names = getattr(info.features[label_key], "names", None)
    if not names:
        raise ValueError(f"TFDS data set {name!r} has no class names.")
    folder = os.path.join(staging, re.sub(r"[^\w.-]+", "_", split))
    for class_name in names:
        os.makedirs(os.path.join(folder, _safe(class_name)), exist_ok=True)
    total = info.splits[split].num_examples if split in info.splits else None
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="image")
    digits = len(str(total or 10**6))
    for index, (image, label) in enumerate(dataset):
        path = os.path.join(folder, _safe(names[int(label)]),
                            f"{index:0{digits}d}.png")
        tf.io.write_file(path, tf.io.encode_png(image))
        progress.update(index + 1)
    return folder


def _safe(name):
    """A class name as a folder name (no separators, not hidden)."""
    cleaned = re.sub(r"[/\\:]+", "_", str(name)).strip() or "_"
    return "_" + cleaned if cleaned.startswith(".") else cleaned
