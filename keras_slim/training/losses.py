"""Does a compiled loss read what the model outputs: logits or probabilities?

Keras' cross-entropies take probabilities unless `from_logits=True`. Given
logits they still train, silently and badly (a US-Net LeNet on digits: 0.12 to
0.35 accuracy instead of 0.94 to 0.98), so the models of this package check
the loss they are compiled with against what their network ends in and warn
once, naming the fix.
"""

import inspect
import warnings

import keras

from keras_slim import graph

LOGITS = "logits"
PROBABILITIES = "probabilities"

# Activations whose outputs are probabilities a cross-entropy can read.
_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")
# Layers that pass their input's values through (or average them): the
# model's outputs are logits exactly when their input is.
_PASS_THROUGH = (
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
    keras.layers.Identity, keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling3D,
    keras.layers.AveragePooling2D,
)


def _activation_kind(activation):
    name = getattr(activation, "__name__", str(activation))
    if name in (None, "linear"):
        return LOGITS
    if name in _PROBABILITY_ACTIVATIONS:
        return PROBABILITIES
    return None  # relu, tanh, ...: neither, say nothing


def output_kind(model):
    """Whether a functional model outputs logits or probabilities.

    Follows each output back through layers that pass values through
    (`Flatten`, `Dropout`, global average pooling, ...) to the layer that
    made it: a `Dense` or convolution without activation gives logits; a
    softmax or sigmoid (as an activation, a `Softmax` layer or
    `Activation` layer) gives probabilities.

    Args:
        model: A Sequential or functional Keras model.

    Returns:
        `"logits"`, `"probabilities"`, or None when the outputs are
        something else, disagree, or cannot be told apart.

    Example:

    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> output_kind(base)
    'logits'
    """
    calls, traced = graph.trace(model)
    producer = {id(t): call for call in calls for t in call.outputs}
    kinds = set()
    for tensor in traced.outputs:
        kind = None
        call = producer.get(id(tensor))
        while call is not None:
            layer = call.layer
            if isinstance(layer, keras.layers.Softmax):
                kind = PROBABILITIES
            elif isinstance(layer, _PASS_THROUGH) and len(call.inputs) == 1:
                call = producer.get(id(call.inputs[0]))
                continue
            elif hasattr(layer, "activation") and (
                isinstance(layer, keras.layers.Activation)
                or hasattr(layer, "kernel")
            ):
                kind = _activation_kind(layer.activation)
            break
        kinds.add(kind)
    return kinds.pop() if len(kinds) == 1 else None


def loss_input_kind(loss):
    """What a cross-entropy loss reads: `"logits"`, `"probabilities"`, None.

    None for losses without a `from_logits` argument (mean squared error,
    your own functions), which are not checked.

    Example:

    >>> loss_input_kind("sparse_categorical_crossentropy")
    'probabilities'
    >>> loss_input_kind(keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    'logits'
    """
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    if isinstance(loss, keras.losses.Loss):
        from_logits = loss.get_config().get("from_logits")
    elif callable(loss):
        try:
            parameter = inspect.signature(loss).parameters.get("from_logits")
        except (TypeError, ValueError):
            return None
        from_logits = None if parameter is None else parameter.default
    else:
        return None
    if not isinstance(from_logits, bool):
        return None
    return LOGITS if from_logits else PROBABILITIES


def warn_if_loss_mismatches(loss, outputs, model_name):
    """Warns when `loss` expects logits and `outputs` are probabilities, or
    the reverse (see `output_kind`, `loss_input_kind`).

    Returns:
        True if it warned.
    """
    expects = loss_input_kind(loss)
    if expects is None or outputs is None or expects == outputs:
        return False
    if expects == PROBABILITIES:
        fix = (
            "pass keras.losses.SparseCategoricalCrossentropy("
            "from_logits=True) (or CategoricalCrossentropy(from_logits="
            "True)), or end the network in a softmax"
        )
    else:
        fix = "pass the loss with from_logits=False, or remove the softmax"
    warnings.warn(
        f"Model '{model_name}' outputs {outputs} but its loss "
        f"({_describe(loss)}) expects {expects}: training would silently "
        f"optimise the wrong objective. To fix it, {fix}.",
        UserWarning,
        stacklevel=3,
    )
    return True


def _describe(loss):
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, keras.losses.Loss):
        from_logits = loss.get_config().get("from_logits")
        return f"{type(loss).__name__}(from_logits={from_logits})"
    return getattr(loss, "__name__", type(loss).__name__)
