"""Turns a dataset spec into batched `tf.data` image-classification pipelines.

Three kinds of spec are understood:

- `"digits"`: scikit-learn's 8x8 handwritten digits (offline, the default).
- `"tfds:NAME"`: a TensorFlow Datasets builder such as `"tfds:cifar10"`.
- `"folder:PATH"`: a local directory with one sub-folder of images per class.

`prepare_image_folder` makes such a folder from an archive or a TFDS data
set (`python -m keras_slim.data prepare SOURCE DESTINATION` on the command
line) and `find_bad_images` names the files in one that TensorFlow cannot
decode (`python -m keras_slim.data check FOLDER`).

Every pipeline yields `(images, labels)` batches: images are float32 scaled to
`[0, 1]` with shape `(batch, H, W, C)`, labels are int32 class indices of
shape `(batch,)`. `INPUT_RANGE`, `(0.0, 1.0)`, is that range: give it to the
exporters so that a file run on unscaled (0-255) images is an error.

Example:

>>> train_ds, val_ds, info = keras_slim.data.load("digits", batch_size=64)
>>> info.num_classes, info.input_shape
(10, (8, 8, 1))
>>> model.fit(train_ds, validation_data=val_ds, epochs=10)
>>> keras_slim.export.to_tflite(
...     model, "out/", input_range=keras_slim.data.INPUT_RANGE)
"""

import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow as tf

from keras_slim.data import errors
from keras_slim.data import image_files
from keras_slim.data.errors import BadImageError
from keras_slim.data.errors import DataError
from keras_slim.data.errors import NotPreparedError
from keras_slim.data.image_files import find_bad_images
from keras_slim.data.prepare import prepare_image_folder

_LOG = logging.getLogger(__name__)

# The value range every pipeline scales images to; exporters record it
# (`to_tflite(..., input_range=INPUT_RANGE)`) so that running a file on
# unscaled images is an error, not wrong labels.
INPUT_RANGE = (0.0, 1.0)

__all__ = [
    "INPUT_RANGE",
    "BadImageError",
    "DataError",
    "DatasetInfo",
    "NotPreparedError",
    "explain_decode_error",
    "find_bad_images",
    "load",
    "parse_spec",
    "prepare_image_folder",
]

_ALLOWED_SPECS = (
    "'digits', 'tfds:NAME' (e.g. 'tfds:cifar10'), "
    "or 'folder:PATH' (a directory with one sub-folder per class)"
)
_IMAGE_EXTENSIONS = image_files.IMAGE_EXTENSIONS
# The digits hold-out is fixed so every run evaluates on the same images.
_DIGITS_TEST_SIZE = 0.2
# Seed of the fixed hold-out permutation (digits and folders): independent of
# `seed`, so runs with different training seeds share one validation set.
_HOLDOUT_SEED = 0
# Upper bound on the memory the shuffle buffer may hold (float32 images).
# Small data sets (digits, CIFAR-10) get a full shuffle; big images a window.
_SHUFFLE_BUFFER_BYTES = 1 << 30
_MIN_SHUFFLE_BUFFER = 1024


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What `load` knows about the data set behind its pipelines.

    Attributes:
        name: The normalised spec, e.g. `"digits"`, `"tfds:cifar10"` or
            `"folder:/data/cifar10/train"`.
        num_classes: Number of classes; labels are in `[0, num_classes)`.
        input_shape: `(H, W, C)` of the images the pipelines yield.
        num_train: Number of examples in the training pipeline (after any
            hold-out).
        num_validation: Number of examples in the validation pipeline.
            Both counts are -1 when unknown (only for a TFDS data set that
            reports neither cardinality nor split sizes).
        class_names: One name per class index; `str(i)` when unknown.

    Example:

    >>> _, _, info = keras_slim.data.load("digits")
    >>> info.num_classes, info.input_shape, info.num_validation
    (10, (8, 8, 1), 360)
    >>> inputs = keras.Input(shape=info.input_shape)
    >>> outputs = keras.layers.Dense(info.num_classes)(
    ...     keras.layers.Flatten()(inputs))
    """

    name: str
    num_classes: int
    input_shape: tuple
    num_train: int
    num_validation: int
    class_names: tuple


def parse_spec(spec):
    """Splits a dataset spec into its kind and argument.

    Args:
        spec: `"digits"`, `"tfds:NAME"` or `"folder:PATH"`.

    Returns:
        A tuple `(kind, arg)`: `("digits", "")`, `("tfds", NAME)` or
        `("folder", PATH)`. `NAME` may carry a TFDS config/version
        (`"tfds:mnist:3.0.1"` gives `("tfds", "mnist:3.0.1")`).

    Raises:
        ValueError: if `spec` is not one of the forms above.

    Example:

    >>> parse_spec("tfds:cifar10")
    ('tfds', 'cifar10')
    >>> parse_spec("folder:/data/train")
    ('folder', '/data/train')
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"Dataset spec must be a string, got {spec!r} "
            f"({type(spec).__name__}). Allowed: {_ALLOWED_SPECS}."
        )
    text = spec.strip()
    if text == "digits":
        return "digits", ""
    kind, sep, arg = text.partition(":")
    if sep and kind in ("tfds", "folder"):
        arg = arg.strip()
        if not arg:
            what = "dataset name" if kind == "tfds" else "directory path"
            raise ValueError(
                f"Dataset spec {spec!r} is missing the {what} after "
                f"'{kind}:'. Allowed: {_ALLOWED_SPECS}."
            )
        return kind, arg
    raise ValueError(
        f"Unknown dataset spec {spec!r}. Allowed: {_ALLOWED_SPECS}."
    )


