"""TFLite export: one verified `.tflite` per width, or one multi-signature file.

Each width is first baked into a stock Keras model by `keras_slim.strip`,
so the converter sees the network one would have built at that width (no
slicing ops, only the active weights), then converted with
`tf.lite.TFLiteConverter.from_keras_model` and checked with the LiteRT
interpreter against Keras.
"""

import os
import tempfile

import numpy as np

from keras_slim import files
from keras_slim.export import manifest as mf
from keras_slim.export import runtimes
from keras_slim.export import staged
from keras_slim.export.converters import MAX_CALIBRATION_SAMPLES
from keras_slim.export.converters import apply_litert_options
from keras_slim.export.converters import convert_keras_model
from keras_slim.export.converters import litert_options
from keras_slim.stripping import strip
from keras_slim.width import width_suffix

def run_tflite(model, inputs, signature_key=None):
    """Runs a TFLite model on a batch with the LiteRT interpreter.

    Inputs are checked first: the file's input shape, float values (an
    integer array, e.g. 0-255 images, is refused rather than cast), and,
    when the file sits next to its `manifest.json`, the value range the
    model was trained on.

    Args:
        model: A `.tflite` path or flatbuffer bytes.
        inputs: A float32 array with a leading batch axis, preprocessed as
            the training data.
        signature_key: Run this signature of a multi-signature file.

    Returns:
        The (first) output as a numpy array.

    Raises:
        ValueError: for inputs of another shape, integer inputs, or values
            far outside the recorded training range.

    Example:

    >>> logits = keras_slim.export.run_tflite("out/net_w0.5.tflite", x)
    """
    interpreter = runtimes.litert_interpreter(model)
    what = ("The TFLite file" if isinstance(model, (bytes, bytearray))
            else f"'{os.fspath(model)}'")
    input_info = mf.manifest_input(model)
    if signature_key is not None:
        runner = interpreter.get_signature_runner(signature_key)
        ((name, detail),) = runner.get_input_details().items()
        inputs = mf.check_run_inputs(
            inputs, detail["shape_signature"], input_info, what)
        outputs = runner(**{name: inputs})
        return np.asarray(outputs[sorted(outputs)[0]])
    (detail,) = interpreter.get_input_details()
    inputs = mf.check_run_inputs(
        inputs, detail["shape_signature"], input_info, what)
    interpreter.resize_tensor_input(detail["index"], list(inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], inputs)
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    return np.array(interpreter.get_tensor(output["index"]))


def to_tflite(
    model,
    out_dir,
    widths=None,
    quantize=None,
    representative_data=None,
    tolerance=None,
    fold_bn=False,
    input_range=None,
    **early_exit_kwargs,
):
    """Exports one verified `.tflite` file per width, plus `manifest.json`.

    For each width the model is stripped (`keras_slim.strip`) and converted
    with `tf.lite.TFLiteConverter.from_keras_model`. Right after writing,
    each file is run with `ai_edge_litert`'s interpreter on sample inputs
    (`representative_data`, or seeded random inputs) and compared with the
    stripped Keras model. The manifest lists, per file: width (or config),
    channels per layer, MACs, params, file size, sha256, measured max |diff|,
    argmax agreement, format and quantization. Entries of an existing
    manifest for other files in `out_dir` are kept.

    Nothing is written before every argument is checked, files are staged
    in a temporary directory inside `out_dir`, and the manifest is written
    last and atomically: if any export fails verification, the call raises
    and leaves no manifest claiming it.

    Verification tolerance: max |tflite - keras| must be at most
    `tolerance * max(1, max |keras|)`, with `tolerance` defaulting to 1e-4
    for float32 (round-off only), 2e-2 for "float16", 0.15 for "dynamic"
    and 0.3 for "int8". Quantization changes outputs by design, so the
    looser bounds only catch broken files (NaNs, missing weights); judge
    quantized accuracy by the recorded argmax agreement and an evaluation
    on real data.

    Args:
        model: A `keras_slim.SlimmableModel` (single input, fixed shape).
        out_dir: Output directory (created if needed).
        widths: Widths and/or dicts layer name -> channels. Defaults to the
            model's width list (S-Net) or its min and max width.
        quantize: None (float32), "float16" (float16 weights), "dynamic"
            (int8 weights, float activations) or "int8" (int8 weights and
            activations, float32 inputs/outputs; needs
            `representative_data`).
        representative_data: Typical inputs (numpy array, or a
            `tf.data.Dataset` of inputs or (inputs, labels) batches): int8
            calibration (first 200) and verification inputs (first 64).
        tolerance: Override the relative verification tolerance.
        fold_bn: Fold BN into the preceding layers before converting (the
            TFLite converter already folds most of them).
        input_range: `(low, high)` the training inputs were scaled to (the
            pipelines of `keras_slim.data`: `keras_slim.data.INPUT_RANGE`),
            recorded in the manifest's "input" so that `run_tflite` refuses
            inputs preprocessed otherwise (e.g. 0-255 images). Default: the
            range of `representative_data`, or unknown.

    Returns:
        The manifest (a dict, also written to `out_dir/manifest.json`).

    Raises:
        ValueError: for a width outside the range, an unknown `quantize`,
            "int8" without `representative_data`, or malformed data.
        OSError: if `out_dir` cannot be created or written.
        keras_slim.export.ExportVerificationError: if a file does not
            reproduce Keras within tolerance.

    Example:

    >>> manifest = keras_slim.export.to_tflite(
    ...     model, "export/", widths=[0.25, 0.5, 1.0], quantize="int8",
    ...     representative_data=x_train[:200])
    >>> [(e["file"], e["macs"]) for e in manifest["exports"]]

    A `keras_slim.EarlyExitModel` is exported stage by stage (plus one file
    per exit, unless `per_exit=False`), with the exit thresholds
    (`thresholds=`: an `ExitPolicy`, a list of them or `K - 1` numbers)
    recorded for `run_cascade`; the files are described in
    `keras_slim.export.staged`.
    """
    manifest = staged.export_if_early_exit(
        model, out_dir, fold_bn, early_exit_kwargs, widths=widths,
        format="tflite", quantize=quantize,
        representative_data=representative_data, tolerance=tolerance,
        input_range=input_range)
    if manifest is not None:
        return manifest
    mf.check_model(model)
    mf.check_quantize(quantize, representative_data)
    plans = mf.check_widths(model, widths)
    samples = mf.as_samples(
        model, representative_data,
        limit=MAX_CALIBRATION_SAMPLES if representative_data is not None
        else None,
    )

    def write(stripped, path):
        with open(path, "wb") as f:
            f.write(convert_keras_model(stripped, quantize, samples))

    return mf.export_widths(
        model, out_dir, plans, samples[: mf.MAX_SAMPLES], write,
        run=run_tflite, what="TFLite",
        extension=("" if quantize is None else f"_{quantize}") + ".tflite",
        input_info=mf.input_entry(samples, representative_data, input_range),
        quantize=quantize, tolerance=tolerance, fold_bn=fold_bn,
        format="tflite", quantization=quantize or "float32",
    )


