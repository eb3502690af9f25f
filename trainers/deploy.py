"""What a finished training run leaves to deploy: `model.keras` and exports.

At the end of a run the chief writes, into `--model_dir`:

- `model.keras`: the calibrated model (`keras.models.load_model` reads it
  back with its per-width BN statistics), written to a temporary name and
  renamed, so a reader never sees half a file;
- with `--export=tflite,onnx`: `tflite/` and `onnx/`, one verified file per
  report width and a `manifest.json`, exactly as `keras-slim-demo` writes
  them (`keras_slim.export.to_tflite` / `to_onnx`, which stage their files
  and write the manifest last); `--quantize` applies to the TFLite files.

Example:

>>> write_model(model, "/tmp/run")
>>> export_widths(model, "/tmp/run", ["tflite"], widths=[0.25, 1.0])
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

import keras_slim

MODEL_FILE = "model.keras"
FORMATS = ("tflite", "onnx")
QUANTIZATIONS = ("", "float16", "dynamic", "int8")
# Representative images for int8 calibration and export verification.
_REPRESENTATIVE_EXAMPLES = 200


def check_options(formats, quantize):
    """Validates `--export` / `--quantize` before any training starts."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(
            f"--export: unknown format(s) {unknown}; allowed: "
            f"{', '.join(FORMATS)} (comma-separated)."
        )
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"--quantize={quantize!r}; allowed: float16, dynamic, int8 or "
            "empty (float32)."
        )
    if quantize and "tflite" not in formats:
        raise ValueError("--quantize applies to --export=tflite only.")


def write_model(model, model_dir):
    """Saves `model` as `model_dir/model.keras`, atomically."""
    final = os.path.join(model_dir, MODEL_FILE)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, MODEL_FILE)
        model.save(local)
        partial = final + ".partial"
        tf.io.gfile.copy(local, partial, overwrite=True)
        tf.io.gfile.rename(partial, final, overwrite=True)
    return final


def representative_images(dataset, limit=_REPRESENTATIVE_EXAMPLES):
    """Up to `limit` input images of an `(images, labels)` dataset."""
    batches, total = [], 0
    for images, _ in dataset:
        batches.append(np.asarray(images))
        total += len(batches[-1])
        if total >= limit:
            break
    return np.concatenate(batches)[:limit]


def export_widths(model, model_dir, formats, widths, quantize="",
                  representative_data=None):
    """Writes verified per-width files and manifests into `model_dir`.

    Returns:
        dict format -> manifest.
    """
    manifests = {}
    if "tflite" in formats:
        manifests["tflite"] = keras_slim.export.to_tflite(
            model, os.path.join(model_dir, "tflite"), widths=widths,
            quantize=quantize or None,
            representative_data=representative_data,
            input_range=keras_slim.data.INPUT_RANGE,
        )
    if "onnx" in formats:
        manifests["onnx"] = keras_slim.export.to_onnx(
            model, os.path.join(model_dir, "onnx"), widths=widths,
            input_range=keras_slim.data.INPUT_RANGE,
        )
    return manifests


def is_complete(model_dir, formats):
    """Whether a finished run already wrote everything it should have."""
    needed = [MODEL_FILE, "report.json"] + [
        os.path.join(fmt, "manifest.json") for fmt in formats
    ]
    return all(tf.io.gfile.exists(os.path.join(model_dir, p)) for p in needed)
