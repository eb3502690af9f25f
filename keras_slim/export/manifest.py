"""Shared export machinery: argument checks, staging, verification, manifest.

Every exporter follows the same protocol so that a failed export never
leaves a manifest that claims success:

1. all arguments are checked (widths, quantization, data, output directory)
   before anything is written;
2. files are written to a private staging directory inside `out_dir` and
   each one is verified against Keras right after it is written;
3. only when every file passed, the old `manifest.json` is removed, the
   files are moved into `out_dir`, and the new manifest is written last,
   atomically (temporary file + `os.replace`).

On any error the staging directory is deleted and the error propagates.
"""

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile

import keras
import numpy as np

from keras_slim import files
from keras_slim.model import SlimmableModel
from keras_slim.profiling import profile
from keras_slim.stripping import strip
from keras_slim.width import width_suffix

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
QUANTIZATIONS = (None, "float16", "dynamic", "int8")

# Allowed max |export - keras| relative to max(1, max |keras output|). fp32 is
# round-off only. Quantized exports change the numbers by design; their bound
# only catches broken files (NaNs, wrong or missing weights), and accuracy is
# judged by the argmax agreement and the user's own evaluation.
DEFAULT_TOLERANCE = {
    None: 1e-4,
    "float16": 2e-2,
    "dynamic": 0.15,
    "int8": 0.3,
}
# Verification samples when no representative data is given.
NUM_RANDOM_SAMPLES = 8
MAX_SAMPLES = 64


class ExportVerificationError(RuntimeError):
    """An exported file does not reproduce the Keras model's outputs.

    Raised by the exporters (`to_tflite`, `to_onnx`, ...) when a file they
    just wrote, run on the verification inputs, differs from the Keras
    model by more than the tolerance; no manifest then claims the file.

    Example:

    >>> try:
    ...     keras_slim.export.to_tflite(model, "out/", quantize="int8",
    ...                                 representative_data=x_train[:200])
    ... except keras_slim.export.ExportVerificationError as err:
    ...     print(err)  # which file, its max |diff| and the tolerance
    """


def check_model(model):
    if not isinstance(model, SlimmableModel):
        raise ValueError(
            "Expected a keras_slim.SlimmableModel (e.g. from keras_slim.slim"
            f"(...)); got {type(model).__name__}. To export a plain Keras "
            "model use tf.lite.TFLiteConverter or tf2onnx directly."
        )
    if len(model.network.inputs) != 1:
        raise ValueError(
            "Export supports single-input networks; this one has "
            f"{len(model.network.inputs)} inputs."
        )
    shape = model.network.inputs[0].shape
    if any(d is None for d in shape[1:]):
        raise ValueError(
            "Export needs a fixed input shape (except the batch); the "
            f"network's input shape is {tuple(shape)}."
        )


def check_widths(model, widths):
    """Validates every width; returns `[(width, tag), ...]`.

    Raises:
        ValueError: for an empty list, an invalid width or configuration, or
            a width listed twice (two exports would share a file name).
    """
    if widths is None:
        widths = model.widths or sorted(set(model.width_range))
    if isinstance(widths, (int, float, dict)):
        widths = [widths]
    widths = list(widths)
    if not widths:
        raise ValueError("`widths` is empty; pass at least one width.")
    plans, seen = [], {}
    for width in widths:
        model.channels_for(width)  # raises a ValueError naming the problem
        if not isinstance(width, dict):
            width = model._validate_width(width)
        tag = width_suffix(width)
        if tag in seen:
            raise ValueError(
                f"Width {width!r} is listed twice (as {seen[tag]!r}); every "
                "export needs its own file name."
            )
        seen[tag] = width
        plans.append((width, tag))
    return plans


