"""Helpers shared by the benchmark scripts: logging, spread statistics and
the CIFAR-10 JPEG folder.

Every benchmark is a module of the `benchmarks` package, run from the
repository root as `python -m benchmarks.NAME` or through the suite entry
point `python -m benchmarks --suite NAME`.
"""

import pathlib
import time

import numpy as np

from keras_slim import files

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "keras_slim" / "cifar10"


# An interrupted run never leaves a half-written record behind.
write_atomic = files.write_atomic


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def spread(values):
    """Median, 10th and 90th percentiles and the raw values of a sample."""
    values = np.asarray(values, "float64")
    return {
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
        "n": int(values.size),
        "runs": [round(float(v), 4) for v in values],
    }


def cifar10_folder(archive=DEFAULT_ARCHIVE, cache_dir=DEFAULT_CACHE):
    """The extracted CIFAR-10 `train/` folder (one sub-folder per class).

    `keras_slim.data.prepare_image_folder` extracts the archive once into
    `cache_dir` (outside the repository), atomically.
    """
    from keras_slim.data import prepare_image_folder

    try:
        return pathlib.Path(prepare_image_folder(archive, cache_dir))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CIFAR-10 archive not found: {archive} (see --archive)."
        ) from None
