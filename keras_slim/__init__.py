"""keras_slim: networks that run at any width after one training.

Slimmable Networks (S-Net), Universally Slimmable Networks (US-Net) and
Any-Width Networks for Keras 3 (TensorFlow backend): slimmable layers, a
converter for existing models, sandwich-rule training with `model.fit`,
exact BN calibration, and per-width TFLite / ONNX export.

Example:

>>> import keras_slim
>>> model = keras_slim.slim(base_model, width_range=(0.25, 1.0))
>>> model.compile(
...     "adam",
...     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
...     metrics=["accuracy"])
>>> model.fit(train_ds, epochs=30)
>>> keras_slim.calibrate_bn(model, train_ds, widths=[0.25, 0.5, 1.0])
>>> model.set_width(0.25)
>>> keras_slim.export.to_tflite(model, "out", widths=[0.25, 0.5, 1.0])
"""

from keras_slim import data
from keras_slim import early_exit
from keras_slim import export
from keras_slim import layers
from keras_slim import models
from keras_slim import repr  # noqa: A004 (the RePr subpackage)
from keras_slim import search
from keras_slim import training
from keras_slim.calibration import calibrate_bn
from keras_slim.convert import slim
from keras_slim.early_exit import EarlyExitModel
from keras_slim.early_exit import add_exits
from keras_slim.early_exit import calibrate_exit_thresholds
from keras_slim.export.latency import profile_latency
from keras_slim.model import SlimmableModel
from keras_slim.profiling import profile
from keras_slim.registry import register_layer
from keras_slim.stripping import fold_batch_norm
from keras_slim.stripping import strip
from keras_slim.width import make_divisible

__version__ = "0.1.0"

# What users call. The other modules (`graph`, `registry`, `width`,
# `compat`, `files`, ...) are the library's own plumbing: importable, but
# not part of the public API.
__all__ = [
    # Subpackages.
    "data",
    "early_exit",
    "export",
    "layers",
    "models",
    "repr",
    "search",
    "training",
    # Slimmable networks.
    "SlimmableModel",
    "calibrate_bn",
    "fold_batch_norm",
    "make_divisible",
    "profile",
    "profile_latency",
    "register_layer",
    "slim",
    "strip",
    # Early exits.
    "EarlyExitModel",
    "add_exits",
    "calibrate_exit_thresholds",
]