def check_quantize(quantize, representative_data):
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown quantize={quantize!r}. Allowed: None (float32), "
            "'float16', 'dynamic' (int8 weights, float activations) or "
            "'int8' (full integer, needs representative_data)."
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "quantize='int8' calibrates activation ranges and needs "
            "`representative_data`: a few hundred typical inputs (numpy "
            "array or tf.data.Dataset of inputs or (inputs, labels))."
        )


def as_samples(model, representative_data, limit=None):
    """Inputs as one float32 array: the given data, or seeded random."""
    shape = tuple(model.network.inputs[0].shape[1:])
    if representative_data is None:
        rng = np.random.default_rng(0)
        return rng.standard_normal((NUM_RANDOM_SAMPLES,) + shape).astype(
            "float32"
        )
    data = representative_data
    if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        batches, total = [], 0
        for batch in data.as_numpy_iterator():
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            batch = np.asarray(batch)
            if batch.shape == shape:
                batch = batch[None]
            batches.append(batch)
            total += len(batch)
            if limit is not None and total >= limit:
                break
        if not batches:
            raise ValueError("`representative_data` yielded no examples.")
        data = np.concatenate(batches)
    data = np.asarray(data, dtype="float32")
    if data.shape == shape:
        data = data[None]
    if data.ndim != len(shape) + 1 or tuple(data.shape[1:]) != shape:
        raise ValueError(
            f"`representative_data` must hold inputs of shape {shape} "
            f"(with a leading batch axis); got an array of shape {data.shape}."
        )
    if len(data) == 0:
        raise ValueError("`representative_data` is empty.")
    return data[:limit] if limit is not None else data


def input_entry(samples, representative_data, input_range=None):
    """The manifest's "input" section: what the files expect to be fed.

    The value range is `input_range` when given (what the training data was
    scaled to, e.g. `keras_slim.data.INPUT_RANGE`), else the range of the
    representative data, else unknown (seeded random verification inputs).
    """
    if input_range is not None:
        try:
            low, high = (float(v) for v in input_range)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(
                "`input_range` must be a pair (low, high) of finite numbers "
                f"with low < high (e.g. (0.0, 1.0)); got {input_range!r}."
            )
        value_range, source = [low, high], "declared"
    elif representative_data is not None:
        value_range = [float(samples.min()), float(samples.max())]
        source = "representative_data"
    else:
        value_range, source = None, None
    return {"dtype": "float32", "range": value_range, "range_source": source}


