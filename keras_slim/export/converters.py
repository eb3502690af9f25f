"""Format-level converters shared by the per-width and staged exporters.

Kept apart from `tflite.py` / `onnx.py` (which dispatch early-exit models
to `staged.py`) so that `staged.py` can use them without an import cycle.
"""

import contextlib
import io

import numpy as np

from keras_slim.export import manifest as mf

# Representative samples fed to the int8 calibration.
MAX_CALIBRATION_SAMPLES = 200


def configure_converter(converter, quantize, samples):
    import tensorflow as tf

    if quantize is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":

        def representative_dataset():
            for sample in samples[:MAX_CALIBRATION_SAMPLES]:
                yield [sample[None].astype("float32")]

        converter.representative_dataset = representative_dataset
        # Every op in int8 (fail instead of silently keeping float ops); the
        # model's inputs and outputs stay float32 (quantized at the edges),
        # so the file is a drop-in replacement for the float one.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]


def convert_keras_model(keras_model, quantize=None, representative_data=None):
    """Converts a plain Keras model to a TFLite flatbuffer.

    Args:
        keras_model: A Keras model of stock layers (e.g. from `strip`).
        quantize: None, "float16", "dynamic" or "int8".
        representative_data: Inputs (numpy array) for "int8" calibration.

    Returns:
        The flatbuffer as `bytes`.
    """
    import tensorflow as tf

    mf.check_quantize(quantize, representative_data)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    samples = None
    if representative_data is not None:
        samples = np.asarray(representative_data, "float32")
    configure_converter(converter, quantize, samples)
    # from_keras_model goes through keras' model.export, which prints a
    # description of the artifact it saves to a temporary directory.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


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
