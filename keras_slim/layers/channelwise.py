"""A wrapper that runs a per-channel layer at any width."""

import inspect

import keras
import numpy as np
from keras import ops

from keras_slim.layers import scope as aw
from keras_slim.layers.convolution import _check_input_layout


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimChannelwise(keras.layers.Wrapper):
    """Runs a layer with per-channel weights on the active channels.

    The wrapped layer treats every channel independently (a learned scale
    per channel, as ConvNeXt's layer scale; a per-channel PReLU) and was
    built for the full width. The active channels are placed at their
    full-width positions (zeros elsewhere), the layer runs at its static
    full width, and the active outputs are kept, so its own `call` and
    weights are used unchanged. `keras_slim.strip` replaces the wrapper by
    the layer itself with the active weights sliced.

    Args:
        layer: A built Keras layer whose computation is independent per
            channel (last axis).
        input_layout: See `SlimConv2D` (inputs assembled by `Concatenate`).
        **kwargs: Passed to `keras.layers.Wrapper`.

    Example:

    >>> scale = SlimChannelwise(keras.layers.PReLU(shared_axes=[1, 2]))
    >>> y = scale(np.zeros((1, 8, 8, 32)))  # builds the full width
    >>> y = scale(np.zeros((1, 8, 8, 12)))  # the first 12 channels
    """

    def __init__(self, layer, input_layout=None, **kwargs):
        super().__init__(layer, **kwargs)
        self.input_layout = _check_input_layout(input_layout)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.channels = int(input_shape[-1])
        self.built = True

    def call(self, inputs, training=None):
        kwargs = {}
        if "training" in inspect.signature(self.layer.call).parameters:
            kwargs["training"] = training
        count = inputs.shape[-1]
        if count == self.channels and self.input_layout is None:
            return self.layer(inputs, **kwargs)
        indices = None
        if self.input_layout is not None:
            indices = aw.input_channel_indices(self.input_layout, self.channels)
            if isinstance(indices, np.ndarray):
                indices = ops.convert_to_tensor(indices)
        full = aw.to_full_width(inputs, indices, self.channels)
        outputs = self.layer(full, **kwargs)
        if count is None:
            count = ops.shape(inputs)[-1]
        return aw.from_full_width(outputs, indices, count)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "input_layout": self.input_layout}
