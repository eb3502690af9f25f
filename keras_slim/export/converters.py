"""Format-level converters shared by the per-width and staged exporters.

Kept apart from `tflite.py` / `onnx.py` (which dispatch early-exit models
to `staged.py`) so that `staged.py` can use them without an import cycle.
"""

import os
import tempfile

import numpy as np

from keras_slim.export import manifest as mf

# Representative samples fed to the int8 calibration.
MAX_CALIBRATION_SAMPLES = 200


def litert_options(quantize, samples=None):
    """Converter settings for Keras' LiteRT exporter, per quantization.

    Builtin ops only: Keras' own default also allows Select TF ("Flex")
    ops, which a phone's LiteRT runtime lacks unless the app links them in;
    a network that needs them should fail to convert here, not on a phone.

    Args:
        quantize: None, "float16", "dynamic" or "int8".
        samples: Representative inputs (float32 array), for "int8".

    Returns:
        A dict of `tf.lite.TFLiteConverter` attributes (`target_spec` as a
        dict), as `keras.Model.export(format="litert", **options)` takes.
    """
    import tensorflow as tf

    target_spec = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    options = {"target_spec": target_spec}
    if quantize is None:
        return options
    options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        target_spec["supported_types"] = [tf.float16]
    elif quantize == "int8":

        def representative_dataset():
            for sample in samples[:MAX_CALIBRATION_SAMPLES]:
                yield [sample[None].astype("float32")]

        options["representative_dataset"] = representative_dataset
        # Every op in int8 (fail instead of silently keeping float ops); the
        # model's inputs and outputs stay float32 (quantized at the edges),
        # so the file is a drop-in replacement for the float one.
        target_spec["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return options


def apply_litert_options(converter, options):
    """Sets `litert_options` on a converter built by hand (the one archive
    with a signature per width, which Keras' exporter cannot write)."""
    for name, value in options.items():
        if name == "target_spec":
            for key, item in value.items():
                setattr(converter.target_spec, key, item)
        else:
            setattr(converter, name, value)


def convert_keras_model(keras_model, quantize=None, representative_data=None):
    """Converts a plain Keras model to a TFLite flatbuffer.

    Through Keras' own exporter (`model.export(format="litert")`), with
    builtin ops only and the quantization's settings (`litert_options`).

    Args:
        keras_model: A Keras model of stock layers (e.g. from `strip`).
        quantize: None, "float16", "dynamic" or "int8".
        representative_data: Inputs (numpy array) for "int8" calibration.

    Returns:
        The flatbuffer as `bytes`.

    Example:

    >>> content = keras_slim.export.convert_keras_model(
    ...     keras_slim.strip(model, 0.5))
    """
    mf.check_quantize(quantize, representative_data)
    samples = None
    if representative_data is not None:
        samples = np.asarray(representative_data, "float32")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.tflite")
        keras_model.export(path, format="litert", verbose=False,
                           **litert_options(quantize, samples))
        with open(path, "rb") as f:
            return f.read()


def export_onnx(keras_model, path, opset, input_signature=None):
    """Writes a plain Keras model as ONNX, with Keras' own exporter.

    Args:
        keras_model: A Keras model of stock layers.
        path: The `.onnx` file to write.
        opset: ONNX opset (see `check_opset`).
        input_signature: Optional input specs (their names become the
            ONNX input names); default: the model's inputs.
    """
    import tensorflow as tf

    if input_signature is None:
        specs = [
            tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype or "float32",
                          name=t.name)
            for t in keras_model.inputs
        ]
        # One positional argument: the input, or the list of inputs.
        input_signature = specs if len(specs) == 1 else [specs]
    _quiet_tf2onnx()
    keras_model.export(os.fspath(path), format="onnx", verbose=False,
                       input_signature=input_signature,
                       opset_version=int(opset))


MIN_OPSET, MAX_OPSET = 13, 18


def check_opset(opset):
    is_int = isinstance(opset, (int, np.integer)) and not isinstance(
        opset, bool)
    if not is_int or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET} (what "
            f"tf2onnx supports here); got {opset!r}."
        )


def _quiet_tf2onnx():
    """Silences tf2onnx's INFO chatter (it logs every rewrite pass)."""
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)


def function_to_onnx(function, input_signature, opset, output_path):
    import tf2onnx

    _quiet_tf2onnx()
    model_proto, _ = tf2onnx.convert.from_function(
        function,
        input_signature=input_signature,
        opset=int(opset),
        output_path=output_path,
    )
    return model_proto
