"""Deployment: verified TFLite and ONNX files per width, with a manifest.

Example:

>>> import keras_slim
>>> manifest = keras_slim.export.to_tflite(
...     model, "export/", widths=[0.25, 0.5, 1.0])
>>> keras_slim.export.to_onnx(model, "export/", widths=[0.25, 0.5, 1.0])
>>> keras_slim.export.to_onnx_dynamic(model, "export/net_any_width.onnx")
>>> keras_slim.export.to_tflite_multi(model, "export/net_multi.tflite",
...                                   widths=[0.25, 0.5, 1.0])
>>> # An early-exit model: one file per stage and per exit, then a cascade.
>>> keras_slim.export.to_tflite(early_exit_model, "stages/",
...                             thresholds=policy)
>>> keras_slim.export.run_cascade("stages/", images).labels
"""

from keras_slim.export.latency import profile_latency
from keras_slim.export.manifest import ExportVerificationError
from keras_slim.export.manifest import read_manifest
from keras_slim.export.onnx import run_onnx
from keras_slim.export.onnx import to_onnx
from keras_slim.export.onnx import to_onnx_dynamic
from keras_slim.export.converters import convert_keras_model
from keras_slim.export.tflite import run_tflite
from keras_slim.export.tflite import signature_key
from keras_slim.export.tflite import to_tflite
from keras_slim.export.tflite import to_tflite_multi
from keras_slim.export.staged import run_cascade

__all__ = [
    "ExportVerificationError",
    "convert_keras_model",
    "profile_latency",
    "read_manifest",
    "run_cascade",
    "run_onnx",
    "run_tflite",
    "signature_key",
    "to_onnx",
    "to_onnx_dynamic",
    "to_tflite",
    "to_tflite_multi",
]