def load(
    spec="digits",
    *,
    batch_size=128,
    data_dir=None,
    image_size=None,
    validation_split=0.1,
    augment=False,
    shuffle=True,
    seed=0,
    cache=True,
    drop_remainder=False,
    skip_bad_images=False,
    download=False,
):
    """Builds training and validation pipelines from a dataset spec.

    Sources and their validation data:

    - `"digits"`: scikit-learn's `load_digits()` (1,797 grey 8x8 images, 10
      classes, pixel values 0..16 divided by 16). The validation split is
      always the same stratified 20% (360 images, `train_test_split(...,
      stratify=y, random_state=0)`); `validation_split` is checked but not
      used.
    - `"tfds:NAME"`: `tfds.load(NAME, data_dir=data_dir, as_supervised=True,
      download=download)`. Uses the `"test"` split for validation when the
      data set has one, otherwise holds out the last `validation_split` of
      `"train"`. The data must be prepared in `data_dir` already, unless
      `download=True` (which needs a network; without one TFDS retries for
      minutes): a data set that is not prepared is refused at once, saying
      where it was looked for and how to prepare it.
      Uint8 images are divided by 255; grey images keep one channel.
    - `"folder:PATH"`: a local directory with one sub-folder per class
      (`PATH/cat/001.jpg`, ...; `.bmp .gif .jpeg .jpg .png`, searched
      recursively inside each class folder; class index = sorted folder
      name, as in `keras.utils.image_dataset_from_directory`). Grey images
      give 1 channel, anything else 3 (RGB). Pixel values are divided by
      255. The hold-out is stratified: `round(validation_split * n)` images
      of every class of `n` images, picked by a fixed permutation, so it does
      not depend on `seed` and train/validation never overlap. Every file
      is checked once before anything is built (its signature and end,
      see `find_bad_images`; about 1 s per 50,000 files): files TensorFlow
      cannot decode are refused by name, or left out with a warning with
      `skip_bad_images=True`. (A file whose start and end are intact but
      whose middle is corrupt can still fail while training;
      `find_bad_images(PATH, decode=True)` finds those too.)
      `prepare_image_folder` makes such a folder from an archive or a TFDS
      data set.

    Training pipeline: decode -> (resize) -> `cache()` -> `shuffle()` ->
    augmentation -> `batch()` -> `prefetch()`. Validation pipeline: decode
    -> (resize) -> `cache()` -> `batch()` (never drops the remainder) ->
    `prefetch()`.

    Augmentation (`augment=True`) is the standard CIFAR recipe: zero-pad by
    `max(1, min(H, W) // 8)` pixels on every side (4 for 32x32, 1 for 8x8),
    random crop back to `H x W`, random horizontal flip. It uses stateless
    random ops seeded from `seed`, so two pipelines built with the same seed
    yield identical batches; each epoch draws new crops and flips. Note that
    flipping is not label-preserving for digits; augmentation is opt-in.

    Args:
        spec: `"digits"`, `"tfds:NAME"` or `"folder:PATH"`.
        batch_size: Positive int, examples per batch.
        data_dir: TFDS data directory (`tfds:` specs only; `None` means the
            TFDS default `~/tensorflow_datasets`).
        image_size: `None` to keep the native size (for folders: the size
            of the first image, every other image is resized to it), an int
            for square images or `(height, width)`. Resizing is bilinear.
        validation_split: Float in `(0, 1)`, fraction held out for
            validation when the source has no separate split (folders, TFDS
            sets without `"test"`).
        augment: Whether to augment the training images (see above).
        shuffle: Whether to shuffle the training examples every epoch.
        seed: Int seed for shuffling and augmentation; also makes the
            pipelines deterministic (`options.deterministic = True`). `None`
            gives a different order and augmentation on every run.
        cache: Whether to cache decoded images in memory (after decoding and
            resizing, before augmentation).
        drop_remainder: Whether the training pipeline drops the last,
            incomplete batch.
        skip_bad_images: `folder:` specs: leave out, with a warning naming
            them, image files that cannot be decoded, instead of raising.
            Every file is then decoded once to find them (about 5 s per
            50,000 small JPEGs), so files corrupt in the middle go too.
        download: `tfds:` specs: download and prepare a data set that is
            not prepared in `data_dir` yet (needs a network).

    Returns:
        A tuple `(train_ds, validation_ds, info)`: two batched, prefetched
        `tf.data.Dataset`s of `(images, labels)` (float32 `[0, 1]` images of
        shape `(batch, H, W, C)`, int32 labels of shape `(batch,)`) and a
        `DatasetInfo`.

    Raises:
        ValueError: for a bad spec, a bad argument, a missing or empty image
            folder, or an unknown / unsuitable TFDS data set.
        BadImageError: (a `DataError`, a `ValueError`) for image files in a
            folder that cannot be decoded; `.bad` lists them.
        NotPreparedError: (a `DataError`) if a TFDS data set is not
            prepared in `data_dir` and `download` is False.
        RuntimeError: if `download=True` and downloading fails (for
            example without a network).

    Example:

    >>> train_ds, val_ds, info = keras_slim.data.load(
    ...     "folder:/data/cifar10/train", batch_size=128, augment=True)
    >>> images, labels = next(iter(train_ds))
    >>> images.shape
    TensorShape([128, 32, 32, 3])
    >>> info.num_train, info.num_validation
    (45000, 5000)
    """
    kind, arg = parse_spec(spec)
    _check_int("batch_size", batch_size, minimum=1)
    _check_validation_split(validation_split)
    size = _normalize_image_size(image_size)
    if seed is not None:
        _check_int("seed", seed, minimum=0)
    _check_bool("skip_bad_images", skip_bad_images)
    _check_bool("download", download)

    if kind == "digits":
        train, val, meta = _digits_source(size)
    elif kind == "tfds":
        train, val, meta = _tfds_source(
            arg, data_dir, size, validation_split, download
        )
    else:
        train, val, meta = _folder_source(
            arg, size, validation_split, shuffle, seed, skip_bad_images
        )

    train_ds = _train_pipeline(
        train,
        num_examples=meta.num_train,
        batch_size=batch_size,
        augment=augment,
        shuffle=shuffle,
        seed=seed,
        cache=cache,
        drop_remainder=drop_remainder,
    )
    val_ds = _validation_pipeline(
        val, batch_size=batch_size, seed=seed, cache=cache
    )
    return train_ds, val_ds, meta


