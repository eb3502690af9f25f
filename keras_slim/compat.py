"""Every use of Keras internals in keras_slim, in one place, with its reason.

keras_slim is written against Keras' public API; what follows has no public
equivalent (checked against Keras 3.15, the version the pins allow).
`tests/test_compat.py` exercises each function on the installed Keras, so
an upgrade that moves one of these fails there, by name, rather than deep
inside a conversion or a training step.
"""

import contextlib

import keras
import tensorflow as tf


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


def optimizer_slots(optimizer, variable):
    """The optimizer's per-variable state for `variable` (RePr zeroes the
    momentum and moments of re-initialised filters).

    Keras optimizers keep one list per kind of slot (SGD `momentums`, Adam
    `_momentums` and `_velocities`, ...), aligned with the trainable
    variables they were built for, and find a variable's place with
    `_get_variable_index`; there is no public accessor for a variable's
    slots. `LossScaleOptimizer` is looked through.

    Returns:
        A list of `(attribute_name, slot_variable)`; empty when the
        optimizer is not built or does not train `variable`.

    Example:

    >>> for name, slot in optimizer_slots(model.optimizer, conv.kernel):
    ...     slot.assign(tf.zeros_like(slot))
    """
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    trained = getattr(optimizer, "_trainable_variables", None)
    if not trained:
        return []
    try:
        index = optimizer._get_variable_index(variable)
    except (KeyError, AttributeError):
        return []
    slots = []
    for name, value in vars(optimizer).items():
        if name in ("_trainable_variables", "_variables") or not isinstance(
            value, (list, tuple)
        ) or len(value) != len(trained):
            continue
        slot = value[index]
        if (
            isinstance(slot, (keras.Variable, tf.Variable))
            and slot is not variable
            and tuple(slot.shape) == tuple(variable.shape)
        ):
            slots.append((name, slot))
    return slots
