"""How `slim()` treats the channels of each kind of layer.

Layers that own a kernel or normalise channels (`Conv2D`, `Dense`,
`DepthwiseConv2D`, `SeparableConv2D`, `BatchNormalization`,
`LayerNormalization`, grouped convolutions) are replaced by their
`keras_slim.layers` counterparts. Every other layer needs a rule saying what
it does with the channels of its inputs; this module holds those rules, for
Keras' own layers and for the layers users register:

- `ELEMENTWISE`: output channel `c` depends only on channel `c` of each
  input, with no per-channel state (activations, pooling, padding, dropout,
  `Add`, `Multiply`, element-wise `keras.ops`): the active channels pass
  through, and the channel groups of several inputs are tied to one count
  (residual additions, squeeze-and-excitation). An input with a single
  channel broadcasts; a scalar constant is fine.
- `PER_CHANNEL`: element-wise too, with per-channel weights on the last axis
  (a learned scale per channel): the layer runs inside
  `keras_slim.layers.SlimChannelwise` and `strip()` slices its weights.

Anything else (a layer that mixes channels or reshapes them) cannot be
slimmed without knowing more; `slim()` refuses it with an error naming it.

Example, a user's own layer (the shape of TF-MOT's prunable-layer registry):

>>> class ChannelScale(keras.layers.Layer):
...     def build(self, input_shape):
...         self.scale = self.add_weight(shape=(input_shape[-1],))
...     def call(self, x):
...         return x * self.scale
>>> keras_slim.register_layer(ChannelScale, "per_channel")  # PER_CHANNEL
>>> model = keras_slim.slim(my_model_using_channel_scale)
"""

import dataclasses
from typing import Callable, Optional

import keras

from keras_slim import compat

ELEMENTWISE = "elementwise"
PER_CHANNEL = "per_channel"
KINDS = (ELEMENTWISE, PER_CHANNEL)


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """What a layer does with channels (see the module docstring).

    Attributes:
        kind: `ELEMENTWISE` or `PER_CHANNEL`.
        config_for_channels: For `PER_CHANNEL` layers whose config names
            the channel count: `fn(config, channels) -> config` of the
            stripped copy with `channels` channels. None when the layer
            builds its weights from the input shape.
    """

    kind: str
    config_for_channels: Optional[Callable] = None


_RULES = {}


def register_layer(layer_class, kind, config_for_channels=None):
    """Declares how `slim()` treats the channels of a layer class.

    Subclasses inherit the rule of the nearest registered base class;
    registering a class again replaces its rule.

    Args:
        layer_class: A `keras.layers.Layer` subclass (or a Keras operation
            class, for graphs built with `keras.ops`).
        kind: `"elementwise"` or `"per_channel"` (see
            `keras_slim.registry`).
        config_for_channels: For `"per_channel"` layers whose constructor
            takes the channel count: `fn(config, channels) -> config`.

    Returns:
        The `LayerRule` stored.

    Raises:
        ValueError: for an unknown kind or a class that is not a layer.

    Example:

    >>> keras_slim.register_layer(MyActivation, "elementwise")
    >>> keras_slim.register_layer(
    ...     MyScale, "per_channel",
    ...     config_for_channels=lambda config, n: {**config, "units": n})
    """
    if kind not in KINDS:
        raise ValueError(
            f"Unknown kind {kind!r}; expected one of {', '.join(KINDS)}."
        )
    if not (isinstance(layer_class, type)
            and issubclass(layer_class, keras.Operation)):
        raise ValueError(
            "register_layer() takes a keras.layers.Layer (or keras "
            f"Operation) subclass; got {layer_class!r}."
        )
    if config_for_channels is not None and kind != PER_CHANNEL:
        raise ValueError(
            "config_for_channels applies to 'per_channel' layers only; got "
            f"kind={kind!r}."
        )
    rule = LayerRule(kind, config_for_channels)
    _RULES[layer_class] = rule
    return rule


def rule_for(layer):
    """The `LayerRule` of `layer` (by its class and bases), or None."""
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _register_builtins():
    layers = keras.layers
    for cls in (
        layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU,
        layers.Softmax, layers.Dropout, layers.SpatialDropout1D,
        layers.SpatialDropout2D, layers.SpatialDropout3D,
        layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout,
        layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
        layers.AveragePooling1D, layers.AveragePooling2D,
        layers.AveragePooling3D, layers.GlobalAveragePooling1D,
        layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
        layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D,
        layers.GlobalMaxPooling3D, layers.ZeroPadding1D,
        layers.ZeroPadding2D, layers.ZeroPadding3D, layers.Cropping1D,
        layers.Cropping2D, layers.Cropping3D, layers.UpSampling1D,
        layers.UpSampling2D, layers.UpSampling3D,
        layers.Identity, layers.ActivityRegularization,
        layers.Add, layers.Subtract, layers.Multiply, layers.Average,
        layers.Maximum, layers.Minimum,
    ):
        register_layer(cls, ELEMENTWISE)
    # Element-wise keras.ops (MobileNetV3's hard-swish `relu6(x + 3) / 6`,
    # ConvNeXt's residual `x + y`), recorded as operation classes Keras does
    # not export (see `keras_slim.compat`).
    nn_ops, numpy_ops = compat.operation_modules()
    for name in (
        "Abs", "Absolute", "Add", "Subtract", "Multiply", "Divide",
        "TrueDivide", "Maximum", "Minimum", "Negative", "Square", "Sqrt",
        "Exp", "Log", "Clip", "Power", "Tanh", "Sign", "Reciprocal",
    ):
        register_layer(getattr(numpy_ops, name), ELEMENTWISE)
    for name in (
        "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu",
        "Gelu", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign",
        # Not Glu: it halves the channels (a gate from the other half).
        "Celu", "HardTanh", "LogSigmoid",
    ):
        if hasattr(nn_ops, name):
            register_layer(getattr(nn_ops, name), ELEMENTWISE)
    # Layers of keras.applications models.
    applications = compat.application_layers()
    # `x + scale * branch`: the residual branch is tied to the trunk.
    register_layer(applications["CustomScaleLayer"], ELEMENTWISE)
    register_layer(
        applications["LayerScale"], PER_CHANNEL,
        config_for_channels=lambda config, n: {**config, "projection_dim": n},
    )
    register_layer(applications["StochasticDepth"], ELEMENTWISE)
    register_layer(layers.PReLU, PER_CHANNEL)


_register_builtins()