# ---------------------------------------------------------------------------
# Argument checks.


def _check_int(name, value, *, minimum):
    # bool is an int subclass; `batch_size=True` is a mistake, not 1.
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}, got {value!r}."
        )


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def _check_validation_split(value):
    ok = isinstance(value, (float, int, np.floating)) and not isinstance(
        value, bool
    )
    if not ok or not 0.0 < float(value) < 1.0:
        raise ValueError(
            "`validation_split` must be a float strictly between 0 and 1 "
            f"(e.g. 0.1), got {value!r}."
        )


def _normalize_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(
        image_size, bool
    ):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
        size = (int(height), int(width))
        valid = size == (height, width) and min(size) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            "`image_size` must be None, a positive int or a (height, width) "
            f"pair of positive ints, got {image_size!r}."
        )
    return size


# ---------------------------------------------------------------------------
# Sources: each returns unbatched (image float32 [0, 1], label int32)
# datasets for train and validation plus a DatasetInfo.


def _resize(image, size):
    """Resizes one (H, W, C) float image in [0, 1] to `size` (bilinear)."""
    if size is None:
        return image
    image = tf.image.resize(image, size, method="bilinear")
    # Bilinear weights sum to one, but rounding can step just past 1.0.
    return tf.clip_by_value(image, 0.0, 1.0)