def manifest_input(path):
    """The "input" section of the manifest next to an exported file, or None."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        manifest = read_manifest(os.path.dirname(os.path.abspath(path)),
                                 missing_ok=True)
    except ValueError:  # an unreadable manifest: check shapes only
        return None
    return (manifest or {}).get("input")


def check_run_inputs(inputs, expected_shape, input_info, what):
    """Refuses inputs an exported file would silently mis-read.

    Args:
        inputs: What the user passed (array-like, batch first).
        expected_shape: The file's input shape, batch first; None or -1 for
            sizes it accepts freely.
        input_info: The manifest's "input" section (see `input_entry`), or
            None.
        what: The file, for messages.

    Returns:
        `inputs` as a float32 array.

    Raises:
        ValueError: for an integer array where the file takes floats (unless
            it lies inside the recorded range), a shape the file does not
            take, or values far outside the recorded training range.
    """
    array = np.asarray(inputs)
    value_range = (input_info or {}).get("range")
    range_text = (
        f" in [{value_range[0]:g}, {value_range[1]:g}] (as the training "
        "data; see the manifest's 'input')" if value_range else ""
    )
    if array.dtype.kind not in "f":
        inside = value_range is not None and array.size and (
            value_range[0] <= array.min() and array.max() <= value_range[1]
        )
        if not inside:
            raise ValueError(
                f"{what} takes float32 inputs{range_text}; got {array.dtype} "
                "values. Preprocess them as for training, e.g. "
                "`images.astype('float32') / 255` for 0-255 images."
            )
    array = array.astype("float32")
    expected = [None if d is None or int(d) < 0 else int(d)
                for d in expected_shape]
    if array.ndim != len(expected) or any(
        want is not None and got != want
        for got, want in zip(array.shape[1:], expected[1:])
    ):
        shown = tuple("batch" if i == 0 else ("any" if d is None else d)
                      for i, d in enumerate(expected))
        raise ValueError(
            f"{what} takes inputs of shape {shown}; got an array of shape "
            f"{array.shape}."
        )
    if value_range is not None and array.size:
        low, high = value_range
        margin = 0.5 * (high - low)
        if array.min() < low - margin or array.max() > high + margin:
            raise ValueError(
                f"{what} was trained on inputs{range_text}; these range over "
                f"[{array.min():g}, {array.max():g}]. Preprocess them as for "
                "training (e.g. divide 0-255 images by 255)."
            )
    return array


def compare(reference, actual, quantize, tolerance=None):
    """Fidelity figures of an export; raises over tolerance.

    Returns:
        dict with max_abs_diff, tolerance (absolute), argmax_agreement.
    """
    reference = np.asarray(reference, "float64")
    actual = np.asarray(actual, "float64")
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE[quantize]
    scale = max(1.0, float(np.abs(reference).max()))
    if not np.all(np.isfinite(actual)):
        diff = float("inf")
    else:
        diff = float(np.abs(reference - actual).max())
    result = {
        "max_abs_diff": diff,
        "tolerance": tolerance * scale,
        "argmax_agreement": float(
            np.mean(reference.argmax(-1) == actual.argmax(-1))
        ) if reference.ndim >= 2 and reference.shape[-1] > 1 else None,
        "num_samples": int(reference.shape[0]),
        # Judge the diff against the output magnitude (a near-zero output
        # makes any absolute bound meaningless).
        "output_scale": float(np.abs(reference).max()),
    }
    return result


def verify(result, what):
    if not result["max_abs_diff"] <= result["tolerance"]:
        raise ExportVerificationError(
            f"{what} does not reproduce the Keras model: max |diff| = "
            f"{result['max_abs_diff']:.3g} over {result['num_samples']} "
            f"samples, allowed {result['tolerance']:.3g}. The file was not "
            "kept and no manifest was written."
        )


def width_fields(width):
    """Manifest fields naming a width: a float, or None plus the config."""
    if isinstance(width, dict):
        return {"width": None,
                "config": {k: int(v) for k, v in width.items()}}
    return {"width": float(width)}


def describe(model, width, stripped):
    """Manifest fields of one width: channels, MACs, params."""
    counts = profile(stripped)
    entry = width_fields(width)
    entry.update(
        channels=counts["channels"],
        macs=counts["macs"],
        params=counts["params"],
        bn_statistics=sorted(set(stripped.bn_sources.values())) or None,
    )
    return entry


def file_entry(path, model, width, stripped, result, **fields):
    """The manifest row of one verified file: `fields`, what `describe`
    gives, the file's size and digest, and the verification `result`."""
    entry = {"file": os.path.basename(path), **fields}
    entry.update(describe(model, width, stripped))
    entry.update(
        size_bytes=os.path.getsize(path), sha256=sha256(path), **result
    )
    return entry


