"""Every use of Keras internals in keras_slim, in one place, with its reason.

keras_slim is written against Keras' public API; what follows has no public
equivalent (checked against Keras 3.15, the version the pins allow).
`tests/test_compat.py` exercises each function on the installed Keras, so
an upgrade that moves one of these fails there, by name, rather than deep
inside a conversion or a training step.
"""

import contextlib


@contextlib.contextmanager
def creating_variables_after_build(layer):
    """Lets a built layer add variables (BN calibration slots, per width).

    Keras locks a layer's variable tracker once it is built; calibrations
    are stored as variables (saved with the model) created on demand, which
    is how Keras' own `Dense.enable_lora` adds its variables: by unlocking
    `layer._tracker`.

    Example:

    >>> with creating_variables_after_build(bn):
    ...     bn.add_weight(name="calibrated_mean_k1", shape=(16,))
    """
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def keras_mask(tensor):
    """The mask Keras attached to a tensor, or None.

    Keras keeps it in `tensor._keras_mask`; its accessor
    (`keras.src.backend.common.masking.get_keras_mask`) is not exported.
    """
    return getattr(tensor, "_keras_mask", None)


def operation_modules():
    """`(nn, numpy)`: the modules of Keras' operation classes.

    A functional graph built with `keras.ops.relu(x)` records an instance
    of `keras.src.ops.nn.Relu`; Keras exports the operations only as
    functions, so the classes (which `keras_slim.registry` registers as
    element-wise) are reachable only through `keras.src`.
    """
    from keras.src.ops import nn
    from keras.src.ops import numpy

    return nn, numpy


def application_layers():
    """Layer classes of `keras.applications` models (not exported by Keras).

    Returns:
        dict name -> class for `CustomScaleLayer` (Inception-ResNet),
        `LayerScale` and `StochasticDepth` (ConvNeXt).
    """
    from keras.src.applications import convnext
    from keras.src.applications import inception_resnet_v2

    return {
        "CustomScaleLayer": inception_resnet_v2.CustomScaleLayer,
        "LayerScale": convnext.LayerScale,
        "StochasticDepth": convnext.StochasticDepth,
    }