def _digits_source(size):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    labels = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(
        images,
        labels,
        test_size=_DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=_HOLDOUT_SEED,
    )

    def make(x, y):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if size is not None:
            ds = ds.map(lambda im, lb: (_resize(im, size), lb))
        return ds

    height, width = size or images.shape[1:3]
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        input_shape=(int(height), int(width), 1),
        num_train=len(y_train),
        num_validation=len(y_val),
        class_names=tuple(str(i) for i in range(10)),
    )
    return make(x_train, y_train), make(x_val, y_val), info


_HOW_TO_PREPARE = (
    "Prepare it on a machine with a network (`tfds build {name} "
    "--data_dir=DIR`, or `keras_slim.data.load('tfds:{name}', "
    "data_dir=DIR, download=True)`), copy DIR here and pass it as "
    "`data_dir` (trainers and demo: --data_dir=DIR); or let this run "
    "download it (needs a network): `download=True` (trainers and demo: "
    "--download). Offline alternatives: 'folder:PATH' (see "
    "`keras_slim.data.prepare_image_folder`) or 'digits'."
)


def _tfds_root(builder, data_dir):
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    # The versioned folder TFDS looks in: <root>/<name>/<config>/<version>.
    return str(builder.data_dir)


def _not_prepared_message(name, builder, data_dir):
    where = f"data_dir={data_dir!r}" if data_dir else "TFDS' default data_dir"
    return (
        f"TFDS data set {name!r} is not prepared in {where} (looked for "
        f"{builder.data_dir}) and downloading is off. "
        + _HOW_TO_PREPARE.format(name=name)
    )