def export_widths(model, out_dir, plans, samples, write, run, *, what,
                  extension, input_info, quantize=None, tolerance=None,
                  fold_bn=False, **fields):
    """Writes, verifies and records one file per width; returns the manifest.

    Each width of `plans` (from `check_widths`) is stripped, written by
    `write(stripped, path)` into a staging directory, run by
    `run(path, samples)` and compared with Keras; the manifest is committed
    only when every file reproduces Keras (see `Staging`).

    Example:

    >>> export_widths(model, "out/", check_widths(model, None), samples,
    ...               write, run, what="ONNX", extension=".onnx",
    ...               input_info=info, format="onnx")
    """
    entries = []
    with staging(out_dir) as stage:
        for width, tag in plans:
            stripped = strip(model, width, fold_bn=fold_bn)
            path = stage.file(f"{model.network.name}_{tag}{extension}")
            write(stripped, path)
            result = compare(keras_reference(stripped, samples),
                             run(path, samples), quantize, tolerance)
            verify(result, f"{what} export of width {width!r}")
            entries.append(
                file_entry(path, model, width, stripped, result, **fields))
        return stage.commit(entries, model, input_info=input_info)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Staging:
    """A staging directory in `out_dir`; `commit` publishes it atomically.

    Creating `out_dir` and the staging directory is the writability check:
    it fails with an `OSError` before any export is attempted.
    """

    def __init__(self, out_dir):
        self.out_dir = os.fspath(out_dir)
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise NotADirectoryError(
                f"out_dir '{self.out_dir}' exists and is not a directory."
            )
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix=".staging-", dir=self.out_dir)
        except OSError as error:
            raise type(error)(
                error.errno,
                f"Cannot write to out_dir '{self.out_dir}' ({error.strerror}); "
                "pass a writable directory",
            ) from None

    def file(self, name):
        return os.path.join(self.path, name)

    def commit(self, entries, model, extra=None, input_info=None):
        """Moves the staged files into `out_dir`, then writes the manifest.

        Entries of an existing manifest for other files are kept, so that
        e.g. a TFLite and an ONNX export can share one directory. `extra`:
        more top-level manifest fields (e.g. an early-exit section).
        `input_info`: the "input" section (`input_entry`).
        """
        manifest_path = os.path.join(self.out_dir, MANIFEST_NAME)
        previous = read_manifest(self.out_dir, missing_ok=True)
        names = {e["file"] for e in entries}
        kept = [
            e for e in (previous or {}).get("exports", [])
            if e.get("file") not in names
            and os.path.exists(os.path.join(self.out_dir, e.get("file", "")))
        ]
        # From here on files change; without a manifest nothing is claimed.
        with contextlib.suppress(FileNotFoundError):
            os.remove(manifest_path)
        for entry in entries:
            os.replace(self.file(entry["file"]),
                       os.path.join(self.out_dir, entry["file"]))
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "model": model.name,
            "input_shape": [int(d) for d in model.network.inputs[0].shape[1:]],
            "input": input_info or (previous or {}).get("input"),
            "width_range": list(model.width_range),
            "widths": model.widths,
            "created": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"),
            "exports": kept + entries,
        }
        manifest.update(extra or {})
        files.write_json_atomic(manifest_path, manifest,
                                default=_json_default)
        self.cleanup()
        return manifest

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staging(out_dir):
    stage = Staging(out_dir)
    try:
        yield stage
    finally:
        stage.cleanup()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_manifest(out_dir, missing_ok=False):
    """Reads `out_dir/manifest.json`.

    Args:
        out_dir: An export directory.
        missing_ok: Return None instead of raising when there is none.

    Returns:
        The manifest dict: "exports" lists one entry per file (file, format,
        width or config, channels, macs, params, size_bytes, max_abs_diff,
        quantization, ...).

    Example:

    >>> manifest = keras_slim.export.read_manifest("out")
    >>> [(e["file"], e["macs"]) for e in manifest["exports"]]
    """
    path = os.path.join(os.fspath(out_dir), MANIFEST_NAME)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    except json.JSONDecodeError:
        if missing_ok:
            return None
        raise ValueError(f"'{path}' is not a valid manifest (bad JSON).")


def input_signature(model, name="input"):
    import tensorflow as tf

    shape = (None,) + tuple(model.network.inputs[0].shape[1:])
    dtype = model.network.inputs[0].dtype or "float32"
    return tf.TensorSpec(shape, dtype, name=name)


def keras_reference(stripped, samples):
    return np.asarray(
        keras.ops.convert_to_numpy(stripped(samples, training=False))
    )