def signature_key(width):
    """The signature name of a width in a multi-width file: "w0_25".

    Args:
        width: A width of the file (as passed to `to_tflite_multi`).

    Returns:
        The name of the signature that runs the network at `width`.

    Example:

    >>> keras_slim.export.signature_key(0.5)
    'w0_5'
    >>> keras_slim.export.to_tflite_multi(model, "net.tflite",
    ...                                   widths=[0.25, 0.5, 1.0])
    >>> key = keras_slim.export.signature_key(0.5)
    >>> logits = keras_slim.export.run_tflite("net.tflite", x,
    ...                                       signature_key=key)
    """
    return width_suffix(width).replace(".", "_")


def _endpoint(net):
    # A closure, not a default argument: tf.function would trace the latter
    # as an extra input.
    def serve(x):
        return {"output_0": net(x, training=False)}

    return serve


def to_tflite_multi(
    model,
    path,
    widths=None,
    quantize=None,
    representative_data=None,
    tolerance=None,
):
    """Exports ONE `.tflite` file with one signature per width.

    Each width is stripped to its own Keras model; a SavedModel with one
    endpoint per width (signature keys like "w0_25", see `signature_key`)
    is converted with `TFLiteConverter.from_saved_model`. Every signature is
    then verified with LiteRT's `get_signature_runner` against Keras, with
    the tolerances of `to_tflite`. The file is written to a temporary name
    and moved to `path` only after it passed.

    Weights are NOT shared between signatures: each width stores its own
    sliced (and BN-specific) constants, so the file is about as large as the
    separate per-width files together; what it saves is deployment
    bookkeeping (one file, one interpreter, choose the width per call).

    Args:
        model: A `keras_slim.SlimmableModel`.
        path: Output `.tflite` path (its directory is created if needed).
        widths, quantize, representative_data, tolerance: As `to_tflite`.

    Returns:
        A dict: "path", "size_bytes", "signatures" (key -> width/config,
        max_abs_diff, argmax_agreement, macs, params).

    Raises:
        As `to_tflite`.

    Example:

    >>> info = keras_slim.export.to_tflite_multi(model, "net.tflite",
    ...                                         widths=[0.25, 0.5, 1.0])
    >>> from ai_edge_litert.interpreter import Interpreter
    >>> run = Interpreter("net.tflite").get_signature_runner("w0_5")
    >>> logits = run(input=x[:1])["output_0"]
    """
    import keras
    import tensorflow as tf

    mf.check_model(model)
    if staged.is_early_exit(model):
        raise ValueError(
            "to_tflite_multi() writes single-output widths; export an "
            "early-exit model stage by stage with to_tflite()."
        )
    mf.check_quantize(quantize, representative_data)
    plans = mf.check_widths(model, widths)
    samples = mf.as_samples(model, representative_data,
                            limit=MAX_CALIBRATION_SAMPLES)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"'{path}' is a directory; pass a file path.")
    os.makedirs(directory, exist_ok=True)
    spec = mf.input_signature(model)
    with files.atomic_path(path) as temp:
        archive = keras.export.ExportArchive()
        stripped = {}
        for width, tag in plans:
            key = signature_key(width)
            net = strip(model, width, name=f"{model.network.name}_{key}")
            stripped[key] = (width, net)
            archive.track(net)
            archive.add_endpoint(key, _endpoint(net), input_signature=[spec])
        with tempfile.TemporaryDirectory(dir=directory) as saved:
            archive.write_out(saved, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(
                saved, signature_keys=list(stripped)
            )
            apply_litert_options(converter, litert_options(quantize, samples))
            content = converter.convert()
        with open(temp, "wb") as f:
            f.write(content)
        check = samples[: mf.MAX_SAMPLES]
        signatures = {}
        for key, (width, net) in stripped.items():
            result = mf.compare(
                mf.keras_reference(net, check),
                run_tflite(temp, check, signature_key=key),
                quantize,
                tolerance,
            )
            mf.verify(result, f"Signature '{key}' of the multi-width TFLite")
            info = mf.describe(model, width, net)
            info.update(result)
            signatures[key] = info
    return {
        "path": path,
        "format": "tflite",
        "quantization": quantize or "float32",
        "size_bytes": os.path.getsize(path),
        "signatures": signatures,
    }