def _tfds_source(name, data_dir, size, validation_split, download):
    tfds = errors.import_tfds()

    spec = f"tfds:{name}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as err:  # DatasetNotFoundError is a ValueError.
        raise ValueError(
            f"Unknown TFDS data set in spec {spec!r}: {_first_line(err)} "
            "See https://www.tensorflow.org/datasets/catalog for names."
        ) from err

    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f"TFDS data set {name!r} has no (image, label) supervised keys "
            f"(got {keys!r}); only image classification data sets work."
        )
    image_key, label_key = keys
    label_feature = builder.info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    image_shape = getattr(builder.info.features[image_key], "shape", None)
    if not num_classes or not image_shape or len(image_shape) != 3:
        raise ValueError(
            f"TFDS data set {name!r} is not image classification: its "
            f"{image_key!r} feature has shape {image_shape!r} (need H, W, C) "
            f"and its {label_key!r} feature has num_classes={num_classes!r}."
        )
    height, width, channels = image_shape
    if size is None and (height is None or width is None):
        raise ValueError(
            f"TFDS data set {name!r} has images of varying size {image_shape}; "
            "pass `image_size=(height, width)` to resize them."
        )
    if channels is None:
        raise ValueError(
            f"TFDS data set {name!r} has an unknown number of channels."
        )

    def tfds_load(split, with_info=False):
        return tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            as_supervised=True,
            with_info=with_info,
            download=download,
        )

    if not download:
        # Without a network a download retries for minutes before it
        # fails: only read what is prepared (under `tfds.testing.mock_data`
        # this path reads the mock data).
        try:
            train, info = tfds_load("train", with_info=True)
        except Exception as err:  # TFDS: AssertionError "could not find"
            if builder.is_prepared():
                raise
            raise NotPreparedError(_not_prepared_message(
                name, builder, data_dir)) from err
    else:
        try:
            train, info = tfds_load("train", with_info=True)
        except Exception as err:
            raise RuntimeError(
                f"TFDS data set {name!r} could not be downloaded and "
                f"prepared in {_tfds_root(builder, data_dir)}: "
                f"{type(err).__name__}: {_first_line(err)}. "
                + _HOW_TO_PREPARE.format(name=name)
            ) from err

    # `info` is the prepared builder's: its split list and class names are
    # now accurate. (Under tfds.testing.mock_data without metadata files the
    # split list is empty, so the hold-out branch runs.)
    if "test" in info.splits:
        train_split, val_split = "train", "test"
        val = tfds_load(val_split)
    else:
        # The same boundary for both slices keeps them complementary.
        percent = f"{round(100.0 * (1.0 - float(validation_split)), 6):g}%"
        train_split, val_split = f"train[:{percent}]", f"train[{percent}:]"
        train = tfds_load(train_split)
        val = tfds_load(val_split)

    def prepare(image, label):
        if image.dtype == tf.uint8:
            image = tf.cast(image, tf.float32) / 255.0
        else:  # uint16 -> / 65535, float passes through.
            image = tf.image.convert_image_dtype(image, tf.float32)
        image = _resize(image, size)
        return image, tf.cast(label, tf.int32)

    names = getattr(info.features[label_key], "names", None) or [
        str(i) for i in range(num_classes)
    ]
    out_height, out_width = size or (height, width)
    meta = DatasetInfo(
        name=spec,
        num_classes=int(num_classes),
        input_shape=(int(out_height), int(out_width), int(channels)),
        num_train=_count(train, info, train_split),
        num_validation=_count(val, info, val_split),
        class_names=tuple(str(n) for n in names),
    )
    autotune = tf.data.AUTOTUNE
    return (
        train.map(prepare, num_parallel_calls=autotune),
        val.map(prepare, num_parallel_calls=autotune),
        meta,
    )


def _count(ds, info, split):
    # TFDS datasets know their cardinality (sliced ones too); the split
    # metadata (which understands slices) is only a fallback.
    n = int(ds.cardinality())
    if n >= 0:
        return n
    try:
        return int(info.splits[split].num_examples)
    except (KeyError, ValueError):
        return -1  # Unknown; DatasetInfo documents counts as best effort.


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def _without_bad_images(root, spec, files, skip):
    """`files` (one list per class) checked once; bad ones refused/skipped.

    The default check reads each file's signature and end (fast); when the
    user asks to skip bad files, every file is decoded once, so that files
    corrupt in the middle are left out too.
    """
    bad = find_bad_images([f for class_files in files for f in class_files],
                          decode=skip)
    if not bad:
        return files
    listing = image_files.describe(bad)
    total = sum(len(f) for f in files)
    if not skip:
        raise BadImageError(
            f"{len(bad)} of the {total} image files in {root!r} (spec "
            f"{spec!r}) cannot be decoded:\n{listing}\nDelete or replace "
            "them, or leave them out with a warning: `skip_bad_images=True` "
            "(trainers and demo: --skip_bad_images).",
            bad,
        )
    _LOG.warning(
        "Skipping %d of the %d image files in %r that cannot be decoded "
        "(skip_bad_images=True):\n%s", len(bad), total, root, listing,
    )
    drop = {path for path, _ in bad}
    return [[f for f in class_files if f not in drop] for class_files in files]


