"""Keras layers with a dynamic width.

`keras_slim.slim` puts these in place of Keras' own layers; they can also
build a slimmable network by hand. Each layer runs at the width of the
innermost `active_width` scope (`SlimmableModel` opens one around every
call), at full width outside any scope. `ExitHead`, `GradientRescale`,
`EnsembleLogits` and `ExitConfidence` are the early-exit layers
`keras_slim.add_exits` inserts.

Example:

>>> inputs = keras.Input((32, 32, 3))
>>> x = keras_slim.layers.SlimConv2D(32, 3, padding="same",
...                                  slim_in=False)(inputs)
>>> x = keras_slim.layers.SlimBatchNormalization()(x)
>>> x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
>>> outputs = keras_slim.layers.SlimDense(10, slim_out=False)(x)
>>> model = keras_slim.SlimmableModel(keras.Model(inputs, outputs),
...                                   width_range=(0.25, 1.0))
"""

from keras_slim.layers.scope import ActiveWidth
from keras_slim.layers.scope import active_width
from keras_slim.layers.channelwise import SlimChannelwise
from keras_slim.layers.convolution import SlimConv1D
from keras_slim.layers.convolution import SlimConv2D
from keras_slim.layers.convolution import SlimConv3D
from keras_slim.layers.convolution import SlimDense
from keras_slim.layers.convolution import SlimDepthwiseConv2D
from keras_slim.layers.convolution import SlimSeparableConv2D
from keras_slim.layers.normalization import SlimBatchNormalization
from keras_slim.layers.normalization import SlimLayerNormalization
from keras_slim.layers.normalization import SwitchableBatchNormalization
from keras_slim.layers.exit_head import EnsembleLogits
from keras_slim.layers.exit_head import ExitConfidence
from keras_slim.layers.exit_head import ExitHead
from keras_slim.layers.exit_head import GradientRescale

__all__ = [
    "ActiveWidth",
    "EnsembleLogits",
    "ExitConfidence",
    "ExitHead",
    "GradientRescale",
    "SlimBatchNormalization",
    "SlimChannelwise",
    "SlimConv1D",
    "SlimConv2D",
    "SlimConv3D",
    "SlimDense",
    "SlimDepthwiseConv2D",
    "SlimLayerNormalization",
    "SlimSeparableConv2D",
    "SwitchableBatchNormalization",
    "active_width",
]
