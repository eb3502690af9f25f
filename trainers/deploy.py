"""What a finished training run leaves to deploy: `model.keras` and exports.

At the end of a run the chief writes, into `--model_dir`:

- `model.keras`: the calibrated model (`keras.models.load_model` reads it
  back with its per-width BN statistics), written to a temporary name and
  renamed, so a reader never sees half a file;
- with `--export=tflite,onnx`: `tflite/` and `onnx/`, one verified file per
  report width and a `manifest.json`, exactly as `keras-slim-demo` writes
  them (`keras_slim.export.to_tflite` / `to_onnx`, which stage their files
  and write the manifest last); `--quantize` applies to the TFLite files.

`report.json`, written last, records the size and sha256 of `model.keras`
(each export's are in its manifest): `check_outputs` verifies everything a
finished run claims, so a re-run rebuilds what is missing or damaged
instead of saying "nothing to do".

`model.keras` holds keras_slim's layers: `keras.models.load_model` needs
`import keras_slim` first (it registers them), see `LOAD_RECIPE`.

Example:

>>> write_model(model, "/tmp/run")
>>> export_widths(model, "/tmp/run", ["tflite"], widths=[0.25, 1.0])
>>> check_outputs("/tmp/run", ["tflite"])  # [] when all is there
"""

import hashlib
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

import keras_slim
from keras_slim import files

MODEL_FILE = "model.keras"
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"
# Keras finds custom layers through its registry, which `import keras_slim`
# fills: loading without it fails with "Could not locate class ...".
LOAD_RECIPE = "import keras, keras_slim; model = keras.models.load_model({!r})"
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
        # Saved locally first: model_dir may be a bucket.
        with files.atomic_path(final) as partial:
            tf.io.gfile.copy(local, partial, overwrite=True)
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


def file_record(path):
    """`{"size_bytes", "sha256"}` of a file (local or a tf.io.gfile path)."""
    digest = hashlib.sha256()
    size = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size_bytes": size, "sha256": digest.hexdigest()}


def _read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def check_outputs(model_dir, formats, quantize=""):
    """What a finished run's outputs lack: `[]` when all are there, intact.

    Checks that `report.json` is readable; that `model.keras` matches the
    size and sha256 the report recorded (or, for a report without them,
    that Keras loads it); and, per export format, that `manifest.json` is
    readable, lists a file per report width, and every file it lists
    exists with its recorded size and sha256 (and, for TFLite, the
    requested `quantize`).

    Returns:
        A list of sentences, one per problem found.
    """
    def path(*parts):
        return os.path.join(model_dir, *parts)

    if not tf.io.gfile.exists(path(REPORT_FILE)):
        return [f"{REPORT_FILE} is missing (the run stopped before the end "
                "of its final calibration and export)"]
    try:
        report = _read_json(path(REPORT_FILE))
        widths = report["widths"]
    except (ValueError, KeyError, TypeError):
        return [f"{REPORT_FILE} is not a readable report"]
    problems = []
    recorded = report.get("outputs", {}).get(MODEL_FILE)
    if not tf.io.gfile.exists(path(MODEL_FILE)):
        problems.append(f"{MODEL_FILE} is missing")
    elif recorded:
        if file_record(path(MODEL_FILE)) != recorded:
            problems.append(f"{MODEL_FILE} does not match the size and "
                            "sha256 its report recorded (damaged or replaced)")
    else:
        try:
            import keras

            keras.saving.load_model(path(MODEL_FILE))
        except Exception as err:  # noqa: BLE001 - any failure is the answer
            problems.append(f"{MODEL_FILE} cannot be loaded "
                            f"({type(err).__name__})")
    for fmt in formats:
        problems += _check_manifest(model_dir, fmt, len(widths),
                                    quantize if fmt == "tflite" else "")
    return problems


def _check_manifest(model_dir, fmt, num_widths, quantize):
    folder = os.path.join(model_dir, fmt)
    try:
        exports = _read_json(os.path.join(folder, MANIFEST_FILE))["exports"]
    except tf.errors.NotFoundError:
        return [f"{fmt}/{MANIFEST_FILE} is missing"]
    except (ValueError, KeyError, TypeError):
        return [f"{fmt}/{MANIFEST_FILE} is not a readable manifest"]
    problems = []
    if len(exports) < num_widths:
        problems.append(f"{fmt}/{MANIFEST_FILE} lists {len(exports)} files "
                        f"for {num_widths} report widths")
    for entry in exports:
        name = f"{fmt}/{entry.get('file')}"
        file_path = os.path.join(folder, str(entry.get("file")))
        if not tf.io.gfile.exists(file_path):
            problems.append(f"{name} is missing")
        elif file_record(file_path) != {"size_bytes": entry.get("size_bytes"),
                                        "sha256": entry.get("sha256")}:
            problems.append(f"{name} does not match the size and sha256 "
                            "its manifest recorded (damaged or replaced)")
        wanted = quantize or "float32"
        if fmt == "tflite" and entry.get("quantization", wanted) != wanted:
            problems.append(f"{name} is {entry.get('quantization')}, "
                            f"--quantize asks for {wanted}")
    return problems