# What TensorFlow's image decoders say when a file is not a valid image.
_DECODE_FAILURE = re.compile(
    r"Unknown image file format|jpeg::|Invalid JPEG|Invalid PNG|PNG|GIF|BMP|"
    r"Input is empty|Decode(Image|Jpeg|Png|Gif|Bmp)", re.IGNORECASE)


def explain_decode_error(spec, error):
    """The `BadImageError` behind an image-decoding failure, or None.

    A file whose signature and end are intact but whose content is corrupt
    passes the check `load` makes and fails later, inside training, with
    TensorFlow's message and no file name. Given that error, this decodes
    every file of a `folder:` spec once and names the bad ones.

    Args:
        spec: The dataset spec the failing pipeline was built from.
        error: The exception raised while iterating it.

    Returns:
        A `BadImageError` to raise (`raise explained from error`), or None
        when the error is not about decoding a folder's images.

    Example:

    >>> try:
    ...     model.fit(train_ds, epochs=10)
    ... except tf.errors.InvalidArgumentError as err:
    ...     explained = keras_slim.data.explain_decode_error(spec, err)
    ...     if explained:
    ...         raise explained from err
    ...     raise
    """
    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    if not _DECODE_FAILURE.search(str(error)):
        return None
    kind, path = parse_spec(spec)
    if kind != "folder":
        return None
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        return None
    bad = find_bad_images(root, decode=True)
    if not bad:
        return None
    return BadImageError(
        f"An image file of {root!r} (spec {spec!r}) failed to decode while "
        f"the pipeline was running ({image_files.error_text(error)}). "
        f"Decoding every file found {len(bad)} that cannot be decoded:\n"
        f"{image_files.describe(bad)}\nDelete or replace them, or leave "
        "them out with a warning: `skip_bad_images=True` (trainers and "
        "demo: --skip_bad_images), which decodes every file once to find "
        "them.",
        bad,
    )


def _folder_source(path, size, validation_split, shuffle, seed,
                   skip_bad_images):
    spec = f"folder:{path}"
    layout = "one sub-folder per class, e.g. PATH/cat/001.jpg, PATH/dog/002.png"
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        exists = os.path.exists(root)
        what = "is not a directory" if exists else "does not exist"
        raise ValueError(
            f"Image folder {root!r} (spec {spec!r}) {what}. Expected a "
            f"directory with {layout}."
        )

    # Class index = sorted sub-folder name, as in Keras; hidden ones skipped.
    class_names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_names:
        raise ValueError(
            f"Image folder {root!r} (spec {spec!r}) has no class "
            f"sub-folders. Expected {layout}."
        )
    files = [image_files.list_images(os.path.join(root, name))
             for name in class_names]
    files = _without_bad_images(root, spec, files, skip_bad_images)
    total = sum(len(f) for f in files)
    if total == 0:
        raise ValueError(
            f"Image folder {root!r} (spec {spec!r}) has class sub-folders "
            f"{class_names[:5]} but no images in them. Allowed image "
            f"extensions: {' '.join(_IMAGE_EXTENSIONS)}."
        )
    if len(class_names) == 1:
        inner = os.path.join(root, class_names[0])
        raise ValueError(
            f"Image folder {root!r} (spec {spec!r}) has a single class "
            f"sub-folder {class_names[0]!r}; classification needs at least "
            f"2. If the class folders are inside it, use 'folder:{inner}'."
        )

    # Stratified, seed-independent hold-out: the same images are held out
    # whatever the training seed, and no image lands in both splits.
    rng = np.random.default_rng(_HOLDOUT_SEED)
    train_items, val_items = [], []
    for label, class_files in enumerate(files):
        order = rng.permutation(len(class_files))
        num_val = int(round(validation_split * len(class_files)))
        held_out = set(order[:num_val].tolist())
        for i, file_path in enumerate(class_files):
            items = val_items if i in held_out else train_items
            items.append((file_path, label))
    if not train_items or not val_items:
        empty = "validation" if not val_items else "training"
        raise ValueError(
            f"validation_split={validation_split} leaves no {empty} images "
            f"in {root!r} ({total} images in {len(class_names)} classes). "
            "Use a split that leaves at least one image per side, or add "
            "images."
        )
    if shuffle:
        # The files are grouped by class; a bounded shuffle buffer alone
        # would then yield long single-class runs, so mix them up front.
        order = np.random.default_rng(seed).permutation(len(train_items))
        train_items = [train_items[i] for i in order]

    first_file = next(f for f in files if f)[0]
    first = tf.io.decode_image(
        tf.io.read_file(first_file), expand_animations=False
    )
    channels = 1 if first.shape[-1] in (1, 2) else 3  # grey(+alpha) vs RGB(A)
    target = size or tuple(int(d) for d in first.shape[:2])

    def make(items):
        paths = tf.constant([p for p, _ in items])
        labels = tf.constant([lb for _, lb in items], dtype=tf.int32)

        def decode(file_path, label):
            image = tf.io.decode_image(
                tf.io.read_file(file_path),
                channels=channels,
                expand_animations=False,
            )
            image.set_shape([None, None, channels])
            image = tf.cast(image, tf.float32) / 255.0
            # Skip the resize when the size already matches: exact pixels.
            same = tf.reduce_all(tf.shape(image)[:2] == tf.constant(target))
            image = tf.cond(
                same,
                lambda: image,
                lambda: _resize(image, target),
            )
            image.set_shape([target[0], target[1], channels])
            return image, label

        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    meta = DatasetInfo(
        name=spec,
        num_classes=len(class_names),
        input_shape=(target[0], target[1], channels),
        num_train=len(train_items),
        num_validation=len(val_items),
        class_names=tuple(class_names),
    )
    return make(train_items), make(val_items), meta


# ---------------------------------------------------------------------------
# Pipelines.


def _options(seed):
    options = tf.data.Options()
    if seed is not None:
        # Parallel maps must not reorder elements when runs are seeded.
        options.deterministic = True
    return options


def _shuffle_buffer_size(num_examples, element_spec):
    image_spec = element_spec[0]
    bytes_per_image = max(1, int(np.prod(image_spec.shape)) * 4)
    cap = max(_MIN_SHUFFLE_BUFFER, _SHUFFLE_BUFFER_BYTES // bytes_per_image)
    return max(1, min(num_examples, cap)) if num_examples > 0 else cap


def _train_pipeline(
    ds, *, num_examples, batch_size, augment, shuffle, seed, cache,
    drop_remainder,
):
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(
            _shuffle_buffer_size(num_examples, ds.element_spec),
            seed=seed,
            reshuffle_each_iteration=True,
        )
    if augment:
        ds = _augment(ds, seed)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(seed))


def _validation_pipeline(ds, *, batch_size, seed, cache):
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(seed))


def _augment(ds, seed):
    height, width, channels = ds.element_spec[0].shape
    pad = max(1, min(height, width) // 8)
    # One [2]-shaped stateless seed per element, drawn from a seeded stream
    # that is redrawn every epoch: reproducible, yet new crops each epoch.
    # seed + 1 keeps this stream apart from the shuffle's.
    stream_seed = None if seed is None else seed + 1
    seeds = tf.data.Dataset.random(
        seed=stream_seed, rerandomize_each_iteration=True
    ).batch(2)

    def apply(example, element_seed):
        image, label = example
        crop_seed, flip_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, num=2)
        )
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])  # zeros
        image = tf.image.stateless_random_crop(
            padded, size=(height, width, channels), seed=crop_seed
        )
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image, label

    ds = tf.data.Dataset.zip((ds, seeds))
    return ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
